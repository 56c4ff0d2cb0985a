"""Quantization ops and the integer arithmetic every int8 kernel is held to.

Conventions (docs/architecture.md, "Quantization arithmetic"): real = scale * (q - zero_point).
An integer op accumulates exactly in int32 (wrapping) and finishes with one epilogue:

    acc = sum((x - zx) * (w - zw)) + bias
    q   = clamp(rint_f32(f32(acc) * M) + z_out, lo, hi),   M = f32(s_in * s_w / s_out)

or, with an f32 result, f32(acc) * f32(s_in * s_w). A quantized residual r adds
f32(r - z_r) * f32(s_r / s_out) (f32 results: * f32(s_r)) before rounding.

The ``*_reference`` functions are pure numpy and are also the compiler's op-table references.
They read quantization parameters as ``types[i].quant`` (anything with ``scale``,
``zero_point`` and ``axis``: the compiler's QuantParams or a TensorInfo) and the result dtype
by name (``str(a["dtype"])``), so one definition serves both sides.

The kernels run qlinear, qconv2d and dynamic_qlinear on the native extension when the weight
is int8 and symmetric (every zero point 0) and the accumulator depth is within its bound, and
qattention where q, k and v share their batch dimensions; the native results equal the
references bit for bit. Otherwise, and for qmatmul (two activations, nothing to pack), they
run the numpy references, which are exact.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import _kernels
from .common import in_nhwc_memory, int_range, nhwc, numpy_dtype
from .fused import (apply_activation, attention_operands, attention_operands_in_place,
                    attention_result, scale_of)
from .nn import conv2d_nchw
from .packing import PACKED_WEIGHTS
from .registry import (NATIVE_THREADS, RUNTIME, kernel, native_step, plan_empty,
                       plan_empty_like, prepared_or, preparer, without_types)
from .shape import channels_first_operand, contiguous_operand

NATIVE_OUT_DTYPES = {"u8": "u8", "i8": "s8"}
# Activations that a quantized result takes as clamp bounds; the others (gelu, silu, ...) run
# in float on the dequantized values, which are then quantized.
CLAMP_ACTIVATIONS = ("none", "relu", "relu6")


# ---- the shared arithmetic ----------------------------------------------------------------------
def requant_multiplier(input_scale: float, weight_scales, output_scale: float = 1.0) -> np.ndarray:
    """M = s_in * s_w / s_out per output channel.

    Scales are float32 values (as stored in types); the product is formed in float64 and
    rounded once to float32, so every caller gets the same multiplier bits.
    """
    weight = np.asarray(weight_scales, dtype=np.float32).astype(np.float64)
    product = np.float64(np.float32(input_scale)) * weight / np.float64(np.float32(output_scale))
    return product.astype(np.float32)


def activation_bounds(activation: str, dtype, scale: float, zero_point: int) -> tuple[int, int]:
    """Integer clamp bounds [lo, hi] of a quantized result (dtype by name) with a fused activation."""
    lo, hi = int_range(dtype)
    if activation in ("relu", "relu6"):
        lo = max(lo, zero_point)
    if activation == "relu6":
        hi = min(hi, zero_point + int(np.rint(np.float32(6.0) / np.float32(scale))))
    return lo, hi


def requantize(acc: np.ndarray, multiplier: np.ndarray, zero_point: int, lo: int, hi: int,
               dtype, channel_axis: int, residual: np.ndarray | None = None) -> np.ndarray:
    """int32 accumulators -> quantized values (dtype by name), per the conventions above.

    ``residual`` is the float32 term f32(r - z_r) * R of a fused residual, or None.
    """
    m = along_axis(multiplier, acc.ndim, channel_axis)
    scaled = acc.astype(np.float32) * m
    if residual is not None:
        scaled = (scaled + residual).astype(np.float32)
    return np.clip(np.rint(scaled).astype(np.int64) + zero_point, lo, hi).astype(numpy_dtype(dtype))


def residual_factor(quant, output_scale: float) -> np.float32:
    """f32(s_r / s_out): what a quantized residual's centered values are multiplied by."""
    return np.float32(np.float64(np.float32(quant.scale[0])) / np.float64(np.float32(output_scale)))


