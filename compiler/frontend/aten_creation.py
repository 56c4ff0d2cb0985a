"""ATen ops that create tensors: full, full_like, scalar_tensor, arange.

A static shape becomes a named constant; a symbolic one (a batch-sized mask) a `full` node.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.fx

from .context import ConversionContext
from .table import converts, fake_value
from .torch_types import IR_TO_TORCH, to_numpy

aten = torch.ops.aten


def _filled(cx: ConversionContext, shape, value):
    dtype = cx.result_dtype
    if not shape:
        return cx.scalar(value, dtype)
    if all(isinstance(d, int) for d in shape):
        return cx.constant(cx.node.name, np.full(shape, value, dtype=dtype.numpy))
    return cx.emit("full", shape=shape, value=float(value), dtype=dtype)


@converts(aten.full.default)
def full(cx: ConversionContext, size, fill_value, **_placement):
    return _filled(cx, list(size), fill_value)


@converts(aten.full_like.default)
def full_like(cx: ConversionContext, x, fill_value, **_placement):
    return _filled(cx, list(x.type.shape), fill_value)


@converts(aten.scalar_tensor.default)
def scalar_tensor(cx: ConversionContext, value, **_placement):
    return cx.scalar(value, cx.result_dtype)


def _static_bounds(node: torch.fx.Node) -> str | None:
    if any(isinstance(fake_value(arg), torch.SymInt) for arg in node.args):
        return "arange with a symbolic bound"
    return None


@converts(aten.arange.default, aten.arange.start, aten.arange.start_step, check=_static_bounds)
def arange(cx: ConversionContext, *bounds, **_placement):
    # torch computes the values, so float steps round exactly as they do in torch.
    values = torch.arange(*bounds, dtype=IR_TO_TORCH[cx.result_dtype])
    return cx.constant(cx.node.name, to_numpy(values))
