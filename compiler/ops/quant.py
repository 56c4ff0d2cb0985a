"""Quantization ops and the integer arithmetic every int8 kernel is held to.

Conventions (docs/architecture.md, "Quantization"): real = scale * (q - zero_point). Weights are
int8, symmetric, per output channel; activations uint8 with a zero point (int8 symmetric as an
option); bias is int32 at scale s_in * s_w. An integer op accumulates exactly in int32:

    acc = sum((x - zx) * (w - zw)) + bias
    q   = clamp(rint_f32(f32(acc) * M) + z_out, lo, hi),   M = f32(s_in * s_w / s_out)

``rint`` rounds half to even, computed in float32 (what cvtdq2ps/mulps/cvtps2dq do with the
default rounding mode), so every kernel can reproduce it bit for bit. A fused ReLU or ReLU6 is
only a tighter [lo, hi]. With an f32 result the op returns f32(acc) * f32(s_in * s_w) instead.

qconv2d and qlinear may add a quantized residual r (per tensor, scale s_r, zero point z_r,
the result's shape) before rounding, each step rounded to float32 in this order:

    q   = clamp(rint_f32(f32(acc) * M + f32(r - z_r) * R) + z_out, lo, hi),   R = f32(s_r / s_out)
    f32 = f32(acc) * f32(s_in * s_w) + f32(r - z_r) * f32(s_r)   (then the activation)

qconv2d and qlinear also take a float activation (gelu, silu, ...): on the f32 result, and a
u8/i8 result (without a residual) is then that value quantized as the quantize op does it:

    q   = clamp(rint_f32(act(f32) / s_out) + z_out)

qattention takes u8/i8 q, k and v (per tensor) and gives f32, with acc wrapping in int32 too:

    x   = f32(sum((q - zq) * (k - zk))) * A,   A = f32(s_q * s_k * scale)   (+ mask, or -inf)
    e   = softmax_codes(x - max(x))   u8 rint(255 * exp(t)) in fixed float32 steps; 255 at the max
    out = f32(sum(e * (v - zv))) * (f32(s_v) / f32(sum(e)))

Rows whose scores are all -inf give 0; a NaN or +inf score gives NaN.
"""

from __future__ import annotations

import numpy as np
from nimbus.runtime.cpu_ops import quant as _runtime_quant

# The integer arithmetic is defined once, in the runtime's CPU ops; these names are this
# module's public API as well (passes and kernel tests import them from here).
from nimbus.runtime.cpu_ops.quant import (  # noqa: F401
    CLAMP_ACTIVATIONS,
    activation_bounds,
    dequantize_array,
    finish_integer_op,
    quantize_array,
    requant_multiplier,
    requantize,
    residual_term,
)
from nimbus.runtime.cpu_ops.quant import dynamic_qlinear_reference as _dynamic_qlinear_reference
from nimbus.runtime.cpu_ops.quant import qconv2d_reference as _qconv2d_reference
from nimbus.runtime.cpu_ops.quant import qlinear_reference as _qlinear_reference
from nimbus.runtime.cpu_ops.quant import qattention_reference as _qattention_reference
from nimbus.runtime.cpu_ops.quant import qmatmul_reference as _qmatmul_reference
from nimbus.runtime.cpu_ops.quant import quantize_reference as _quantize_reference

from ..dtypes import DType
from ..ir import QuantParams, TensorType
from .common import elements, require_rank
from .fused import ACTIVATIONS as FUSED_ACTIVATIONS
from .fused import attention_infer
from .nn import CONV_ATTRS, conv2d_infer, linear_infer, matmul_infer
from .registry import Attr, define

ACTIVATIONS = CLAMP_ACTIVATIONS  # what every integer op may apply, as clamp bounds
LAYER_ACTIVATIONS = tuple(FUSED_ACTIVATIONS)  # what qconv2d and qlinear may apply
QUANTIZED_DTYPES = (DType.u8, DType.i8)


# ---- quantize / dequantize --------------------------------------------------------------------
def _quantize_infer(types, a):
    x = types[0]
    if not x.dtype.is_float:
        raise ValueError(f"input must be float, got {x}")
    if a["dtype"] not in QUANTIZED_DTYPES:
        raise ValueError(f"dtype must be u8 or i8, got {a['dtype']}")
    quant = QuantParams(a["scale"], a["zero_point"] or (0,), a["axis"])
    lo, hi = a["dtype"].int_range
    if any(not lo <= z <= hi for z in quant.zero_point):
        raise ValueError(f"zero point {quant.zero_point} outside {a['dtype']}")
    return TensorType(a["dtype"], x.shape, quant)


