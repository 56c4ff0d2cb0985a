"""Reductions over a set of axes: mean, sum, max, min."""

from __future__ import annotations

from nimbus.runtime.cpu_ops.reduce import reduce_reference
from nimbus.runtime.cpu_ops.reduce import reduced_axes as _reduced_axes

from ..ir import TensorType
from .common import elements
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
        return reduce_reference(xs, a, fn)

    define(name, doc, operands=("input",), family="reduce",
           attrs={"axes": Attr("ints", (), "reduced axes; empty means all"),
                  "keepdim": Attr("bool", False, "keep reduced axes with size 1")},
           infer=infer, reference=reference,
           flops=lambda types, results, a: elements(types[0]) * flops_per_element)


_reduce("mean", "Mean over `axes`.", lambda x, axes, keep: x.mean(axis=axes, keepdims=keep), 1)
_reduce("sum", "Sum over `axes`.", lambda x, axes, keep: x.sum(axis=axes, keepdims=keep), 1)
_reduce("reduce_max", "Max over `axes`.", lambda x, axes, keep: x.max(axis=axes, keepdims=keep), 1)
_reduce("reduce_min", "Min over `axes`.", lambda x, axes, keep: x.min(axis=axes, keepdims=keep), 1)
