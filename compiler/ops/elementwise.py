"""Elementwise ops: activations, math functions, arithmetic, comparisons, logic, select, cast.

Binary ops broadcast like numpy and take operands of one dtype (front ends insert casts);
float references compute in float32 or wider and round once to the operand dtype.
"""

from __future__ import annotations

import numpy as np
from nimbus.runtime.cpu_ops.elementwise import cast_reference as _cast_reference
from nimbus.runtime.cpu_ops.elementwise import clamp as _clamp
from nimbus.runtime.cpu_ops.elementwise import gelu as _gelu
from scipy import special

from ..dtypes import DType
from ..ir import TensorType
from .common import broadcast_shapes, elements, in_float32, require_float, require_same_dtype
from .registry import Attr, define


def _unary(name: str, doc: str, fn, flops_per_element: int, attrs=None, floats_only=True):
    def infer(types, a):
        (x,) = types
        if floats_only:
            require_float(x, "x")
        return TensorType(x.dtype, x.shape)

    define(name, doc, operands=("x",), attrs=attrs, family="elementwise", infer=infer,
           reference=in_float32(lambda xs, a: fn(xs[0], **a)),
           flops=lambda types, results, a: elements(results[0]) * flops_per_element)


_unary("relu", "max(x, 0).", lambda x: np.maximum(x, 0), 1)
_unary("relu6", "min(max(x, 0), 6).", lambda x: np.clip(x, 0, 6), 2)
_unary("hardswish", "x * relu6(x + 3) / 6.", lambda x: x * np.clip(x + 3, 0, 6) / 6, 4)
_unary("hardsigmoid", "relu6(x + 3) / 6.", lambda x: np.clip(x + 3, 0, 6) / 6, 3)
_unary("sigmoid", "1 / (1 + exp(-x)).", special.expit, 4)
_unary("tanh", "Hyperbolic tangent.", np.tanh, 4)
_unary("silu", "x * sigmoid(x).", lambda x: x * special.expit(x), 5)
_unary("gelu", "Gaussian error linear unit; approximate='tanh' selects the tanh form.", _gelu, 8,
       attrs={"approximate": Attr("str", "none", "'none' (erf form) or 'tanh'")})
_unary("exp", "e^x.", np.exp, 1)
_unary("log", "Natural logarithm.", np.log, 1)
_unary("sqrt", "Square root.", np.sqrt, 1)
_unary("rsqrt", "1 / sqrt(x).", lambda x: 1.0 / np.sqrt(x), 2)
_unary("reciprocal", "1 / x.", lambda x: 1.0 / x, 1)
_unary("erf", "Gauss error function.", lambda x: special.erf(x.astype(np.float64)), 4)
_unary("neg", "-x.", np.negative, 1, floats_only=False)
_unary("abs", "Absolute value.", np.abs, 1, floats_only=False)
_unary("clamp", "Clamp to [min, max]; either bound may be absent.", _clamp, 2,
       attrs={"min": Attr("float?", None, "lower bound"), "max": Attr("float?", None, "upper bound")},
       floats_only=False)


def _binary(name: str, doc: str, fn, result_dtype=None, operand_check=None):
    def infer(types, a):
        dtype = require_same_dtype(types, f"{name} operands")
        if operand_check is not None:
            operand_check(dtype)
        return TensorType(result_dtype or dtype, broadcast_shapes(*(t.shape for t in types)))

    def reference(arrays, a):
        out = fn(*arrays)
        return np.asarray(out, dtype=(result_dtype or DType.from_numpy(arrays[0].dtype)).numpy)

    define(name, doc, operands=("a", "b"), family="elementwise", infer=infer,
           reference=reference if result_dtype else in_float32(lambda xs, a: fn(*xs)),
           flops=lambda types, results, a: elements(results[0]))


def _require_bool(dtype: DType) -> None:
    if dtype != DType.bool:
        raise ValueError(f"logical ops take bool operands, got {dtype}")


def _require_float_dtype(dtype: DType) -> None:
    if not dtype.is_float:
        raise ValueError(f"takes float operands, got {dtype} (cast first)")


_binary("add", "a + b.", np.add)
_binary("sub", "a - b.", np.subtract)
_binary("mul", "a * b.", np.multiply)
_binary("div", "a / b (true division, floats only).",
        np.divide, operand_check=_require_float_dtype)
_binary("pow", "a ** b.", np.power)
_binary("maximum", "Elementwise max.", np.maximum)
_binary("minimum", "Elementwise min.", np.minimum)
_binary("eq", "a == b.", np.equal, DType.bool)
_binary("ne", "a != b.", np.not_equal, DType.bool)
_binary("lt", "a < b.", np.less, DType.bool)
_binary("le", "a <= b.", np.less_equal, DType.bool)
_binary("gt", "a > b.", np.greater, DType.bool)
_binary("ge", "a >= b.", np.greater_equal, DType.bool)
_binary("logical_and", "a and b.", np.logical_and, DType.bool, _require_bool)
_binary("logical_or", "a or b.", np.logical_or, DType.bool, _require_bool)


def _logical_not_infer(types, a):
    _require_bool(types[0].dtype)
    return TensorType(DType.bool, types[0].shape)


define("logical_not", "not x.", operands=("x",), family="elementwise", infer=_logical_not_infer,
       reference=lambda xs, a: np.logical_not(xs[0]),
       flops=lambda types, results, a: elements(results[0]))


def _where_infer(types, a):
    cond, x, y = types
    _require_bool(cond.dtype)
    dtype = require_same_dtype([x, y], "where branches")
    return TensorType(dtype, broadcast_shapes(cond.shape, x.shape, y.shape))


define("where", "cond ? a : b, broadcasting all three.", operands=("cond", "a", "b"),
       family="elementwise", infer=_where_infer,
       reference=lambda xs, a: np.where(xs[0], xs[1], xs[2]),
       flops=lambda types, results, a: elements(results[0]))


define("cast", "Convert to another dtype (float to integer truncates toward zero).",
       operands=("x",), family="elementwise",
       attrs={"dtype": Attr("dtype", doc="target element type")},
       infer=lambda types, a: TensorType(a["dtype"], types[0].shape),
       reference=_cast_reference,
       flops=lambda types, results, a: 0)