QUANT_ATTRS = {
    "dtype": Attr("dtype", doc="u8 or i8"),
    "scale": Attr("floats", doc="one scale, or one per index of `axis`"),
    "zero_point": Attr("ints", (), "zero points (default 0)"),
    "axis": Attr("int?", None, "per-axis quantization axis"),
}


define("quantize", "Float to u8/i8: clamp(rint(x / scale) + zero_point), half to even.",
       operands=("input",), family="quant", attrs=QUANT_ATTRS, infer=_quantize_infer,
       reference=_quantize_reference, flops=lambda types, results, a: 2 * elements(results[0]))


def _dequantize_infer(types, a):
    x = types[0]
    if x.quant is None:
        raise ValueError(f"input must carry quantization parameters, got {x}")
    return TensorType(DType.f32, x.shape)


define("dequantize", "u8/i8 to f32: (q - zero_point) * scale, using the input's type.",
       operands=("input",), family="quant", infer=_dequantize_infer,
       reference=lambda xs, a, types: dequantize_array(xs[0], types[0].quant),
       reference_takes_types=True, flops=lambda types, results, a: 2 * elements(results[0]))


# ---- integer compute ops -------------------------------------------------------------------------
INTEGER_OUTPUT_ATTRS = {
    "dtype": Attr("dtype", DType.u8, "u8 or i8 (requantized) or f32 (dequantized)"),
    "scale": Attr("float?", None, "result scale (quantized results only)"),
    "zero_point": Attr("int", 0, "result zero point"),
    "activation": Attr("str", "none", "fused clamp: none, relu or relu6; qlinear also takes "
                       "gelu, gelu_tanh, silu, sigmoid, tanh or hardswish, applied to the f32 "
                       "result, which a u8/i8 result then quantizes (no residual)"),
}


def _integer_result(types, shape, a, weight_axis: int, channel_axis: int,
                    float_activations: bool = False) -> TensorType:
    x, w = types[0], types[1]
    for name, t in (("input", x), ("weight", w)):
        if t.dtype not in QUANTIZED_DTYPES or t.quant is None:
            raise ValueError(f"{name} must be quantized u8/i8, got {t}")
    if x.quant.per_axis:
        raise ValueError(f"input must be quantized per tensor, got {x}")
    if w.quant.per_axis and w.quant.axis != weight_axis:
        raise ValueError(f"weight must be quantized per tensor or along axis {weight_axis}, got {w}")
    if len(types) > 2 and types[2] is not None:
        bias = types[2]
        if bias.dtype != DType.i32 or tuple(bias.shape) != (shape[channel_axis],):
            raise ValueError(f"bias must be i32 with one value per output channel, got {bias}")
    if len(types) > 3 and types[3] is not None:
        residual = types[3]
        if residual.dtype not in QUANTIZED_DTYPES or residual.quant is None or residual.quant.per_axis:
            raise ValueError(f"residual must be u8/i8 quantized per tensor, got {residual}")
        if tuple(residual.shape) != tuple(shape):
            raise ValueError(f"residual must have the result's shape {list(shape)}, got {residual}")
    allowed = LAYER_ACTIVATIONS if float_activations else ACTIVATIONS
    if a["activation"] not in allowed:
        raise ValueError(f"activation must be one of {', '.join(allowed)}")
    if (a["activation"] not in ACTIVATIONS and a["dtype"] != DType.f32 and len(types) > 3
            and types[3] is not None):
        raise ValueError(f"a quantized result after activation {a['activation']} takes no "
                         "residual")
    if a["dtype"] == DType.f32:
        if a["scale"] is not None or a["zero_point"]:
            raise ValueError("an f32 result takes no scale or zero point")
        return TensorType(DType.f32, shape)
    if a["dtype"] not in QUANTIZED_DTYPES or a["scale"] is None:
        raise ValueError("a quantized result needs dtype u8 or i8 and a scale")
    return TensorType(a["dtype"], shape, QuantParams(a["scale"], a["zero_point"]))


def _qconv2d_infer(types, a):
    return _integer_result(types, conv2d_infer(types, a), a, weight_axis=0, channel_axis=1,
                           float_activations=True)


