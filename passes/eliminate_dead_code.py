"""eliminate-dead-code: drop nodes and constants no output depends on."""

from __future__ import annotations

from nimbus.compiler.ir import Graph

from .manager import PassContext
from .registry import register_pass
from .rewrite import remove_dead_nodes


@register_pass("eliminate-dead-code")
def eliminate_dead_code(graph: Graph, ctx: PassContext) -> bool:
    """Remove nodes whose results no graph output depends on, then unused constants."""
    nodes = remove_dead_nodes(graph)
    constants = graph.remove_unused_constants()
    ctx.count("nodes-removed", nodes)
    ctx.count("constants-removed", constants)
    return bool(nodes or constants)
