"""fold-batchnorm: fold inference batch norms into the conv2d or linear layer before them."""

from __future__ import annotations

import numpy as np

from nimbus.compiler.ir import Graph

from .manager import PassContext
from .registry import register_pass
from .rewrite import Const, Match, Pat, Rewriter, Rule, Var, apply_rules


def _scale_and_shift(m: Match, out_channels: int):
    """batch_norm(y) = y * scale + shift, per channel, in float64."""
    eps = m.node("bn").attrs["eps"]
    scale = 1.0 / np.sqrt(m["var"].data.astype(np.float64) + eps)
    if m["gamma"] is not None:
        scale = scale * m["gamma"].data
    shift = -m["mean"].data.astype(np.float64) * scale
    if m["beta"] is not None:
        shift = shift + m["beta"].data
    bias = m["b"].data.astype(np.float64) if m["b"] is not None else np.zeros(out_channels)
    return scale, bias * scale + shift


def _fold(m: Match, rw: Rewriter, layer: str, weight_shape):
    weight = m["w"].data
    scale, bias = _scale_and_shift(m, weight.shape[0])
    dtype = weight.dtype
    scaled = (weight * scale.reshape(weight_shape)).astype(dtype)
    folded_weight = rw.constant(f"{m['w'].name}.bn", scaled)
    folded_bias = rw.constant(f"{m['w'].name}.bn_bias", bias.astype(dtype))
    return rw.op(layer, m["x"], folded_weight, folded_bias, **m.node("layer").attrs)


def _bn_of(layer_pattern: Pat) -> Pat:
    return Pat("batch_norm", layer_pattern, Const("mean"), Const("var"),
               Var("gamma", constant=True, optional=True), Var("beta", constant=True, optional=True),
               name="bn")


def _bias():
    return Var("b", constant=True, optional=True)


RULES = [
    # batch_norm(conv2d(x, w, b)) -> conv2d(x, w * s, (b - mean) * s + beta)
    Rule("batch_norm(conv2d) -> conv2d",
         _bn_of(Pat("conv2d", Var("x"), Const("w"), _bias(), name="layer", single_use=True)),
         lambda m, rw: _fold(m, rw, "conv2d", (-1, 1, 1, 1))),
    # batch_norm(linear(x, w, b)) over [N, C] -> linear(x, w * s, (b - mean) * s + beta)
    Rule("batch_norm(linear) -> linear",
         _bn_of(Pat("linear", Var("x", where=lambda v: v.type.rank == 2), Const("w"), _bias(),
                    name="layer", single_use=True)),
         lambda m, rw: _fold(m, rw, "linear", (-1, 1))),
]


@register_pass("fold-batchnorm")
def fold_batchnorm(graph: Graph, ctx: PassContext) -> bool:
    """Fold each inference batch_norm whose input is a single-use conv2d or linear with constant
    weights into that layer's weight and bias, removing the batch_norm."""
    return apply_rules(graph, RULES, ctx.pass_name, ctx.stats)