define("qconv2d", "Integer conv2d: u8/i8 NCHW input, i8 OIHW weight per channel, i32 bias, "
       "quantized residual; requantized or f32 result.",
       operands=("input", "weight", "bias?", "residual?"), family="quant",
       attrs={**CONV_ATTRS, **INTEGER_OUTPUT_ATTRS}, infer=_qconv2d_infer,
       reference=_qconv2d_reference, reference_takes_types=True,
       flops=lambda types, results, a: 2 * elements(results[0]) * types[1].shape[1]
       * types[1].shape[2] * types[1].shape[3])


def _qlinear_infer(types, a):
    shape = linear_infer(types)
    return _integer_result(types, shape, a, weight_axis=0, channel_axis=-1, float_activations=True)


define("qlinear", "Integer linear: u8/i8 input, i8 [out, in] weight per output channel, i32 bias, "
       "quantized residual.", operands=("input", "weight", "bias?", "residual?"), family="quant",
       attrs=INTEGER_OUTPUT_ATTRS,
       infer=_qlinear_infer, reference=_qlinear_reference, reference_takes_types=True,
       flops=lambda types, results, a: 2 * elements(results[0]) * types[1].shape[1])


def _qmatmul_infer(types, a):
    require_rank(types[1], types[1].rank, "b")
    shape = matmul_infer(types)
    return _integer_result(types, shape, a, weight_axis=types[1].rank - 1, channel_axis=-1)


define("qmatmul", "Integer batched a @ b: a per tensor, b per tensor or per last axis.",
       operands=("a", "b"), family="quant", attrs=INTEGER_OUTPUT_ATTRS, infer=_qmatmul_infer,
       reference=_qmatmul_reference, reference_takes_types=True,
       flops=lambda types, results, a: 2 * elements(results[0]) * types[0].shape[-1])


def _qattention_infer(types, a):
    q, k, v, mask = types
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype not in QUANTIZED_DTYPES or t.quant is None or t.quant.per_axis:
            raise ValueError(f"{name} must be u8/i8 quantized per tensor, got {t}")
    if mask is not None and mask.dtype not in (DType.bool, DType.f32):
        raise ValueError(f"mask must be bool or f32, got {mask}")
    as_float = [None if t is None else TensorType(DType.f32, t.shape) for t in (q, k, v)]
    return attention_infer([*as_float, mask], a)


define("qattention", "Integer attention: u8/i8 q, k, v per tensor; exact int32 q @ k^T, a float "
       "softmax whose weights are u8 codes, exact int32 codes @ v; f32 result.",
       operands=("q", "k", "v", "mask?"), family="quant",
       attrs={"scale": Attr("float?", None, "score scale; default 1/sqrt(head dim)")},
       infer=_qattention_infer, reference=_qattention_reference, reference_takes_types=True,
       flops=lambda types, results, a: 4 * elements(results[0]) * types[1].shape[-2])


# ---- dynamic quantization -----------------------------------------------------------------------
def dynamic_input_params(x: np.ndarray) -> QuantParams:
    """u8 parameters of one batch: its range widened to hold 0, scale = range / 255."""
    scale, zero_point = _runtime_quant.dynamic_input_range(x)
    return QuantParams([scale], [zero_point])


def _dynamic_qlinear_infer(types, a):
    x, w, bias = types
    if not x.dtype.is_float or w.dtype != DType.i8 or w.quant is None:
        raise ValueError(f"takes a float input and a quantized i8 weight, got {x} and {w}")
    if w.quant.per_axis and w.quant.axis != 0:
        raise ValueError(f"weight must be quantized per tensor or along axis 0, got {w}")
    if bias is not None and (bias.dtype != x.dtype or tuple(bias.shape) != (w.shape[0],)):
        raise ValueError(f"bias must be {x.dtype}[{w.shape[0]}], got {bias}")
    return TensorType(x.dtype, linear_infer(types))


define("dynamic_qlinear", "Linear with dynamic quantization: the input is quantized to u8 per "
       "batch from its own range, multiplied with the i8 weight in int32, dequantized, + bias.",
       operands=("input", "weight", "bias?"), family="quant", infer=_dynamic_qlinear_infer,
       reference=_dynamic_qlinear_reference, reference_takes_types=True,
       flops=lambda types, results, a: 2 * elements(results[0]) * types[1].shape[1])
