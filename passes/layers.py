"""Which constants are layer weights, and which layers an ``exclude`` option names: shared by
every pass that rewrites weights (quantize, prune, clip, share-weights), so that a budget backing
off one of them by name means the same layer everywhere."""

from __future__ import annotations

import fnmatch

from nimbus.compiler.dtypes import DType
from nimbus.compiler.ir import Graph, Node, Value

from .manager import PassContext

# layer op -> axis of its weight (operand 1) that holds the output channels
WEIGHT_LAYERS = {"conv2d": 0, "fused_conv2d": 0, "linear": 0, "fused_linear": 0,
                 "matmul": -1, "fused_matmul": -1}


def excluded_by_name(node: Node, patterns: list[str], weight: Value | None = None) -> bool:
    """The layer's weight name (operand 1 unless `weight` is given) or module path matches an
    ``exclude`` pattern (as in quantize)."""
    names = [(weight or node.operands[1]).name, node.loc.scope]
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns for name in names if name)


def weight_layers(graph: Graph, ctx: PassContext, exclude: str) -> dict[Value, list[Node]]:
    """The float weight constants that weight passes may rewrite, with the layers applying them.

    A weight qualifies when every use is as operand 1 of a layer in WEIGHT_LAYERS (so an embedding
    tied to a linear is left alone) and none of those layers is excluded by name; the others are
    counted under ``kept: <reason>``.
    """
    patterns = [p.strip() for p in exclude.split(",") if p.strip()]
    uses = graph.uses()
    weights: dict[Value, list[Node]] = {}
    for node in graph.nodes:
        weight = node.operands[1] if node.op in WEIGHT_LAYERS else None
        if weight is None or not weight.is_constant or weight.type.dtype != DType.f32:
            continue
        if weight in weights:
            weights[weight].append(node)
        elif any(excluded_by_name(user, patterns) for user in uses[weight] if user is not None):
            ctx.count("kept: excluded by name")
        elif any(user is None or user.op not in WEIGHT_LAYERS or user.operands[1] is not weight
                 or user.operands[0] is weight for user in uses[weight]):
            ctx.count("kept: weight has other uses")
        elif weight.type.rank < 2:
            ctx.count("kept: weight is a vector")
        else:
            weights[weight] = [node]
    return weights
