"""Data-movement ops: reshape, permute, expand, slice, split, concat, gather, pad, full."""

from __future__ import annotations

import numpy as np

from .. import _kernels
from .common import in_nhwc_memory, nhwc, numpy_dtype
from .registry import (NATIVE_THREADS, kernel, native_step, plan_empty, plan_empty_like,
                       without_types)

# Slice ends at or past this mean "to the end" (front ends pass INT64_MAX).
SLICE_TO_END = 2**62


def expand_reference(xs, a):
    x = xs[0]
    offset = len(a["shape"]) - x.ndim
    shape = [x.shape[i - offset] if d == -1 else d for i, d in enumerate(a["shape"])]
    return np.broadcast_to(x, shape).copy()


def _sliced(x, a):
    index = [slice(None)] * x.ndim
    index[a["axis"]] = slice(a["start"], min(a["end"], SLICE_TO_END), a["step"])
    return x[tuple(index)]


def slice_reference(xs, a):
    return _sliced(xs[0], a).copy()


def split_reference(xs, a):
    """Copies of the parts in their memory order: channels of NHWC memory (a convolution's or
    a channel shuffle's result) stay NHWC, for the convolutions that read them."""
    boundaries = np.cumsum(a["sizes"])[:-1]
    return [part.copy(order="K") for part in np.split(xs[0], boundaries, axis=a["axis"])]


def gather_reference(xs, a):
    data, indices = xs
    # np.take checks the range itself (negative indices count from the end): a separate min and
    # max took longer than the lookup of BERT's token embeddings.
    try:
        return np.take(data, indices, axis=a["axis"])
    except IndexError as err:
        size = data.shape[a["axis"]]
        raise IndexError(f"gather index out of range [-{size}, {size}): {err}") from None


def pad_reference(xs, a):
    x, pads = xs[0], a["pads"]
    widths = [(pads[i], pads[i + x.ndim]) for i in range(x.ndim)]
    return np.pad(x, widths, constant_values=np.asarray(a["value"]).astype(x.dtype))


def full_reference(xs, a):
    return np.full(a["shape"], a["value"], dtype=numpy_dtype(a["dtype"]))


kernel("reshape")(lambda xs, a, types: xs[0].reshape(a["shape"]))


CHANNEL_MOVE_DTYPES = (np.float32, np.uint8, np.int8)  # what Program.to_channels_first moves


@native_step("reshape")
def build_reshape(program, a, types, operands, runtime, results):
    """A reshape in a program: a view of C-contiguous x; for an NCHW view of NHWC memory (a
    convolution's result flattened for a linear layer), a step that puts it in NCHW order
    first; for another strided float32 view (heads merged after a permute), a copy step."""
    x = channels_first_operand(program, operands[0])
    if x is not operands[0]:
        return [x.reshape(a["shape"])]
    x = contiguous_operand(program, x)
    return None if x is None else [x.reshape(a["shape"])]


def channels_first_operand(program, x: np.ndarray) -> np.ndarray:
    """For an NCHW view of NHWC memory (the layout of a 4-D step's result), an array that a
    step added to ``program`` fills in NCHW order; x itself otherwise."""
    if x.ndim == 4 and x.dtype in CHANNEL_MOVE_DTYPES and not x.flags.c_contiguous \
            and nhwc(x).flags.c_contiguous:
        out = plan_empty(x.shape, x.dtype)
        program.to_channels_first(nhwc(x), out)
        return out
    return x


kernel("permute")(lambda xs, a, types: np.transpose(xs[0], a["perm"]))
kernel("expand")(without_types(expand_reference))
kernel("slice")(without_types(slice_reference))
kernel("split")(without_types(split_reference))
_COPY = _kernels.ElementwiseProgram([("input", 0, 0.0, 0.0)])  # a float32 array, C-contiguous


