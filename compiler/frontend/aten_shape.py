"""Data-movement ATen ops: views, permutes, expand, slicing, splitting, concatenation, padding
and index selection.

View ops whose target shape torch computed (squeeze, unsqueeze, select) become a reshape to the
traced result shape; view and expand keep the sizes torch passes, SymInts included, so a
symbolic batch stays symbolic.
"""

from __future__ import annotations

import torch
import torch.fx

from ..ops.shape import SLICE_TO_END
from .context import ConversionContext
from .table import argument, converts, fake_value

aten = torch.ops.aten


@converts(aten.view.default, aten._unsafe_view.default)
def view(cx: ConversionContext, x, size):
    return cx.emit("reshape", x, shape=size)


@converts(aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default)
def squeeze_or_unsqueeze(cx: ConversionContext, x, dim=None):
    return cx.emit("reshape", x, shape=cx.result_shape)


@converts(aten.permute.default)
def permute(cx: ConversionContext, x, dims):
    return cx.emit("permute", x, perm=[d % x.type.rank for d in dims])


@converts(aten.expand.default)
def expand(cx: ConversionContext, x, size, *, implicit=False):
    return cx.emit("expand", x, shape=size)


def _static_start_and_full_end(node: torch.fx.Node) -> str | None:
    """The IR slices with static bounds; a symbolic end is fine when it is the whole axis."""
    axis_size = fake_value(node.args[0]).shape[argument(node, 1, "dim", 0)]
    start = fake_value(argument(node, 2, "start"))
    end = fake_value(argument(node, 3, "end"))
    if isinstance(start, torch.SymInt):
        return "slice start given by a symbolic size"
    if isinstance(end, torch.SymInt) and not (
            isinstance(axis_size, torch.SymInt) and end.node.expr == axis_size.node.expr):
        return "slice end given by a symbolic size"
    return None


@converts(aten.slice.Tensor, check=_static_start_and_full_end)
def slice_tensor(cx: ConversionContext, x, dim=0, start=None, end=None, step=1):
    # A symbolic end is the axis size (see the check); INT64_MAX also means "to the end".
    if end is None or not isinstance(end, int) or end >= SLICE_TO_END:
        end = SLICE_TO_END
    start = start or 0
    if start == 0 and end == SLICE_TO_END and step == 1:
        return x  # x[:] is how torch spells "all of this axis"
    return cx.emit("slice", x, axis=dim, start=start, end=end, step=step)


@converts(aten.select.int)
def select(cx: ConversionContext, x, dim, index):
    size = x.type.shape[dim]
    if index < 0 and isinstance(size, int):
        index += size
    end = SLICE_TO_END if index == -1 else index + 1
    picked = cx.emit("slice", x, axis=dim, start=index, end=end)
    return cx.emit("reshape", picked, shape=cx.result_shape)


@converts(aten.split_with_sizes.default)
def split_with_sizes(cx: ConversionContext, x, split_sizes, dim=0):
    pieces = cx.emit("split", x, axis=dim, sizes=split_sizes)
    return tuple(pieces) if isinstance(pieces, list) else (pieces,)


@converts(aten.cat.default)
def cat(cx: ConversionContext, tensors, dim=0):
    dtype = cx.result_dtype
    return cx.emit("concat", *(cx.cast(t, dtype) for t in tensors), axis=dim)


def _no_cropping(node: torch.fx.Node) -> str | None:
    return "negative padding" if min(argument(node, 1, "pad"), default=0) < 0 else None


@converts(aten.constant_pad_nd.default, check=_no_cropping)
def constant_pad_nd(cx: ConversionContext, x, pad, value=0):
    # torch lists (begin, end) pairs from the last axis backwards; the IR lists every axis's
    # begin, then every axis's end.
    rank = x.type.rank
    begins, ends = [0] * rank, [0] * rank
    for i in range(len(pad) // 2):
        axis = rank - 1 - i
        begins[axis], ends[axis] = pad[2 * i], pad[2 * i + 1]
    return cx.emit("pad", x, pads=begins + ends, value=value)


@converts(aten.index_select.default)
def index_select(cx: ConversionContext, x, dim, index):
    return cx.emit("gather", x, index, axis=dim)


def _one_integer_index(node: torch.fx.Node) -> str | None:
    """x[..., index, ...] with one integer index tensor is a gather along its axis (a relative
    position bias table read by a constant index, as in MaxViT); several index tensors
    broadcast together and a bool mask gives a data-dependent shape, which the IR has not."""
    tensors = [index for index in argument(node, 1, "indices") if index is not None]
    if len(tensors) != 1:
        return f"indexing with {len(tensors)} index tensors"
    if fake_value(tensors[0]).dtype not in (torch.int32, torch.int64):
        return f"indexing by a {fake_value(tensors[0]).dtype} tensor (a mask)"
    return None


@converts(aten.index.Tensor, check=_one_integer_index)
def index_tensor(cx: ConversionContext, x, indices):
    axis = next(axis for axis, index in enumerate(indices) if index is not None)
    return cx.emit("gather", x, indices[axis], axis=axis)
