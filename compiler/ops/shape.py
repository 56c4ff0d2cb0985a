"""Data-movement ops: reshape, permute, expand, slice, split, concat, gather, pad, full."""

from __future__ import annotations

import numpy as np
from nimbus.runtime.cpu_ops.shape import SLICE_TO_END
from nimbus.runtime.cpu_ops.shape import expand_reference as _expand_reference
from nimbus.runtime.cpu_ops.shape import full_reference as _full_reference
from nimbus.runtime.cpu_ops.shape import gather_reference as _gather_reference
from nimbus.runtime.cpu_ops.shape import pad_reference as _pad_reference
from nimbus.runtime.cpu_ops.shape import slice_reference as _slice_reference
from nimbus.runtime.cpu_ops.shape import split_reference as _split_reference

from ..dims import Dim, floordiv, product, same, simplify
from ..dtypes import DType
from ..ir import QuantParams, TensorType
from .common import normalize_axis, require_same_dtype
from .registry import Attr, define


def _reshape_infer(types, a):
    x = types[0]
    target = list(a["shape"])
    unknown = [i for i, d in enumerate(target) if d == -1]
    if len(unknown) > 1 or any(isinstance(d, int) and d < -1 for d in target):
        raise ValueError(f"shape {target} may hold at most one -1 and no other negative dim")
    total = product(x.shape)
    if unknown:
        known = product(d for d in target if d != -1)
        target[unknown[0]] = floordiv(total, known)
    if not same(product(target), total):
        raise ValueError(f"cannot reshape {x} ({total} elements) to {list(a['shape'])}")
    return TensorType(x.dtype, tuple(target), x.quant if x.quant and not x.quant.per_axis else None)


define("reshape", "Same elements, new shape (row-major); one dim may be -1.",
       operands=("input",), family="shape",
       attrs={"shape": Attr("dims", doc="new shape; may use symbolic dims and one -1")},
       infer=_reshape_infer, reference=lambda xs, a: xs[0].reshape(a["shape"]),
       flops=lambda types, results, a: 0)


def _permute_infer(types, a):
    x, perm = types[0], a["perm"]
    if sorted(perm) != list(range(x.rank)):
        raise ValueError(f"perm {list(perm)} is not a permutation of {x.rank} axes")
    quant = x.quant
    if quant is not None and quant.per_axis:
        quant = type(quant)(quant.scale, quant.zero_point, perm.index(quant.axis))
    return TensorType(x.dtype, tuple(x.shape[p] for p in perm), quant)


define("permute", "Reorder axes: result axis i is input axis perm[i].", operands=("input",),
       family="shape", attrs={"perm": Attr("ints", doc="axis order")},
       infer=_permute_infer, reference=lambda xs, a: np.transpose(xs[0], a["perm"]),
       flops=lambda types, results, a: 0)


def _expand_infer(types, a):
    x, target = types[0], list(a["shape"])
    if len(target) < x.rank:
        raise ValueError(f"cannot expand {x} to fewer axes {target}")
    offset = len(target) - x.rank
    for i, d in enumerate(x.shape):
        wanted = target[offset + i]
        if wanted == -1:
            target[offset + i] = d
        elif d != 1 and d != wanted:
            raise ValueError(f"cannot expand axis {i} of {x} to {wanted}")
    return TensorType(x.dtype, tuple(target), x.quant if x.quant and not x.quant.per_axis else None)


define("expand", "Broadcast to `shape` (-1 keeps an axis); leading axes may be added.",
       operands=("input",), family="shape", attrs={"shape": Attr("dims", doc="target shape")},
       infer=_expand_infer, reference=_expand_reference, flops=lambda types, results, a: 0)


def slice_length(size: Dim, start: int, end: int, step: int) -> Dim:
    """Length of python's x[start:end:step] along an axis of ``size``."""
    if step < 1:
        raise ValueError(f"slice step must be positive, got {step}")
    if isinstance(size, int):
        return len(range(*slice(start, end, step).indices(size)))
    if end >= SLICE_TO_END and step == 1:
        return simplify(-start if start < 0 else size - start)
    raise ValueError(f"slice [{start}:{end}:{step}] of symbolic size {size} is not supported")


def _slice_infer(types, a):
    x = types[0]
    axis = normalize_axis(a["axis"], x.rank)
    shape = list(x.shape)
    shape[axis] = slice_length(shape[axis], a["start"], a["end"], a["step"])
    return TensorType(x.dtype, tuple(shape), x.quant if x.quant and not x.quant.per_axis else None)