def _joins_channels(xs, a) -> bool:
    """Whether the concat joins the channels of 4-D operands, some in NHWC memory (convolutions'
    results): it then joins them in that memory, for the convolution that reads them next,
    where numpy's NCHW result made each reader transpose it again."""
    return a["axis"] in (1, -3) and all(x.ndim == 4 for x in xs) and any(
        in_nhwc_memory(x, x.dtype) for x in xs)


def concatenates_float32_channels(xs) -> bool:
    """Whether 4-D float32 values [N, C_i, H, W] join along channels (the same N, H and W), as
    the native channel concat takes them (numpy's names a mismatch)."""
    if any(x.ndim != 4 for x in xs):
        return False
    n, _, h, w = xs[0].shape
    return all(x.dtype == np.float32 and x.shape[0] == n and x.shape[2:] == (h, w) for x in xs)


@kernel("concat")
def concat(xs, a, types):
    """np.concatenate; channels in NHWC memory (_joins_channels). numpy's copy stays on the
    calling thread: the native one on two threads left ShuffleNet's channel shuffles (numpy
    reshapes after each concat) reading the other core's cache, 5.5 -> 6.5 ms for the model."""
    if _joins_channels(xs, a):
        return np.concatenate([nhwc(x) for x in xs], axis=3).transpose(0, 3, 1, 2)
    return np.concatenate(xs, axis=a["axis"])


@native_step("concat")
def build_concat(program, a, types, operands, runtime, results):
    """A float32 channel concat in NHWC memory as a program step (the native copy; its readers
    there are native calls on the same threads)."""
    out = plan_empty_like(results[0])
    if not (_joins_channels(operands, a) and concatenates_float32_channels(operands)
            and nhwc(out).flags.c_contiguous):
        return None
    program.elementwise_concat(_COPY, list(operands), [], nhwc(out))
    return [out]
kernel("pad")(without_types(pad_reference))
kernel("full")(without_types(full_reference))


def _gathers_rows(data, indices, axis: int) -> bool:
    """Whether the native row gather takes these operands (numpy.take along axis 0)."""
    return (axis == 0 and data.ndim >= 1 and data.flags.c_contiguous and indices.flags.c_contiguous
            and indices.dtype in (np.int64, np.int32))


@kernel("gather")
def gather(xs, a, types):
    """Rows of a table (an embedding lookup) on the native row copy, in parallel; else np.take."""
    data, indices = xs
    if _gathers_rows(data, indices, a["axis"]):
        return _kernels.gather_rows(data, indices, NATIVE_THREADS.get())
    return gather_reference(xs, a)


@native_step("gather")
def build_gather(program, a, types, operands, runtime, results):
    data, indices = operands
    if not _gathers_rows(data, indices, a["axis"]):
        return None
    out = plan_empty(results[0].shape, data.dtype)
    program.gather_rows(data, indices, out)
    return [out]


def contiguous_operand(program, x: np.ndarray) -> np.ndarray | None:
    """x for a program step that reads C-contiguous memory: x itself, or for a strided float32
    view an array that a copy step added to ``program`` fills (what np.ascontiguousarray gives
    the executor); None for other strided views."""
    if x.flags.c_contiguous:
        return x
    if x.dtype != np.float32:
        return None
    out = plan_empty(x.shape, np.float32)
    program.elementwise(_COPY, [x], out)
    return out


@native_step("slice")
def build_slice(program, a, types, operands, runtime, results):
    """A slice in a program: a view of its operand (no later step writes the operand's array),
    made C-contiguous as the executor's copy is."""
    view = contiguous_operand(program, _sliced(operands[0], a))
    return None if view is None else [view]


# A program's full and permute are no calls: a filled array of its own, a view of its operand.
native_step("full")(lambda program, a, types, operands, runtime, results: [
    np.full(results[0].shape, a["value"], results[0].dtype)])
native_step("permute")(lambda program, a, types, operands, runtime, results: [
    np.transpose(operands[0], a["perm"])])
