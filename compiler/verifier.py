"""Structural and type checks of a graph; errors name the node, its op and what is wrong."""

from __future__ import annotations

from .ir import Graph, Node, Value
from .ops import OpError, get_op, infer_node


class VerificationError(ValueError):
    """The graph breaks an IR rule; ``node`` is the offending node when there is one."""

    def __init__(self, message: str, node: Node | None = None):
        where = f" at {node.op} ({node.loc.describe()})" if node is not None else ""
        super().__init__(f"{message}{where}")
        self.node = node


def verify(graph: Graph) -> None:
    """Raise VerificationError unless the graph is well formed and every type is what the op
    table infers from the node's operands and attributes."""
    defined: set[Value] = set(graph.inputs) | set(graph.constants.values())
    names = [v.name for v in graph.inputs]
    if len(set(names)) != len(names):
        raise VerificationError(f"input names repeat: {names}")
    for name, value in graph.constants.items():
        if value.data is None or value.name != name:
            raise VerificationError(f"constant '{name}' is malformed")
        if tuple(value.data.shape) != tuple(value.type.shape) or \
                value.data.dtype != value.type.dtype.numpy:
            raise VerificationError(f"constant @{name} holds {value.data.dtype}{list(value.data.shape)}"
                                    f" but is typed {value.type}")
    for index, node in enumerate(graph.nodes):
        for position, operand in enumerate(node.operands):
            if operand is not None and operand not in defined:
                raise VerificationError(f"operand {position} of node #{index} is used before it is "
                                        f"defined (or belongs to another graph)", node)
        try:
            if len(get_op(node.op).padded(node.operands)) != len(node.operands):
                raise VerificationError("absent optional operands must be stored as None", node)
            attrs, types = infer_node(node.op, node.operands, node.attrs)
        except OpError as err:
            raise VerificationError(str(err), node) from None
        if attrs != node.attrs:
            raise VerificationError(f"attributes {node.attrs} are not normalized "
                                    f"(expected {attrs})", node)
        if len(types) != len(node.results):
            raise VerificationError(f"{len(node.results)} results, the op table infers "
                                    f"{len(types)}", node)
        for result, expected in zip(node.results, types):
            if result.type != expected:
                raise VerificationError(f"result {result.index} typed {result.type}, the op table "
                                        f"infers {expected}", node)
            if result.producer is not node:
                raise VerificationError("a result does not point back to its node", node)
            if result in defined:
                raise VerificationError("a value is defined twice", node)
            defined.add(result)
    if not graph.outputs:
        raise VerificationError("the graph returns nothing")
    for value in graph.outputs:
        if value not in defined:
            raise VerificationError(f"output {value!r} is not defined in the graph")
    if len(graph.output_names) != len(graph.outputs):
        raise VerificationError("every output needs exactly one name")
