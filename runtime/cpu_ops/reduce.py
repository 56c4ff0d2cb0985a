"""Reductions over a set of axes: mean, sum, max, min (floats accumulate in float64)."""

from __future__ import annotations

import numpy as np

from .common import normalize_axis
from .registry import kernel, without_types


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
    kernel(_name)(without_types(lambda xs, a, fn=_fn: reduce_reference(xs, a, fn)))