def residual_term(residual: np.ndarray, quant, output_scale: float) -> np.ndarray:
    """f32(r - z_r) * f32(s_r / s_out): a quantized residual in units of the result's scale."""
    factor = residual_factor(quant, output_scale)
    centered = (residual.astype(np.int32) - quant.zero_point[0]).astype(np.float32)
    return (centered * factor).astype(np.float32)


def quantize_array(x: np.ndarray, quant, dtype) -> np.ndarray:
    """q = clamp(rint_f32(x / scale) + zero_point) along the quantization axis.

    Computed in place in float32, which is exact: rint leaves integers, adding the zero point
    is exact below 2^24 and anything larger is clamped, as is +-inf."""
    axis = quant.axis if quant.axis is not None else 0
    scale = along_axis(np.asarray(quant.scale, dtype=np.float32), x.ndim, axis)
    zero_point = along_axis(np.asarray(quant.zero_point, dtype=np.float32), x.ndim, axis)
    lo, hi = int_range(dtype)
    q = np.asarray(np.divide(x.astype(np.float32, copy=False), scale))  # an array when 0-d too
    np.rint(q, out=q)
    q += zero_point
    np.clip(q, lo, hi, out=q)
    return q.astype(numpy_dtype(dtype))


def dequantize_array(q: np.ndarray, quant) -> np.ndarray:
    axis = quant.axis if quant.axis is not None else 0
    scale = along_axis(np.asarray(quant.scale, dtype=np.float32), q.ndim, axis)
    zero_point = along_axis(np.asarray(quant.zero_point, dtype=np.int32), q.ndim, axis)
    return np.asarray((q.astype(np.int32) - zero_point).astype(np.float32) * scale,
                      dtype=np.float32)  # an array when 0-d too


def along_axis(values: np.ndarray, rank: int, axis: int) -> np.ndarray:
    if values.size == 1:
        return values.reshape(())
    shape = [1] * rank
    shape[axis] = values.size
    return values.reshape(shape)


def finish_integer_op(acc: np.ndarray, input_quant, weight_quant, a: dict, channel_axis: int,
                      residual: np.ndarray | None = None, residual_quant=None) -> np.ndarray:
    """The shared epilogue: int32 accumulators (+ a quantized residual) to the op's result."""
    weight_scales = np.asarray(weight_quant.scale)
    float_activation = a["activation"] not in CLAMP_ACTIVATIONS
    if str(a["dtype"]) == "f32" or float_activation:
        m = along_axis(requant_multiplier(input_quant.scale[0], weight_scales), acc.ndim,
                       channel_axis)
        out = acc.astype(np.float32) * m
        if residual is not None:
            out = (out + residual_term(residual, residual_quant, 1.0)).astype(np.float32)
        out = _f32_activation(out, a["activation"])
        if str(a["dtype"]) == "f32":
            return out
        # A float activation's values, quantized as a quantize op would.
        return quantize_array(out, _Quant((a["scale"],), (a["zero_point"],)), a["dtype"])
    multiplier = requant_multiplier(input_quant.scale[0], weight_scales, a["scale"])
    lo, hi = activation_bounds(a["activation"], a["dtype"], a["scale"], a["zero_point"])
    term = None if residual is None else residual_term(residual, residual_quant, a["scale"])
    return requantize(acc, multiplier, a["zero_point"], lo, hi, a["dtype"], channel_axis, term)


def _f32_activation(out: np.ndarray, activation: str) -> np.ndarray:
    """The activation of an f32 result: a clamp, or (qlinear) one of the float activations."""
    if activation == "relu":
        out = np.maximum(out, 0)
    elif activation == "relu6":
        out = np.clip(out, 0, 6)
    elif activation != "none":
        out = apply_activation(out.astype(np.float32), activation)
    return out.astype(np.float32)


def centered(q: np.ndarray, quant, axis: int) -> np.ndarray:
    """q - zero_point in float64, where integer sums stay exact up to 2^53."""
    zero_point = along_axis(np.asarray(quant.zero_point, dtype=np.int32), q.ndim, axis)
    return q.astype(np.float64) - zero_point


def to_int32(acc: np.ndarray) -> np.ndarray:
    return acc.astype(np.int64).astype(np.int32)  # int32 accumulators wrap, like the kernels