define("slice", "x[start:end:step] along `axis`, with python's rules for negative and large bounds.",
       operands=("input",), family="shape",
       attrs={"axis": Attr("int", doc="sliced axis"), "start": Attr("int", 0, "first index"),
              "end": Attr("int", SLICE_TO_END, "one past the last index"),
              "step": Attr("int", 1, "stride, at least 1")},
       infer=_slice_infer, reference=_slice_reference, flops=lambda types, results, a: 0)


def _split_infer(types, a):
    x = types[0]
    axis = normalize_axis(a["axis"], x.rank)
    sizes = a["sizes"]
    if not sizes or any(s < 0 for s in sizes):
        raise ValueError(f"split sizes must be non-negative, got {list(sizes)}")
    if isinstance(x.shape[axis], int) and sum(sizes) != x.shape[axis]:
        raise ValueError(f"sizes {list(sizes)} do not add up to axis {axis} of {x}")
    results = []
    for size in sizes:
        shape = list(x.shape)
        shape[axis] = size
        results.append(TensorType(x.dtype, tuple(shape)))
    return results


define("split", "Cut `axis` into consecutive pieces of the given sizes; one result per piece.",
       operands=("input",), family="shape",
       attrs={"axis": Attr("int", doc="split axis"), "sizes": Attr("ints", doc="piece sizes")},
       infer=_split_infer, reference=_split_reference, flops=lambda types, results, a: 0)


def _concat_infer(types, a):
    dtype = require_same_dtype(types, "concat inputs")
    first = types[0]
    axis = normalize_axis(a["axis"], first.rank)
    for t in types[1:]:
        if t.rank != first.rank or any(d != e for i, (d, e) in
                                       enumerate(zip(t.shape, first.shape)) if i != axis):
            raise ValueError(f"concat inputs must agree except on axis {axis}: {first} vs {t}")
    shape = list(first.shape)
    shape[axis] = simplify(sum((t.shape[axis] for t in types), 0))
    return TensorType(dtype, tuple(shape))


define("concat", "Join inputs along `axis`.", operands=("inputs*",), family="shape",
       attrs={"axis": Attr("int", doc="joined axis")}, infer=_concat_infer,
       reference=lambda xs, a: np.concatenate(xs, axis=a["axis"]),
       flops=lambda types, results, a: 0)


def _gather_infer(types, a):
    data, indices = types
    if indices.dtype not in (DType.u8, DType.i32, DType.i64):
        raise ValueError(f"indices must be u8, i32 or i64, got {indices}")
    axis = normalize_axis(a["axis"], data.rank)
    quant = data.quant
    if quant is not None and quant.axis is not None:  # the scales' axis moves with the picked slices
        if quant.axis == axis:
            raise ValueError(f"cannot gather along axis {axis}, which holds the quantization scales")
        if quant.axis > axis:
            quant = QuantParams(quant.scale, quant.zero_point, quant.axis + indices.rank - 1)
    return TensorType(data.dtype, (*data.shape[:axis], *indices.shape, *data.shape[axis + 1:]), quant)


define("gather", "Pick slices along `axis` by index (embedding lookup, index_select, codebook "
       "decoding of shared weights).",
       operands=("data", "indices"), family="shape", attrs={"axis": Attr("int", 0, "indexed axis")},
       infer=_gather_infer, reference=_gather_reference, flops=lambda types, results, a: 0)


def _pad_infer(types, a):
    x, pads = types[0], a["pads"]
    if len(pads) != 2 * x.rank or any(p < 0 for p in pads):
        raise ValueError(f"pads needs {2 * x.rank} non-negative values, got {list(pads)}")
    shape = tuple(simplify(d + pads[i] + pads[i + x.rank]) for i, d in enumerate(x.shape))
    return TensorType(x.dtype, shape)


define("pad", "Constant padding; pads lists every axis's begin, then every axis's end.",
       operands=("input",), family="shape",
       attrs={"pads": Attr("ints", doc="[begin_0, ..., begin_r-1, end_0, ..., end_r-1]"),
              "value": Attr("float", 0.0, "fill value")},
       infer=_pad_infer, reference=_pad_reference, flops=lambda types, results, a: 0)


define("full", "A tensor of `shape` filled with `value` (shapes may be symbolic).", operands=(),
       family="shape",
       attrs={"shape": Attr("dims", doc="result shape"), "value": Attr("float", doc="fill value"),
              "dtype": Attr("dtype", doc="element type")},
       infer=lambda types, a: TensorType(a["dtype"], a["shape"]),
       reference=_full_reference,
       flops=lambda types, results, a: 0)
