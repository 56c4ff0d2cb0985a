"""fold-batchnorm: fold inference batch norms into the conv2d or linear layer before them; the
others become a multiply and an add."""

from __future__ import annotations

import numpy as np

from nimbus.compiler.ir import Graph

from nimbus.runtime.cpu_ops.nn import batch_norm_scale_shift

from .manager import PassContext
from .registry import register_pass
from .rewrite import Const, Match, Pat, Rewriter, Rule, Var, apply_rules


def _bn_scale_shift(m: Match) -> tuple[np.ndarray, np.ndarray]:
    """batch_norm(y) = y * scale + shift, per channel, in float64."""
    return batch_norm_scale_shift(m["mean"].data, m["var"].data,
                                  None if m["gamma"] is None else m["gamma"].data,
                                  None if m["beta"] is None else m["beta"].data,
                                  m.node("bn").attrs["eps"])


def _scale_and_shift(m: Match, out_channels: int):
    """The layer's bias through the batch norm: (scale, bias * scale + shift) in float64."""
    scale, shift = _bn_scale_shift(m)
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


def _affine(m: Match, rw: Rewriter):
    """x * scale + shift with float32 constants shaped to broadcast over axis 1: the batch
    norm reference's own arithmetic, so the result keeps its bits."""
    scale, shift = _bn_scale_shift(m)
    shape = (1, -1) + (1,) * (m["x"].type.rank - 2)
    with np.errstate(over="ignore"):  # past float32's range: inf, as the batch norm gives
        scale, shift = (values.astype(np.float32).reshape(shape) for values in (scale, shift))
    name = m["mean"].name
    scaled = rw.op("mul", m["x"], rw.constant(f"{name}.scale", scale))
    return rw.op("add", scaled, rw.constant(f"{name}.shift", shift))


# A batch norm that no layer takes (DenseNet's before its convolution's ReLU): a multiply and
# an add, which `fuse` joins with that ReLU into one pass over the tensor.
AFFINE_RULE = Rule("batch_norm -> mul, add",
                   Pat("batch_norm", Var("x", where=lambda v: v.type.rank >= 2), Const("mean"),
                       Const("var"), Var("gamma", constant=True, optional=True),
                       Var("beta", constant=True, optional=True), name="bn"),
                   _affine)


@register_pass("fold-batchnorm")
def fold_batchnorm(graph: Graph, ctx: PassContext) -> bool:
    """Fold each inference batch_norm whose input is a single-use conv2d or linear with constant
    weights into that layer's weight and bias, removing the batch_norm; the others with constant
    statistics become x * scale + shift (elementwise ops that `fuse` can join)."""
    folded = apply_rules(graph, RULES, ctx.pass_name, ctx.stats)
    return apply_rules(graph, [AFFINE_RULE], ctx.pass_name, ctx.stats) or folded