def _residual_quant(types):
    return types[3].quant if len(types) > 3 and types[3] is not None else None


class _Quant(NamedTuple):
    """Affine parameters built from attributes (quantize) or from data (dynamic_qlinear)."""

    scale: tuple
    zero_point: tuple
    axis: int | None = None


def dynamic_input_range(x: np.ndarray) -> tuple[float, int]:
    """u8 (scale, zero point) of one batch: its range widened to hold 0, scale = range / 255."""
    low = min(float(x.min(initial=0.0)), 0.0)
    high = max(float(x.max(initial=0.0)), 0.0)
    scale = float(np.float32((high - low) / 255.0)) or 1.0
    return scale, int(np.clip(np.rint(-low / scale), 0, 255))


# ---- references (numpy) -------------------------------------------------------------------------
def quantize_reference(xs, a):
    quant = _Quant(tuple(a["scale"]), tuple(a["zero_point"]) or (0,), a["axis"])
    return quantize_array(xs[0], quant, a["dtype"])


def qconv2d_reference(xs, a, types):
    (x, w, bias, residual), (xq, wq) = xs, (types[0].quant, types[1].quant)
    acc = conv2d_nchw(centered(x, xq, 1), centered(w, wq, 0), a["stride"],
                      a["padding"], a["dilation"], a["groups"], accumulate=np.float64)
    acc = to_int32(acc)
    if bias is not None:
        acc = acc + np.asarray(bias, dtype=np.int32).reshape(1, -1, 1, 1)
    return finish_integer_op(acc, xq, wq, a, 1, residual, _residual_quant(types))


def qlinear_reference(xs, a, types):
    (x, w, bias, residual), (xq, wq) = xs, (types[0].quant, types[1].quant)
    acc = to_int32(np.matmul(centered(x, xq, 0), centered(w, wq, 0).T))
    if bias is not None:
        acc = acc + np.asarray(bias, dtype=np.int32)
    return finish_integer_op(acc, xq, wq, a, acc.ndim - 1, residual, _residual_quant(types))


def qmatmul_reference(xs, a, types):
    (x, w), (xq, wq) = xs, (types[0].quant, types[1].quant)
    acc = to_int32(np.matmul(centered(x, xq, 0), centered(w, wq, w.ndim - 1)))
    return finish_integer_op(acc, xq, wq, a, channel_axis=acc.ndim - 1)


# The u8 softmax weights of qattention, in the float32 steps that every kernel repeats
# (kernels/cpu/vector_math_polynomials.h, kCode): p is the Taylor polynomial of 255 * 2^f.
_CODE_POLYNOMIAL = tuple(np.float32(c) for c in (
    2.452622890472412, 14.153547286987305, 61.25775909423828, 176.75253295898438, 255.0))
_CODE_FLOOR = np.float32(-17.0)  # 255 * exp(-17) rounds to 0
_LOG2E = np.float32(1.44269504088896341)


def softmax_codes(t: np.ndarray) -> np.ndarray:
    """rint(255 * exp(t)) as uint8 for float32 t <= 0 (-inf included), each step rounded to
    float32: u = max(t, -17) * log2(e), n = rint(u), f = u - n, code = rint(2^n * p(f)) with
    p(f) ~ 255 * 2^f by Horner's rule (p(0) = 255)."""
    u = np.maximum(t, _CODE_FLOOR) * _LOG2E
    power = np.rint(u)
    f = u - power
    p = np.full_like(f, _CODE_POLYNOMIAL[0])
    for coefficient in _CODE_POLYNOMIAL[1:]:
        p = p * f + coefficient
    return np.rint(np.ldexp(p, power.astype(np.int32))).astype(np.uint8)


def qattention_score_scale(q_scale: float, k_scale: float, scale: float) -> np.float32:
    """The factor of qattention's integer scores: s_q * s_k * scale in float64, rounded once."""
    return np.float32(np.float64(np.float32(q_scale)) * np.float64(np.float32(k_scale)) * scale)


