"""The canonical text of a graph: one way to print any graph, which parses back exactly.

Graph inputs print by name (``%x``), node results by number in node order (``%0, %1, ...``),
constants by name (``@conv1.weight``). Attributes print only where they differ from the op's
default, in the order the op table declares them.
"""

from __future__ import annotations

from ..ir import Graph, Location, Node, Value
from ..ops import REQUIRED, get_op
from .literals import format_name, format_pass_name, format_string
from .values import format_attribute, format_constant

DEFAULT_INLINE_LIMIT = 16
INDENT = "  "


def print_ir(graph: Graph, *, locations: bool = True,
             inline_limit: int = DEFAULT_INLINE_LIMIT) -> str:
    """The text form of ``graph``. Constants with more than ``inline_limit`` elements print as
    ``external``; give their arrays to ``parse_ir`` (``save_ir`` stores them beside the text)."""
    labels = _labels(graph)
    lines = [_header(graph)]
    for name, value in graph.constants.items():
        data = format_constant(value.data) if value.data.size <= inline_limit else "external"
        lines.append(f"{INDENT}const @{format_name(name)}: {value.type} = {data}")
    for node in graph.nodes:
        lines.append(INDENT + _node_line(node, labels, locations))
    lines.append(f"{INDENT}return " + ", ".join(_reference(v, labels) for v in graph.outputs))
    lines.append("}")
    return "\n".join(lines) + "\n"


def _labels(graph: Graph) -> dict[Value, str]:
    """The text of every value defined in the graph."""
    labels = {value: "%" + format_name(value.name) for value in graph.inputs}
    labels.update((value, "@" + format_name(name)) for name, value in graph.constants.items())
    # Number results in node order, skipping numbers that an input already uses as its name.
    taken = {value.name for value in graph.inputs}
    number = 0
    for node in graph.nodes:
        for result in node.results:
            while str(number) in taken:
                number += 1
            labels[result] = f"%{number}"
            number += 1
    return labels


def _header(graph: Graph) -> str:
    inputs = ", ".join(f"%{format_name(v.name)}: {v.type}" for v in graph.inputs)
    outputs = ", ".join(f"{format_name(name)}: {value.type}"
                        for name, value in zip(graph.output_names, graph.outputs))
    return f"graph @{format_name(graph.name)}({inputs}) -> ({outputs}) {{"


def _reference(value: Value | None, labels: dict[Value, str]) -> str:
    if value is None:
        return "none"
    if value not in labels:
        raise ValueError(f"{value!r} is not defined in this graph")
    return labels[value]


def _node_line(node: Node, labels: dict[Value, str], locations: bool) -> str:
    operands = list(node.operands)
    while operands and operands[-1] is None:
        operands.pop()  # trailing absent optional operands are left out
    results = ", ".join(labels[r] for r in node.results)
    line = f"{results} = {node.op}({', '.join(_reference(o, labels) for o in operands)})"
    line += _attributes(node)
    line += " : " + ", ".join(str(r.type) for r in node.results)
    if locations:
        line += format_location(node.loc)
    return line


def _attributes(node: Node) -> str:
    """``{key=value, ...}`` for the attributes that differ from their defaults, else nothing."""
    items = []
    for name, attr in get_op(node.op).attrs.items():
        text = format_attribute(node.attrs[name], attr.kind)
        # Compare texts, not values: -0.0 == 0.0 and nan != nan, but their texts tell them apart.
        if attr.default is REQUIRED or text != format_attribute(attr.normalize(attr.default),
                                                                attr.kind):
            items.append(f"{name}={text}")
    return " {" + ", ".join(items) + "}" if items else ""


def format_location(loc: Location) -> str:
    """`` loc("file.py":12 "scope" [pass, ...])`` with the known parts, or nothing."""
    parts = []
    if loc.file is not None:
        parts.append(f"{format_string(loc.file)}:{'?' if loc.line is None else loc.line}")
    if loc.scope:
        parts.append(format_string(loc.scope))
    if loc.passes:
        parts.append("[" + ", ".join(format_pass_name(p) for p in loc.passes) + "]")
    return f" loc({' '.join(parts)})" if parts else ""
