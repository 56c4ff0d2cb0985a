"""Reductions over a set of axes: mean, sum, max, min (floats accumulate in float64); a float
global average pool runs on the native mean_axis."""

from __future__ import annotations

import numpy as np

from .. import _kernels
from .common import nhwc, normalize_axis
from .registry import NATIVE_THREADS, kernel, native_step, plan_empty, without_types


def reduced_axes(axes, rank: int) -> set[int]:
    if not axes:
        return set(range(rank))
    normalized = {normalize_axis(axis, rank) for axis in axes}
    if len(normalized) != len(axes):
        raise ValueError(f"axes {list(axes)} repeat an axis")
    return normalized


def reduce_reference(xs, a, fn):
    """``fn(x, axes, keepdim)`` over the attribute's axes, in float64 for floats."""
    x = xs[0]
    axes = tuple(sorted(reduced_axes(a["axes"], x.ndim)))
    out = fn(x, axes, a["keepdim"])
    return np.asarray(out).astype(x.dtype)


def _wide(x):
    """The accumulator dtype: float64 for floats (without copying x), else numpy's default."""
    return np.float64 if x.dtype.kind == "f" else None


# max and min are exact in any dtype; sums accumulate floats in float64.
REDUCTIONS = {
    "mean": lambda x, axes, keep: x.mean(axis=axes, keepdims=keep, dtype=_wide(x)),
    "sum": lambda x, axes, keep: x.sum(axis=axes, keepdims=keep, dtype=_wide(x)),
    "reduce_max": lambda x, axes, keep: x.max(axis=axes, keepdims=keep),
    "reduce_min": lambda x, axes, keep: x.min(axis=axes, keepdims=keep),
}

for _name, _fn in REDUCTIONS.items():
    if _name != "mean":
        kernel(_name)(without_types(lambda xs, a, fn=_fn: reduce_reference(xs, a, fn)))


def native_mean_view(x: np.ndarray, a: dict):
    """(x's memory as [O, L, I] with the averaged values on L, the result's shape) for a float32
    mean over the spatial axes of 4-D x, a global average pool: over NHWC memory (a
    convolution's result) or NCHW; None otherwise."""
    if x.dtype != np.float32 or x.ndim != 4 or not x.size or reduced_axes(a["axes"], 4) != {2, 3}:
        return None
    n, c, h, w = x.shape
    shape = (n, c, 1, 1) if a["keepdim"] else (n, c)
    if nhwc(x).flags.c_contiguous:
        return nhwc(x).reshape(n, h * w, c), shape
    if x.flags.c_contiguous:
        return x.reshape(n * c, h * w, 1), shape
    return None


@kernel("mean")
def mean(xs, a, types):
    """The native mean_axis for a global average pool (float64 sums, like numpy's here), numpy
    otherwise."""
    view = native_mean_view(xs[0], a)
    if view is None:
        return reduce_reference(xs, a, REDUCTIONS["mean"])
    source, shape = view
    return _kernels.mean_axis(source, NATIVE_THREADS.get()).reshape(shape)


@native_step("mean")
def build_mean(program, a, types, operands, runtime, results):
    """The native global average pool as a program step."""
    view = native_mean_view(operands[0], a)
    if view is None:
        return None
    source, shape = view
    out = plan_empty(shape, np.float32)
    program.mean_axis(source, out.reshape(source.shape[0], source.shape[2]))
    return [out]