def qattention_reference(xs, a, types):
    q, k, v, mask = xs
    qq, kq, vq = (t.quant for t in types[:3])
    scores = to_int32(np.matmul(centered(q, qq, 0), np.swapaxes(centered(k, kq, 0), -1, -2)))
    x = scores.astype(np.float32) * qattention_score_scale(qq.scale[0], kq.scale[0],
                                                           scale_of(a, q))
    if mask is not None:
        x = np.where(mask, x, np.float32(-np.inf)) if mask.dtype == np.bool_ else x + mask
    peak = x.max(axis=-1, keepdims=True)
    finite = np.isfinite(peak)  # all -inf: zeros; a NaN or +inf: NaN
    shift = np.where(finite, peak, np.float32(0))
    codes = softmax_codes(np.where(finite, x - shift, np.float32(-np.inf)))
    sums = codes.sum(axis=-1, keepdims=True, dtype=np.int64).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.float32(vq.scale[0]) / sums
    factor = np.where(finite, factor, np.where(np.isneginf(peak), np.float32(0), np.float32(np.nan)))
    values = to_int32(np.matmul(codes.astype(np.float64), centered(v, vq, 0)))
    return values.astype(np.float32) * factor.astype(np.float32)


def dynamic_qlinear_reference(xs, a, types):
    x, w, bias = xs
    scale, zero_point = dynamic_input_range(x)
    input_quant = _Quant((scale,), (zero_point,))
    q = quantize_array(x, input_quant, "u8")
    acc = to_int32(np.matmul(centered(q, input_quant, 0), centered(w, types[1].quant, 0).T))
    out = finish_integer_op(acc, input_quant, types[1].quant, {"dtype": "f32", "activation": "none"},
                            channel_axis=acc.ndim - 1)
    return out if bias is None else out + bias


# ---- packed weights -----------------------------------------------------------------------------
def _symmetric_int8(w: np.ndarray, quant) -> bool:
    """int8 weights whose zero points are all 0; checked once per constant weight, as scanning
    a wide layer's zero points took microseconds on every run (6 us for 1280 channels)."""
    return w.dtype == np.int8 and PACKED_WEIGHTS.get(w, "symmetric",
                                                     lambda _: not any(quant.zero_point))


def _packed_gemm(w: np.ndarray):
    """Packed [N, K] weights, or None when K is past the native accumulator bound."""
    try:
        return PACKED_WEIGHTS.get(w, "gemm", _kernels.pack_weights)
    except ValueError:
        return None  # the numpy reference wraps int32 exactly as the op defines


def _packed_conv(w: np.ndarray, groups: int):
    try:
        return PACKED_WEIGHTS.get(w, "conv", _kernels.pack_conv_weights, groups)
    except ValueError:
        return None


def _channel_vector(values: np.ndarray, channels: int) -> np.ndarray:
    """One float32 per output channel, as the native epilogues take it."""
    return np.ascontiguousarray(np.broadcast_to(np.asarray(values, np.float32), (channels,)))


def _channel_multiplier(w: np.ndarray, wq, channels: int, input_scale: float,
                        output_scale: float) -> np.ndarray:
    """requant_multiplier as the native epilogue takes it, kept beside the packed weights (the
    weight's scales belong to it), so a run does not rebuild it."""
    return PACKED_WEIGHTS.get(w, "multiplier", lambda _, *scales: _channel_vector(
        requant_multiplier(scales[0], wq.scale, scales[1]), channels), input_scale, output_scale)


class NativeEpilogue(NamedTuple):
    """An integer layer's epilogue as the native kernels take it, worked out once per layer:
    ``f32`` picks the kernel form (f32 result, or u8/s8), ``args`` follow (rows, packed,
    zero point, bias), ``residual`` is (zero point, scale) of a quantized residual's term, and
    ``activation`` and ``output_scale`` a float activation before quantization.
    The runtime passes every argument by position: a keyword argument costs a pybind11 call
    about 2 us, as long as a small layer's arithmetic."""

    f32: bool
    args: tuple
    residual: tuple = (0, 0.0)
    activation: str = "none"
    output_scale: float | None = None


