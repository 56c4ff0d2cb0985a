"""eliminate-common-subexpressions: one node (and one constant) per distinct computation."""

from __future__ import annotations

import hashlib

from nimbus.compiler.ir import Graph, Value

from .manager import PassContext
from .registry import register_pass
from .rewrite import remove_dead_nodes


def _constant_key(value: Value):
    digest = hashlib.sha256(value.data.tobytes()).hexdigest()
    return (value.type, digest)


@register_pass("eliminate-common-subexpressions")
def eliminate_common_subexpressions(graph: Graph, ctx: PassContext) -> bool:
    """Merge constants with identical type and bytes, then nodes that apply the same op with
    the same attributes to the same operands; later copies are replaced by the first."""
    first_constant: dict = {}
    for value in list(graph.constants.values()):
        key = _constant_key(value)
        if key in first_constant:
            graph.replace_all_uses(value, first_constant[key])
            ctx.count("constants-merged")
        else:
            first_constant[key] = value
    graph.remove_unused_constants()
    first_node: dict = {}
    merged = 0
    for node in graph.nodes:
        key = (node.op, tuple(id(o) for o in node.operands), repr(sorted(node.attrs.items())))
        if key in first_node:
            for old, new in zip(node.results, first_node[key].results):
                graph.replace_all_uses(old, new)
            merged += 1
        else:
            first_node[key] = node
    if merged:
        remove_dead_nodes(graph)
    ctx.count("nodes-merged", merged)
    return bool(merged or ctx.stats["constants-merged"])
