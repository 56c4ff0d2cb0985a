"""Reductions over a set of axes: mean, sum, max, min."""

from __future__ import annotations

import numpy as np

from ..ir import TensorType
from .common import elements, normalize_axis
from .registry import Attr, define


def _reduce(name: str, doc: str, fn, flops_per_element: int):
    def infer(types, a):
        x = types[0]
        axes = _reduced_axes(a["axes"], x.rank)
        if a["keepdim"]:
            shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        else:
            shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
        return TensorType(x.dtype, shape)

    def reference(xs, a):
        x = xs[0]
        axes = tuple(sorted(_reduced_axes(a["axes"], x.ndim)))
        out = fn(x.astype(np.float64) if x.dtype.kind == "f" else x, axes, a["keepdim"])
        return np.asarray(out).astype(x.dtype)

    define(name, doc, operands=("input",), family="reduce",
           attrs={"axes": Attr("ints", (), "reduced axes; empty means all"),
                  "keepdim": Attr("bool", False, "keep reduced axes with size 1")},
           infer=infer, reference=reference,
           flops=lambda types, results, a: elements(types[0]) * flops_per_element)


def _reduced_axes(axes, rank: int) -> set[int]:
    if not axes:
        return set(range(rank))
    normalized = {normalize_axis(axis, rank) for axis in axes}
    if len(normalized) != len(axes):
        raise ValueError(f"axes {list(axes)} repeat an axis")
    return normalized


_reduce("mean", "Mean over `axes`.", lambda x, axes, keep: x.mean(axis=axes, keepdims=keep), 1)
_reduce("sum", "Sum over `axes`.", lambda x, axes, keep: x.sum(axis=axes, keepdims=keep), 1)
_reduce("reduce_max", "Max over `axes`.", lambda x, axes, keep: x.max(axis=axes, keepdims=keep), 1)
_reduce("reduce_min", "Min over `axes`.", lambda x, axes, keep: x.min(axis=axes, keepdims=keep), 1)