def native_epilogue(w: np.ndarray, a: dict, xq, wq, rq, with_residual: bool):
    """The op's epilogue for the native kernels; None where they have none, a residual beside
    a float activation before quantization (the numpy epilogue then finishes the accumulators).
    An f32 result's activation is the caller's to pass (epilogue_tail)."""
    channels, input_scale = w.shape[0], float(xq.scale[0])
    if str(a["dtype"]) == "f32":
        residual = (0, 0.0) if not with_residual else (
            int(rq.zero_point[0]), float(residual_factor(rq, 1.0)))
        return NativeEpilogue(True, (_channel_multiplier(w, wq, channels, input_scale, 1.0),),
                              residual)
    out_dtype, output_scale = NATIVE_OUT_DTYPES[str(a["dtype"])], float(a["scale"])
    if a["activation"] not in CLAMP_ACTIVATIONS:  # act(f32 result), quantized tile by tile
        if with_residual:
            return None
        lo, hi = int_range(a["dtype"])
        return NativeEpilogue(False, (_channel_multiplier(w, wq, channels, input_scale, 1.0),
                                      a["zero_point"], lo, hi, out_dtype),
                              activation=a["activation"], output_scale=output_scale)
    lo, hi = activation_bounds(a["activation"], a["dtype"], a["scale"], a["zero_point"])
    residual = (0, 0.0) if not with_residual else (
        int(rq.zero_point[0]), float(residual_factor(rq, output_scale)))
    return NativeEpilogue(False, (_channel_multiplier(w, wq, channels, input_scale, output_scale),
                                  a["zero_point"], lo, hi, out_dtype), residual)


class NativeLayer(NamedTuple):
    """What a prepared integer layer reads from its types and constant operands."""

    xq: object        # the input's quantization
    wq: object        # the weight's
    rq: object        # the residual's, or None
    w: np.ndarray
    packed: object    # the weight packed for the native kernel
    zero_point: int   # the input's
    bias: np.ndarray | None
    with_residual: bool


def native_layer(types, operands, pack):
    """The NativeLayer of qlinear / qconv2d operands (x, w, bias, residual) with a constant,
    non-empty, symmetric int8 weight (and a constant bias, if any) that ``pack(w)`` packs; None
    otherwise, where the numpy reference runs."""
    w, bias = operands[1], operands[2]
    xq, wq = types[0].quant, types[1].quant
    if not isinstance(w, np.ndarray) or not w.size or bias is RUNTIME or not _symmetric_int8(w, wq):
        return None
    packed = pack(w)
    if packed is None:
        return None
    return NativeLayer(xq, wq, _residual_quant(types), w, packed, xq.zero_point[0], _bias(bias),
                       operands[3] is not None)


def _bias(bias):
    return None if bias is None else np.ascontiguousarray(bias, dtype=np.int32)


# ---- kernels ------------------------------------------------------------------------------------
NATIVE_QUANTIZED = {"u8": "u8", "i8": "s8"}  # plan dtype -> the native kernels' name


def native_quantize_args(a):
    """(scale, zero point, native dtype name) of a per-tensor quantize to u8/i8, or None."""
    dtype = NATIVE_QUANTIZED.get(str(a["dtype"]))
    if dtype is None or len(a["scale"]) != 1:
        return None
    return float(a["scale"][0]), int((tuple(a["zero_point"]) or (0,))[0]), dtype


@preparer("quantize")
def prepare_quantize(a, types, operands):
    args = native_quantize_args(a)
    if args is None:
        return None
    scale, zero_point, dtype = args

    def run(xs):
        x = xs[0]
        if not np.issubdtype(x.dtype, np.floating):
            return None
        threads = NATIVE_THREADS.get()
        if in_nhwc_memory(x, np.float32):  # an earlier 4-D step's result: quantized in place order
            return [_kernels.quantize(nhwc(x), scale, zero_point, dtype, False,
                                      threads).transpose(0, 3, 1, 2)]
        # An image batch goes into NHWC memory, returned as an NCHW view: the layout the int8
        # convolutions read, so they need not transpose it again (other ops take any strides).
        channels_last = x.ndim == 4
        q = _kernels.quantize(np.ascontiguousarray(x, dtype=np.float32), scale, zero_point, dtype,
                              channels_last, threads)
        # (reshaped: ascontiguousarray makes a 0-d x 1-d)
        return [q.transpose(0, 3, 1, 2) if channels_last else q.reshape(x.shape)]

    return run


