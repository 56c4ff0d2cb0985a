"""Per-node cost table of a graph: output shape, parameters, FLOPs and bytes, with totals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from .dims import evaluate, format_dim
from .ir import Graph
from .ops import cost


@dataclass(frozen=True)
class NodeCost:
    index: int
    op: str
    shapes: str
    parameters: int
    flops: int
    bytes: int
    source: str


def node_costs(graph: Graph, bindings: Mapping[str, int]) -> list[NodeCost]:
    """One row per node with symbolic dims bound (e.g. ``{"N": 1}``).

    A constant's elements count as parameters at its first use only, so totals add up.
    """
    counted: set[str] = set()
    rows = []
    for index, node in enumerate(graph.nodes):
        parameters = 0
        for operand in node.operands:
            if operand is not None and operand.is_constant and operand.name not in counted:
                counted.add(operand.name)
                parameters += operand.data.size
        operand_types = [o.type if o is not None else None for o in node.operands]
        result_types = [r.type for r in node.results]
        flops, moved = cost(node.op, operand_types, result_types, node.attrs)
        shapes = ", ".join("[" + ",".join(format_dim(d) for d in t.shape) + "]"
                           for t in result_types)
        source = f"{node.loc.file}:{node.loc.line}" if node.loc.file else node.loc.scope
        rows.append(NodeCost(index, node.op, shapes, parameters, evaluate(flops, bindings),
                             evaluate(moved, bindings), source))
    return rows


def symbol_names(graph: Graph) -> list[str]:
    """Names of the symbolic dims the graph's inputs declare (those a caller must bind)."""
    names: list[str] = []
    for value in graph.inputs:
        for dim in value.type.shape:
            if not isinstance(dim, int):
                names.extend(s.name for s in dim.free_symbols if s.name not in names)
    return names
