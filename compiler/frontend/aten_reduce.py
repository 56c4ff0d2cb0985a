"""Reducing ATen ops: mean, sum, amax, amin and any over a set of axes."""

from __future__ import annotations

import torch

from .context import ConversionContext
from .table import converts

aten = torch.ops.aten

REDUCTIONS = {
    aten.mean.dim: "mean",
    aten.mean.default: "mean",
    aten.sum.dim_IntList: "sum",
    aten.sum.default: "sum",
    aten.amax.default: "reduce_max",
    aten.amin.default: "reduce_min",
    # any() is the max of booleans; the input is first cast to bool (nonzero is true).
    aten.any.dim: "reduce_max",
    aten.any.dims: "reduce_max",
    aten.any.default: "reduce_max",
}


def _axes(dim) -> list[int]:
    """torch's dim argument (None, an int or a list; None and [] mean all) as IR axes."""
    if dim is None:
        return []
    return [dim] if isinstance(dim, int) else list(dim)


def _reduction(ir_op: str):
    def convert(cx: ConversionContext, x, dim=None, keepdim=False, *, dtype=None):
        # Reduce in the result dtype: torch sums bools and ints in int64, and any() gives bool.
        return cx.emit(ir_op, cx.cast(x, cx.result_dtype), axes=_axes(dim), keepdim=keepdim)

    return convert


for _target, _ir_op in REDUCTIONS.items():
    converts(_target)(_reduction(_ir_op))