@native_step("quantize")
def build_quantize(program, a, types, operands, runtime, results):
    """prepare_quantize's call as a program step, for float32 x: C-contiguous, in NHWC memory,
    or copied so first where it is another view."""
    args = native_quantize_args(a)
    x = operands[0]
    if args is None or x.dtype != np.float32:
        return None
    out = plan_empty_like(results[0])
    if in_nhwc_memory(x, np.float32) and nhwc(out).flags.c_contiguous:
        program.quantize(nhwc(x), *args, False, nhwc(out))
        return [out]
    if x.ndim != 4:
        x = contiguous_operand(program, x)
    if not x.flags.c_contiguous:
        return None
    channels_last = x.ndim == 4
    target = nhwc(out) if channels_last else out
    if not target.flags.c_contiguous:
        return None
    program.quantize(x, *args, channels_last, target)
    return [out]


@kernel("quantize")
def quantize(xs, a, types):
    return prepared_or(prepare_quantize, without_types(quantize_reference), xs, a, types)


def _native_dequantize(quant) -> tuple:
    """The native dequantize for these parameters: (function name, its arguments after q, the
    axis it needs last or None). Per-column scales and zero points become arrays here, once
    (converting BERT-base's 768 of each from the plan's tuples took 25 us on every run)."""
    if len(quant.scale) == 1:
        return "dequantize", (float(quant.scale[0]), int(quant.zero_point[0])), None
    return ("dequantize_channels", (np.asarray(quant.scale, np.float32),
                                    np.asarray(quant.zero_point, np.int32)), quant.axis)


def _dequantizes(q, axis) -> bool:
    return q.dtype in (np.uint8, np.int8) and q.ndim > 0 and axis in (None, q.ndim - 1)


@preparer("dequantize")
def prepare_dequantize(a, types, operands):
    """dequantize on the native kernels: per tensor, or per column (as int8 embedding rows come
    out of a lookup)."""
    name, args, axis = _native_dequantize(types[0].quant)
    call = getattr(_kernels, name)

    def run(xs):
        q = xs[0]
        if not _dequantizes(q, axis):
            return None
        return [call(np.ascontiguousarray(q), *args, NATIVE_THREADS.get())]
    return run


@native_step("dequantize")
def build_dequantize(program, a, types, operands, runtime, results):
    name, args, axis = _native_dequantize(types[0].quant)
    q = operands[0]
    if not _dequantizes(q, axis) or not q.flags.c_contiguous:
        return None
    out = plan_empty(q.shape, np.float32)
    getattr(program, name)(q, *args, out)
    return [out]


kernel("dequantize")(lambda xs, a, types: prepared_or(
    prepare_dequantize, lambda xs, a, types: dequantize_array(xs[0], types[0].quant),
    xs, a, types))


@preparer("qlinear")
def prepare_qlinear(a, types, operands):
    """qlinear on the native GEMM with its epilogue, for a symmetric int8 weight within the
    accumulator bound; None otherwise (the numpy reference, which is exact)."""
    layer = native_layer(types, operands, _packed_gemm)
    if layer is None:
        return None
    xq, wq, rq, w, packed, zp, b, with_residual = layer
    n, k = w.shape
    epilogue = native_epilogue(w, a, xq, wq, rq, with_residual)
    if epilogue is None:
        def run(xs):
            x = xs[0]
            if not x.size:
                return None
            acc = _kernels.qgemm_s32(np.ascontiguousarray(x.reshape(-1, k)), packed, zp, b,
                                     NATIVE_THREADS.get())
            return [finish_integer_op(acc.reshape(*x.shape[:-1], n), xq, wq, a, x.ndim - 1,
                                      xs[3], rq)]
        return run
    kernel = _kernels.qgemm_f32 if epilogue.f32 else _kernels.qgemm
    head = (packed, zp, b, *epilogue.args)  # then threads, out, residual and the tail
    tail = epilogue_tail(epilogue, a["activation"])

    def run(xs):
        x, residual = xs[0], xs[3]
        if not x.size:
            return None
        if residual is not None:
            residual = np.ascontiguousarray(residual.reshape(-1, n))
        out = kernel(np.ascontiguousarray(x.reshape(-1, k)), *head, NATIVE_THREADS.get(), None,
                     residual, *tail)
        return [out.reshape(*x.shape[:-1], n)]

    return run


