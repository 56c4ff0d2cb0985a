"""Activation memory planning: intermediate values share buffers once their last use has run.

Sizes may be symbolic (a dynamic batch), so a slot's size is the symbolic maximum of the values
it holds; the plan is made once and serves every batch size. A node's results never share a
buffer with its operands (kernels do not work in place), and graph outputs keep their own
buffers to the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import sympy

from .dims import Dim, evaluate, simplify
from .ir import Graph, Value


@dataclass
class MemoryPlan:
    slot_of: dict[Value, int]
    slot_bytes: list[Dim]

    def peak_bytes(self, bindings: Mapping[str, int]) -> int:
        """Bytes of all slots: the activation memory a run needs."""
        return sum(evaluate(size, bindings) for size in self.slot_bytes)

    def unshared_bytes(self, bindings: Mapping[str, int]) -> int:
        """Bytes if every intermediate value had a buffer of its own."""
        return sum(evaluate(value_bytes(v), bindings) for v in self.slot_of)


def value_bytes(value: Value) -> Dim:
    return simplify(value.type.num_elements() * value.type.dtype.itemsize)


def _at_unit_batch(size: Dim) -> int:
    """An ordering key for symbolic sizes: their value with every symbol at 1."""
    if isinstance(size, int):
        return size
    return int(size.subs({s: 1 for s in size.free_symbols}))


def plan_memory(graph: Graph) -> MemoryPlan:
    last_use: dict[Value, int] = {}
    for index, node in enumerate(graph.nodes):
        for operand in node.operands:
            if operand is not None and operand.producer is not None:
                last_use[operand] = index
    for value in graph.outputs:
        last_use[value] = len(graph.nodes)  # outputs live to the end
    slot_of: dict[Value, int] = {}
    slot_bytes: list[Dim] = []
    free: list[int] = []
    for index, node in enumerate(graph.nodes):
        for result in node.results:
            size = value_bytes(result)
            slot = _best_fit(free, slot_bytes, size)
            if slot is None:
                slot = len(slot_bytes)
                slot_bytes.append(size)
            else:
                free.remove(slot)
                slot_bytes[slot] = _max(slot_bytes[slot], size)
            slot_of[result] = slot
        for result in node.results:
            if result not in last_use:  # never read: free at once
                free.append(slot_of[result])
        for operand in {o for o in node.operands if o is not None and o in slot_of}:
            if last_use.get(operand) == index:
                free.append(slot_of[operand])
    return MemoryPlan(slot_of, slot_bytes)


def _best_fit(free: list[int], slot_bytes: list[Dim], size: Dim) -> int | None:
    """The free slot closest in size to ``size`` (preferring slots already big enough)."""
    if not free:
        return None
    wanted = _at_unit_batch(size)
    return min(free, key=lambda s: (_at_unit_batch(slot_bytes[s]) < wanted,
                                    abs(_at_unit_batch(slot_bytes[s]) - wanted)))


def _max(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return max(a, b)
    return simplify(sympy.Max(a, b))


def check_plan(graph: Graph, plan: MemoryPlan) -> None:
    """Raise AssertionError if two values live at the same time share a slot."""
    live: dict[int, Value] = {}
    last_use = {o: i for i, n in enumerate(graph.nodes) for o in n.operands if o is not None}
    for value in graph.outputs:
        last_use[value] = len(graph.nodes)
    for index, node in enumerate(graph.nodes):
        for result in node.results:
            holder = live.get(plan.slot_of[result])
            if holder is not None and last_use.get(holder, -1) >= index:
                raise AssertionError(f"{result!r} overwrites {holder!r}, which is still needed")
            live[plan.slot_of[result]] = result