def _constants(operands, runtime) -> list:
    """A program step's operands as a preparer sees them: RUNTIME for values computed at run
    time."""
    return [RUNTIME if is_runtime else operand for operand, is_runtime in zip(operands, runtime)]


@native_step("qlinear")
def build_qlinear(program, a, types, operands, runtime, results):
    """prepare_qlinear's native call as a program step, for C-contiguous x (and residual)."""
    layer = native_layer(types, _constants(operands, runtime), _packed_gemm)
    if layer is None:
        return None
    xq, wq, rq, w, packed, zp, b, with_residual = layer
    epilogue = native_epilogue(w, a, xq, wq, rq, with_residual)
    x, residual = operands[0], operands[3]
    if epilogue is None or not x.size or not x.flags.c_contiguous or (
            residual is not None and not residual.flags.c_contiguous):
        return None
    n, k = w.shape
    out = plan_empty(results[0].shape, results[0].dtype)
    method = program.qgemm_f32 if epilogue.f32 else program.qgemm
    method(x.reshape(-1, k), packed, zp, b, *epilogue.args, out.reshape(-1, n),
           None if residual is None else residual.reshape(-1, n),
           *epilogue_tail(epilogue, a["activation"]))
    return [out]


@kernel("qlinear")
def qlinear(xs, a, types):
    return prepared_or(prepare_qlinear, qlinear_reference, xs, a, types)


@preparer("qconv2d")
def prepare_qconv2d(a, types, operands):
    """qconv2d on the native NHWC kernels, like prepare_qlinear. A result goes back as an NCHW
    view of its NHWC memory, so a following convolution (or one fed by it) gets channels-last
    data without a copy; other ops take any strides."""
    layer = native_layer(types, operands, lambda w: _packed_conv(w, a["groups"]))
    if layer is None:
        return None
    xq, wq, rq, w, packed, zp, b, with_residual = layer
    geometry = (tuple(a["stride"]), tuple(a["padding"]), tuple(a["dilation"]))
    # The kernel adds a residual in its epilogue for one group (not depthwise): NHWC, like its
    # result, which a residual from an earlier int8 convolution already is.
    epilogue = native_epilogue(w, a, xq, wq, rq, with_residual) if (
        not with_residual or a["groups"] == 1) else None
    if epilogue is None:
        def run(xs):
            x = xs[0]
            if not x.size:
                return None
            acc = _kernels.qconv2d_s32(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), packed, zp,
                                       b, *geometry, NATIVE_THREADS.get())
            return [finish_integer_op(acc.transpose(0, 3, 1, 2), xq, wq, a, 1, xs[3], rq)]
        return run
    kernel = _kernels.qconv2d_f32 if epilogue.f32 else _kernels.qconv2d
    head = (packed, zp, b, *epilogue.args, *geometry)  # then threads, out, residual, the tail
    tail = epilogue_tail(epilogue, a["activation"])

    def run(xs):
        x, residual = xs[0], xs[3]
        if not x.size:
            return None
        if residual is not None:
            residual = np.ascontiguousarray(residual.transpose(0, 2, 3, 1))
        return [kernel(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), *head, NATIVE_THREADS.get(),
                       None, residual, *tail).transpose(0, 3, 1, 2)]

    return run


def requantized_conv_head(a, types, operands) -> tuple | None:
    """(packed, zero point, bias, multiplier, out zero point, lo, hi, out dtype, stride, padding,
    dilation): the native qconv2d's arguments for a layer with constant weights, a u8/i8 result
    clamped by its activation, and no residual; None for other layers."""
    layer = native_layer(types, operands, lambda w: _packed_conv(w, a["groups"]))
    if layer is None or layer.with_residual:
        return None
    epilogue = native_epilogue(layer.w, a, layer.xq, layer.wq, layer.rq, False)
    if epilogue is None or epilogue.f32 or epilogue.activation != "none":
        return None
    return (layer.packed, layer.zero_point, layer.bias, *epilogue.args, tuple(a["stride"]),
            tuple(a["padding"]), tuple(a["dilation"]))


def epilogue_tail(epilogue: NativeEpilogue, activation: str) -> tuple:
    """The last arguments of a native integer GEMM or convolution: the residual's terms, then
    an f32 result's activation, or a quantized result's float activation and output scale."""
    return epilogue.residual + ((activation,) if epilogue.f32 else
                                (epilogue.activation, epilogue.output_scale))


@native_step("qconv2d")
def build_qconv2d(program, a, types, operands, runtime, results):
    """prepare_qconv2d's native call as a program step, for x (and a residual) in NHWC memory."""
    layer = native_layer(types, _constants(operands, runtime), lambda w: _packed_conv(w, a["groups"]))
    if layer is None:
        return None
    xq, wq, rq, w, packed, zp, b, with_residual = layer
    epilogue = native_epilogue(w, a, xq, wq, rq, with_residual) if (
        not with_residual or a["groups"] == 1) else None
    x, residual = operands[0], operands[3]
    out = plan_empty_like(results[0])
    if epilogue is None or not x.size:
        return None
    if not nhwc(x).flags.c_contiguous or not nhwc(out).flags.c_contiguous or (
            residual is not None and not nhwc(residual).flags.c_contiguous):
        return None
    method = program.qconv2d_f32 if epilogue.f32 else program.qconv2d
    method(nhwc(x), packed, zp, b, *epilogue.args, tuple(a["stride"]), tuple(a["padding"]),
           tuple(a["dilation"]), nhwc(out), None if residual is None else nhwc(residual),
           *epilogue_tail(epilogue, a["activation"]))
    return [out]


@kernel("qconv2d")
def qconv2d(xs, a, types):
    return prepared_or(prepare_qconv2d, qconv2d_reference, xs, a, types)


@kernel("qmatmul")
def qmatmul(xs, a, types):
    return qmatmul_reference(xs, a, types)


_INT8 = (np.uint8, np.int8)


def _qattention_call(q, a, types) -> tuple:
    """The native qattention's arguments after q, k, v and the mask: zero points, score scale,
    value scale."""
    qq, kq, vq = (t.quant for t in types[:3])
    zero_points = tuple(int(t.zero_point[0]) for t in (qq, kq, vq))
    score_scale = qattention_score_scale(qq.scale[0], kq.scale[0], scale_of(a, q))
    return zero_points, float(score_scale), float(np.float32(vq.scale[0]))


@kernel("qattention")
def qattention(xs, a, types):
    operands = attention_operands(*xs, dtypes=_INT8)
    if operands is None:
        return qattention_reference(xs, a, types)
    q, k, v, mask = operands
    return _kernels.qattention(q, k, v, mask, *_qattention_call(q, a, types),
                               NATIVE_THREADS.get(), attention_result(q, v.shape[-1]))


@native_step("qattention")
def build_qattention(program, a, types, operands, runtime, results):
    """The native qattention as a program step; q, k or v in NHWC memory (a quantize step's
    4-D result) put in NCHW order first, by a step of their own."""
    operands = [channels_first_operand(program, x) if x is not None and x.dtype in _INT8 else x
                for x in operands]
    prepared = attention_operands_in_place(operands, dtypes=_INT8)
    if prepared is None:
        return None
    q, k, v, mask = prepared
    out = attention_result(q, v.shape[-1])
    program.qattention(q, k, v, mask, *_qattention_call(q, a, types), out)
    return [out]


@kernel("dynamic_qlinear")
def dynamic_qlinear(xs, a, types):
    x, w, bias = xs
    wq = types[1].quant
    packed = _packed_gemm(w) if _symmetric_int8(w, wq) and x.size and w.size else None
    if packed is None:
        return dynamic_qlinear_reference(xs, a, types)
    n, k = w.shape
    scale, zero_point = dynamic_input_range(x)
    q = quantize_array(x, _Quant((scale,), (zero_point,)), "u8")
    multiplier = _channel_vector(requant_multiplier(scale, wq.scale), n)
    out = _kernels.qgemm_f32(np.ascontiguousarray(q.reshape(-1, k)), packed, zero_point, None,
                             multiplier, NATIVE_THREADS.get()).reshape(*x.shape[:-1], n)
    return out if bias is None else out + bias
