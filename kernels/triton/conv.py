"""NHWC 2-D convolution as an implicit GEMM: int8 (exact, nimbus.compiler.ops.quant.qconv2d) and
fp16/bf16/fp32 with a fused epilogue (nimbus.compiler.ops.fused.fused_conv2d), plus a direct
depthwise kernel.

A convolution of x [N, H, W, C] with weights [O, C / groups, KH, KW] is, for each group, a matrix
product whose left operand is never built (no im2col buffer):

    out[m, o] = sum_k A[m, k] * B[k, o]      m = (n, oh, ow): M = N * OH * OW output pixels
                                             k = (kh, kw, c): K = KH * KW * C / groups taps
    A[m, k] = x[n, oh * stride_h - pad_top + kh * dilation_h, ow * stride_w - pad_left
                + kw * dilation_w, group * C / groups + c]   (zero real value outside the image)

Each program owns a BLOCK_M x BLOCK_N tile of the output of one group (the group is the third
grid axis) and walks K in BLOCK_K steps: `_window_tile` turns the tile's rows and K indices into
offsets into x and a mask of the taps inside the image, the weights are read from a packed
[O, K] matrix (K contiguous), and `tl.dot` accumulates. When C / groups is a multiple of
BLOCK_K, every K step lies inside one tap, so its offsets are one pixel address per row plus
BLOCK_K contiguous channels (vectorized loads, no per-element division).

int8: tl.dot multiplies int8 by int8 into int32, so uint8 activations are shifted to int8
(x - 128, a flip of the top bit) and the activation zero point is folded in once, exactly:

    acc = sum_k (x - a_zp) * w = sum_k (x - shift) * w - (a_zp - shift) * sum_k w

with shift = 128 for uint8 and 0 for int8, and sum_k w precomputed per output channel by
`pack_conv_weights`. A tap in the padding must be a real zero, i.e. x = a_zp: the kernel loads
it as a_zp, so that its (a_zp - shift) * w cancels against the correction. The int32 epilogue is
the reference's: + bias, then f32(acc) * scale[o] plus an optional quantized residual's
f32(r - r_zp) * R, either requantized per output channel (`_common.round_and_clamp`, clamp
bounds carrying a fused ReLU/ReLU6) or followed by ReLU/ReLU6 as float32; or the raw int32
accumulators. Integer kernels launch with `INTEGER_LAUNCH`, so that no multiply-add
is fused and the float32 rounding matches the reference bit for bit.

Float: fp32 accumulation, then act(acc + bias + residual) in fp32, stored in the input dtype.

Depthwise (groups == C == O, one weight per channel and tap): no reduction across channels, so
a GEMM would waste the tensor cores; each program of `depthwise_*_kernel` owns BLOCK_P output
pixels x BLOCK_C channels and loops over the KH * KW taps with elementwise multiply-adds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import triton
import triton.language as tl

from ._common import (
    ACTIVATION_CODES,
    FLOAT_DTYPES,
    INTEGER_LAUNCH,
    activate,
    activation_code,
    dot_precision,
    round_and_clamp,
)
from .autotune import config, register_space, shape_key, tuned
from .bench import BenchCase, mismatches, relative_error

# Largest window depth K whose sums of (x - a_zp) * w, |x - a_zp| <= 255 and |w| <= 128, fit int32.
MAX_WINDOW_DEPTH = (2**31 - 1) // (255 * 128)
# Offsets are int32: every tensor must have fewer elements.
MAX_ELEMENTS = 2**31 - 1

# What the integer kernels produce (RESULT constexpr).
REQUANTIZED = tl.constexpr(0)  # clamp(rint(f32(acc) * multiplier[o]) + zero point, lo, hi)
DEQUANTIZED = tl.constexpr(1)  # activation(f32(acc) * scale[o]) as float32
ACCUMULATORS = tl.constexpr(2)  # acc as int32

QUANTIZED_RESULTS = {"u8": torch.uint8, "s8": torch.int8}

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages); the first one is what the interpreter runs.
QCONV_SPACE = register_space("qconv2d", [
    config(4, 3, BLOCK_M=64, BLOCK_N=64, BLOCK_K=64),
    config(4, 4, BLOCK_M=128, BLOCK_N=64, BLOCK_K=64),
    config(4, 4, BLOCK_M=64, BLOCK_N=128, BLOCK_K=64),
    config(8, 3, BLOCK_M=128, BLOCK_N=128, BLOCK_K=64),
    config(8, 3, BLOCK_M=128, BLOCK_N=256, BLOCK_K=64),
])
CONV_SPACE = register_space("conv2d", [
    config(4, 3, BLOCK_M=64, BLOCK_N=32, BLOCK_K=32),
    config(4, 4, BLOCK_M=128, BLOCK_N=64, BLOCK_K=32),
    config(4, 4, BLOCK_M=64, BLOCK_N=128, BLOCK_K=32),
    config(8, 3, BLOCK_M=128, BLOCK_N=128, BLOCK_K=32),
    config(8, 3, BLOCK_M=128, BLOCK_N=128, BLOCK_K=64),
    config(8, 3, BLOCK_M=128, BLOCK_N=256, BLOCK_K=64),
])
# (BLOCK_P output pixels, BLOCK_C channels, num_warps, num_stages) of the depthwise kernels.
DEPTHWISE_SPACE = [
    config(4, 2, BLOCK_P=32, BLOCK_C=32),
    config(4, 2, BLOCK_P=64, BLOCK_C=32),
    config(4, 2, BLOCK_P=128, BLOCK_C=32),
    config(4, 2, BLOCK_P=64, BLOCK_C=64),
    config(8, 2, BLOCK_P=128, BLOCK_C=64),
    config(4, 2, BLOCK_P=32, BLOCK_C=128),
]
register_space("qconv2d_depthwise", DEPTHWISE_SPACE)
register_space("conv2d_depthwise", DEPTHWISE_SPACE)


# ---- index arithmetic shared by every kernel --------------------------------------------------
@triton.jit
def _output_pixels(rows, OH, OW, H, W, C, stride_h, stride_w, pad_top, pad_left):
    """Rows m = (n, oh, ow) -> (offset of image n in x, top row and left column of the window)."""
    ow = rows % OW
    oh = (rows // OW) % OH
    image = rows // (OW * OH)
    return image * (H * W * C), oh * stride_h - pad_top, ow * stride_w - pad_left


@triton.jit
def _tap_pixels(image_offset, top, left, row_mask, kh, kw, H, W, C, dilation_h, dilation_w):
    """Offset in x of the pixel under tap (kh, kw) of each row's window, and whether it is inside
    the image (a row outside M counts as outside)."""
    ih = top + kh * dilation_h
    iw = left + kw * dilation_w
    inside = row_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    return image_offset + (ih * W + iw) * C, inside


@triton.jit
def _window_tile(k_start, image_offset, top, left, row_mask, group_offset, H, W, C,
                 group_channels, KW, K, dilation_h, dilation_w,
                 BLOCK_K: tl.constexpr, TAP_ALIGNED: tl.constexpr):
    """Offsets into x of the A tile [rows, k_start:k_start + BLOCK_K] and the mask of its taps
    that lie inside the image (and inside M and K); the rest are the zero real value.

    k = (kh * KW + kw) * group_channels + c. With TAP_ALIGNED (group_channels % BLOCK_K == 0)
    the whole tile shares one tap: one pixel per row plus contiguous channels.
    """
    if TAP_ALIGNED:
        tap = k_start // group_channels
        pixel, inside = _tap_pixels(image_offset, top, left, row_mask, tap // KW, tap % KW,
                                    H, W, C, dilation_h, dilation_w)
        channels = k_start % group_channels + tl.arange(0, BLOCK_K)
        channels = tl.max_contiguous(tl.multiple_of(channels, BLOCK_K), BLOCK_K)
        offsets = (pixel + group_offset)[:, None] + channels[None, :]
        mask = inside[:, None]
    else:
        ks = k_start + tl.arange(0, BLOCK_K)
        tap = ks // group_channels
        channels = ks % group_channels
        pixel, inside = _tap_pixels(image_offset[:, None], top[:, None], left[:, None],
                                    row_mask[:, None], (tap // KW)[None, :], (tap % KW)[None, :],
                                    H, W, C, dilation_h, dilation_w)
        offsets = pixel + (group_offset + channels)[None, :]
        mask = inside & (ks < K)[None, :]
    return offsets, mask


@triton.jit
def _gemm_tile(w_ptr, M, H, W, C, OH, OW, K, group_out_channels, stride_h, stride_w, pad_top,
               pad_left, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """What a GEMM program owns: its group, its BLOCK_M rows (output pixels) with their windows,
    and its BLOCK_N output channels of that group with the rows of w they read. The arguments are
    the GEMM kernels' arguments of the same names.

    Returns (group, rows, row_mask, image_offset, top, left, channels, column_mask,
    weight_columns): `_output_pixels` of the rows, channels = group * group_out_channels + the
    program's group columns, and weight_columns [1, BLOCK_N] pointers to those channels' K taps.
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    group = tl.program_id(2)

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    image_offset, top, left = _output_pixels(rows, OH, OW, H, W, C, stride_h, stride_w,
                                             pad_top, pad_left)
    group_columns = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    column_mask = group_columns < group_out_channels
    channels = group * group_out_channels + group_columns
    weight_columns = w_ptr + channels[None, :] * K
    return group, rows, row_mask, image_offset, top, left, channels, column_mask, weight_columns


@triton.jit
def _gemm_operands(x_ptr, weight_columns, k_start, image_offset, top, left, row_mask, group,
                   column_mask, H, W, C, group_channels, KW, K, dilation_h, dilation_w,
                   padding_value, BLOCK_K: tl.constexpr, TAP_ALIGNED: tl.constexpr):
    """The A tile [rows, k_start:k_start + BLOCK_K] of x (taps outside the image read as
    padding_value) and the B tile [k_start:k_start + BLOCK_K, channels] of the packed weights
    (0 past K or past the group's channels). weight_columns, image_offset, top, left, row_mask,
    group and column_mask come from `_gemm_tile`; the other arguments are the kernels'."""
    offsets, inside = _window_tile(k_start, image_offset, top, left, row_mask,
                                   group * group_channels, H, W, C, group_channels, KW, K,
                                   dilation_h, dilation_w, BLOCK_K, TAP_ALIGNED)
    a = tl.load(x_ptr + offsets, mask=inside, other=padding_value)
    ks = k_start + tl.arange(0, BLOCK_K)
    b = tl.load(weight_columns + ks[:, None], mask=(ks[:, None] < K) & column_mask[None, :],
                other=0)
    return a, b


@triton.jit
def _depthwise_tile(M, H, W, C, OH, OW, stride_h, stride_w, pad_top, pad_left,
                    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """What a depthwise program owns: BLOCK_P output pixels with their windows and BLOCK_C
    channels (arguments: the depthwise kernels' of the same names). Returns (pixels, pixel_mask,
    image_offset, top, left, channels, channel_mask)."""
    pixels = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pixel_mask = pixels < M
    image_offset, top, left = _output_pixels(pixels, OH, OW, H, W, C, stride_h, stride_w,
                                             pad_top, pad_left)
    channels = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    channel_mask = channels < C
    return pixels, pixel_mask, image_offset, top, left, channels, channel_mask


@triton.jit
def _depthwise_tap(x_ptr, w_ptr, tap, image_offset, top, left, pixel_mask, channels,
                   channel_mask, H, W, C, KW, dilation_h, dilation_w, padding_value):
    """x under tap `tap` of each pixel's window [pixels, channels] (padding_value outside the
    image) and the tap's weights [channels] (0 past C); tap = kh * KW + kw, the rest as in
    `_depthwise_tile` and the depthwise kernels."""
    pixel, inside = _tap_pixels(image_offset, top, left, pixel_mask, tap // KW, tap % KW,
                                H, W, C, dilation_h, dilation_w)
    x = tl.load(x_ptr + pixel[:, None] + channels[None, :],
                mask=inside[:, None] & channel_mask[None, :], other=padding_value)
    w = tl.load(w_ptr + tap * C + channels, mask=channel_mask, other=0)
    return x, w


@triton.jit
def _store_tile(out_ptr, result, rows, row_mask, channels, channel_mask, O):
    """Store result [rows, channels] into the NHWC output (O channels), in out_ptr's dtype."""
    tl.store(out_ptr + rows[:, None] * O + channels[None, :],
             result.to(out_ptr.dtype.element_ty),
             mask=row_mask[:, None] & channel_mask[None, :])


# ---- epilogues ----------------------------------------------------------------------------------
@triton.jit
def _finish_integer(acc, rows, row_mask, channels, channel_mask, O, bias_ptr, scale_ptr,
                    residual_ptr, out_zero_point, lo, hi, residual_zero_point, residual_scale,
                    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, RESULT: tl.constexpr,
                    ACTIVATION: tl.constexpr):
    """int32 accumulators [rows, channels] -> the integer op's result, as the reference does it:
    f32(acc) * scale[o], plus f32(r - r_zp) * residual_scale for a quantized residual, then
    rounded and clamped (REQUANTIZED) or activated (DEQUANTIZED)."""
    if HAS_BIAS:
        acc += tl.load(bias_ptr + channels, mask=channel_mask, other=0)[None, :]
    # One return at the end: Triton 3.6 also compiles the statements after an `if` that
    # returned, and refuses a function whose returns differ in type.
    if RESULT == ACCUMULATORS:
        result = acc
    else:
        scale = tl.load(scale_ptr + channels, mask=channel_mask, other=0.0)
        scaled = acc.to(tl.float32) * scale[None, :]
        if HAS_RESIDUAL:
            r = tl.load(residual_ptr + rows[:, None] * O + channels[None, :],
                        mask=row_mask[:, None] & channel_mask[None, :], other=0)
            scaled += (r.to(tl.int32) - residual_zero_point).to(tl.float32) * residual_scale
        if RESULT == REQUANTIZED:
            result = round_and_clamp(scaled, out_zero_point, lo, hi)
        else:
            result = activate(scaled, ACTIVATION)
    return result


@triton.jit
def _finish_float(acc, rows, row_mask, channels, channel_mask, O, bias_ptr, residual_ptr,
                  HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACTIVATION: tl.constexpr):
    """act(acc + bias + residual) in float32, like fused_conv2d."""
    if HAS_BIAS:
        acc += tl.load(bias_ptr + channels, mask=channel_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_RESIDUAL:
        offsets = rows[:, None] * O + channels[None, :]
        mask = row_mask[:, None] & channel_mask[None, :]
        acc += tl.load(residual_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    return activate(acc, ACTIVATION)


# ---- implicit-GEMM kernels ----------------------------------------------------------------------
@triton.jit
def qconv2d_kernel(
    x_ptr,              # [N, H, W, C] uint8 or int8 activations, contiguous (NHWC)
    w_ptr,              # [O, K] int8 packed weights, K = KH * KW * C / groups in (kh, kw, c) order
    weight_sums_ptr,    # [O] int32: sum over K of each output channel's weights
    bias_ptr,           # [O] int32 bias (not read without HAS_BIAS)
    scale_ptr,          # [O] float32 requantization multiplier or dequantization scale
    residual_ptr,       # [N, OH, OW, O] uint8/int8 quantized residual (read only if HAS_RESIDUAL)
    out_ptr,            # [N, OH, OW, O] result: uint8/int8, float32 or int32 (RESULT)
    a_zero_point,       # activation zero point (the value of padding)
    out_zero_point,     # result zero point (REQUANTIZED)
    lo, hi,             # result clamp bounds, carrying a fused ReLU/ReLU6 (REQUANTIZED)
    residual_zero_point,  # the residual's zero point
    residual_scale,     # float32 s_r / s_out (REQUANTIZED) or s_r (DEQUANTIZED)
    M,                  # N * OH * OW output pixels
    H, W, C,            # input height, width and channels
    OH, OW, O,          # output height, width and channels
    KW,                 # kernel width (the height is implied by K)
    K,                  # window depth KH * KW * C / groups
    group_channels,     # C / groups
    group_out_channels,  # O / groups
    stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w,
    A_UNSIGNED: tl.constexpr,   # activations are uint8 (shifted to int8 for tl.dot)
    HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    RESULT: tl.constexpr,       # REQUANTIZED, DEQUANTIZED or ACCUMULATORS
    ACTIVATION: tl.constexpr,   # ACTIVATION_CODES entry applied to a DEQUANTIZED result
    TAP_ALIGNED: tl.constexpr,  # group_channels % BLOCK_K == 0
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    group, rows, row_mask, image_offset, top, left, channels, column_mask, weight_columns = \
        _gemm_tile(w_ptr, M, H, W, C, OH, OW, K, group_out_channels, stride_h, stride_w,
                   pad_top, pad_left, BLOCK_M, BLOCK_N)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k_start in range(0, K, BLOCK_K):
        # Padding reads as a_zp: after the zero-point correction below it adds exactly 0.
        a, b = _gemm_operands(x_ptr, weight_columns, k_start, image_offset, top, left, row_mask,
                              group, column_mask, H, W, C, group_channels, KW, K, dilation_h,
                              dilation_w, a_zero_point, BLOCK_K, TAP_ALIGNED)
        if A_UNSIGNED:
            a = (a ^ 0x80).to(tl.int8, bitcast=True)  # x - 128
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)

    weight_sums = tl.load(weight_sums_ptr + channels, mask=column_mask, other=0)
    if A_UNSIGNED:
        acc -= (a_zero_point - 128) * weight_sums[None, :]
    else:
        acc -= a_zero_point * weight_sums[None, :]
    result = _finish_integer(acc, rows, row_mask, channels, column_mask, O, bias_ptr, scale_ptr,
                             residual_ptr, out_zero_point, lo, hi, residual_zero_point,
                             residual_scale, HAS_BIAS, HAS_RESIDUAL, RESULT, ACTIVATION)
    _store_tile(out_ptr, result, rows, row_mask, channels, column_mask, O)


@triton.jit
def conv2d_kernel(
    x_ptr,              # [N, H, W, C] fp16/bf16/fp32 activations, contiguous (NHWC)
    w_ptr,              # [O, K] packed weights of x's dtype, K = KH * KW * C / groups, (kh, kw, c)
    bias_ptr,           # [O] bias (not read without HAS_BIAS)
    residual_ptr,       # [N, OH, OW, O] residual (not read without HAS_RESIDUAL)
    out_ptr,            # [N, OH, OW, O] result, x's dtype
    M,                  # N * OH * OW output pixels
    H, W, C,            # input height, width and channels
    OH, OW, O,          # output height, width and channels
    KW,                 # kernel width (the height is implied by K)
    K,                  # window depth KH * KW * C / groups
    group_channels,     # C / groups
    group_out_channels,  # O / groups
    stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w,
    HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    ACTIVATION: tl.constexpr,     # ACTIVATION_CODES entry
    DOT_PRECISION: tl.constexpr,  # tl.dot input precision (_common.dot_precision)
    TAP_ALIGNED: tl.constexpr,    # group_channels % BLOCK_K == 0
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    group, rows, row_mask, image_offset, top, left, channels, column_mask, weight_columns = \
        _gemm_tile(w_ptr, M, H, W, C, OH, OW, K, group_out_channels, stride_h, stride_w,
                   pad_top, pad_left, BLOCK_M, BLOCK_N)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k_start in range(0, K, BLOCK_K):
        a, b = _gemm_operands(x_ptr, weight_columns, k_start, image_offset, top, left, row_mask,
                              group, column_mask, H, W, C, group_channels, KW, K, dilation_h,
                              dilation_w, 0.0, BLOCK_K, TAP_ALIGNED)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)

    result = _finish_float(acc, rows, row_mask, channels, column_mask, O, bias_ptr, residual_ptr,
                           HAS_BIAS, HAS_RESIDUAL, ACTIVATION)
    _store_tile(out_ptr, result, rows, row_mask, channels, column_mask, O)


# ---- depthwise kernels --------------------------------------------------------------------------
@triton.jit
def depthwise_qconv2d_kernel(
    x_ptr,              # [N, H, W, C] uint8 or int8 activations, contiguous (NHWC)
    w_ptr,              # [KH * KW, C] int8 packed depthwise weights (channels contiguous)
    bias_ptr,           # [C] int32 bias (not read without HAS_BIAS)
    scale_ptr,          # [C] float32 requantization multiplier or dequantization scale
    residual_ptr,       # [N, OH, OW, C] uint8/int8 quantized residual (read only if HAS_RESIDUAL)
    out_ptr,            # [N, OH, OW, C] result: uint8/int8, float32 or int32 (RESULT)
    a_zero_point,       # activation zero point (the value of padding)
    out_zero_point,     # result zero point (REQUANTIZED)
    lo, hi,             # result clamp bounds, carrying a fused ReLU/ReLU6 (REQUANTIZED)
    residual_zero_point,  # the residual's zero point
    residual_scale,     # float32 s_r / s_out (REQUANTIZED) or s_r (DEQUANTIZED)
    M,                  # N * OH * OW output pixels
    H, W, C,            # input height, width and channels (= output channels)
    OH, OW,             # output height and width
    KH, KW,             # kernel height and width
    stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w,
    HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    RESULT: tl.constexpr,       # REQUANTIZED, DEQUANTIZED or ACCUMULATORS
    ACTIVATION: tl.constexpr,   # ACTIVATION_CODES entry applied to a DEQUANTIZED result
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pixels, pixel_mask, image_offset, top, left, channels, channel_mask = _depthwise_tile(
        M, H, W, C, OH, OW, stride_h, stride_w, pad_top, pad_left, BLOCK_P, BLOCK_C)

    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.int32)
    for tap in range(KH * KW):
        # Padding reads as a_zp, a real zero.
        x, w = _depthwise_tap(x_ptr, w_ptr, tap, image_offset, top, left, pixel_mask, channels,
                              channel_mask, H, W, C, KW, dilation_h, dilation_w, a_zero_point)
        acc += (x.to(tl.int32) - a_zero_point) * w.to(tl.int32)[None, :]

    result = _finish_integer(acc, pixels, pixel_mask, channels, channel_mask, C, bias_ptr,
                             scale_ptr, residual_ptr, out_zero_point, lo, hi, residual_zero_point,
                             residual_scale, HAS_BIAS, HAS_RESIDUAL, RESULT, ACTIVATION)
    _store_tile(out_ptr, result, pixels, pixel_mask, channels, channel_mask, C)


@triton.jit
def depthwise_conv2d_kernel(
    x_ptr,              # [N, H, W, C] fp16/bf16/fp32 activations, contiguous (NHWC)
    w_ptr,              # [KH * KW, C] packed depthwise weights of x's dtype (channels contiguous)
    bias_ptr,           # [C] bias (not read without HAS_BIAS)
    residual_ptr,       # [N, OH, OW, C] residual (not read without HAS_RESIDUAL)
    out_ptr,            # [N, OH, OW, C] result, x's dtype
    M,                  # N * OH * OW output pixels
    H, W, C,            # input height, width and channels (= output channels)
    OH, OW,             # output height and width
    KH, KW,             # kernel height and width
    stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w,
    HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    ACTIVATION: tl.constexpr,   # ACTIVATION_CODES entry
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pixels, pixel_mask, image_offset, top, left, channels, channel_mask = _depthwise_tile(
        M, H, W, C, OH, OW, stride_h, stride_w, pad_top, pad_left, BLOCK_P, BLOCK_C)

    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for tap in range(KH * KW):
        x, w = _depthwise_tap(x_ptr, w_ptr, tap, image_offset, top, left, pixel_mask, channels,
                              channel_mask, H, W, C, KW, dilation_h, dilation_w, 0.0)
        acc += x.to(tl.float32) * w.to(tl.float32)[None, :]

    result = _finish_float(acc, pixels, pixel_mask, channels, channel_mask, C, bias_ptr,
                           residual_ptr, HAS_BIAS, HAS_RESIDUAL, ACTIVATION)
    _store_tile(out_ptr, result, pixels, pixel_mask, channels, channel_mask, C)


# ---- weights ------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class PackedConvWeights:
    """Convolution weights laid out once for the kernels.

    GEMM layout (every conv but depthwise): `weights` [O, K], K = KH * KW * C / groups in
    (kh, kw, c) order with K contiguous, i.e. OIHW permuted to OHWI; output channel o belongs to
    group o // (O / groups). Depthwise layout (groups == O == C, one input channel per group):
    `weights` [KH * KW, O], channels contiguous. `weight_sums` [O] int32 = sum over K of each
    output channel's int8 weights (the zero-point fold of the GEMM kernel), None otherwise.
    """

    weights: torch.Tensor
    weight_sums: torch.Tensor | None
    out_channels: int
    group_channels: int          # input channels per group, C / groups
    kernel: tuple[int, int]      # (KH, KW)
    groups: int

    @property
    def in_channels(self) -> int:
        return self.group_channels * self.groups

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.out_channels and self.group_channels == 1

    @property
    def window_depth(self) -> int:
        return self.kernel[0] * self.kernel[1] * self.group_channels

    @property
    def dtype(self) -> torch.dtype:
        return self.weights.dtype


def pack_conv_weights(w: torch.Tensor, groups: int = 1) -> PackedConvWeights:
    """Lay out OIHW weights w [O, C / groups, KH, KW] (int8, fp16, bf16 or fp32) for the kernels,
    on w's device (see PackedConvWeights for the layouts)."""
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"w must be a torch.Tensor, got {type(w).__name__}")
    if w.dtype not in (torch.int8, *FLOAT_DTYPES):
        raise ValueError(f"w must be int8, float16, bfloat16 or float32, got {w.dtype}")
    if w.dim() != 4:
        raise ValueError(f"w must be 4-D [O, C / groups, KH, KW], got shape {tuple(w.shape)}")
    out_channels, group_channels, kh, kw = w.shape
    if min(w.shape) < 1:
        raise ValueError(f"w must have at least one output channel, input channel and tap, "
                         f"got shape {tuple(w.shape)}")
    if not isinstance(groups, int) or groups < 1 or out_channels % groups:
        raise ValueError(f"groups must be a positive divisor of the {out_channels} output "
                         f"channels, got {groups}")
    depth = kh * kw * group_channels
    if w.dtype == torch.int8 and depth > MAX_WINDOW_DEPTH:
        raise ValueError(f"window depth KH * KW * C / groups = {depth} is larger than "
                         f"{MAX_WINDOW_DEPTH}: int32 accumulators could overflow")
    if groups > 1 and groups == out_channels and group_channels == 1:  # depthwise
        return PackedConvWeights(w.reshape(out_channels, kh * kw).t().contiguous(), None,
                                 out_channels, group_channels, (kh, kw), groups)
    weights = w.permute(0, 2, 3, 1).reshape(out_channels, depth).contiguous()
    sums = weights.to(torch.int32).sum(dim=1, dtype=torch.int32) if w.dtype == torch.int8 else None
    return PackedConvWeights(weights, sums, out_channels, group_channels, (kh, kw), groups)


# ---- launchers ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Geometry:
    """Sizes of one convolution call, validated."""

    batch: int
    height: int
    width: int
    out_height: int
    out_width: int
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]
    dilation: tuple[int, int]

    @property
    def rows(self) -> int:
        return self.batch * self.out_height * self.out_width

    def arguments(self) -> tuple[int, ...]:
        """stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, as the kernels take them."""
        return (*self.stride, self.padding[0], self.padding[1], *self.dilation)


def _int_tuple(name: str, values, length: int, minimum: int) -> tuple[int, ...]:
    values = tuple(values)
    if len(values) != length or not all(isinstance(v, int) and v >= minimum for v in values):
        raise ValueError(f"{name} must be {length} integers >= {minimum}, got {list(values)}")
    return values


def _check_activations(x, packed: PackedConvWeights, dtypes, kind: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(packed, PackedConvWeights):
        raise TypeError(f"packed must come from pack_conv_weights, got {type(packed).__name__}")
    if x.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise ValueError(f"x of the {kind} convolution must be {names}, got {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D NHWC [N, H, W, C], got shape {tuple(x.shape)}")
    if not x.is_contiguous():
        raise ValueError("x must be contiguous NHWC (for a channels_last NCHW tensor pass "
                         "x.permute(0, 2, 3, 1))")
    if x.shape[3] != packed.in_channels:
        raise ValueError(f"x has {x.shape[3]} channels; the weights expect {packed.in_channels}")
    if x.device != packed.weights.device:
        raise ValueError(f"x is on {x.device} but the packed weights are on "
                         f"{packed.weights.device}")
    if x.numel() > MAX_ELEMENTS:
        raise ValueError(f"x has {x.numel()} elements, more than the {MAX_ELEMENTS} of int32 "
                         f"offsets")


def _geometry(x: torch.Tensor, packed: PackedConvWeights, stride, padding,
              dilation) -> _Geometry:
    stride = _int_tuple("stride", stride, 2, 1)
    padding = _int_tuple("padding", padding, 4, 0)
    dilation = _int_tuple("dilation", dilation, 2, 1)
    batch, height, width, _ = x.shape
    out_sizes = []
    for axis, size in enumerate((height, width)):
        span = dilation[axis] * (packed.kernel[axis] - 1) + 1
        padded = size + padding[axis] + padding[axis + 2]
        if padded < span:
            raise ValueError(f"the dilated window ({span}) is larger than the padded input "
                             f"({padded}) along {('height', 'width')[axis]}")
        out_sizes.append((padded - span) // stride[axis] + 1)
    geometry = _Geometry(batch, height, width, *out_sizes, stride, padding, dilation)
    if geometry.rows * packed.out_channels > MAX_ELEMENTS:
        raise ValueError(f"the result has more than the {MAX_ELEMENTS} elements of int32 offsets")
    return geometry


def _vector(name: str, values, dtype: torch.dtype, length: int, device) -> torch.Tensor:
    """A per-output-channel vector (torch tensor or numpy array) on the kernels' device."""
    if not isinstance(values, torch.Tensor):
        try:
            values = torch.from_numpy(values)
        except TypeError:
            raise TypeError(f"{name} must be a torch.Tensor or numpy array, got "
                            f"{type(values).__name__}") from None
    if values.dtype != dtype:
        raise ValueError(f"{name} must be {dtype}, got {values.dtype}")
    if tuple(values.shape) != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {tuple(values.shape)}")
    return values.to(device).contiguous()


def _int_range(dtype: torch.dtype) -> tuple[int, int]:
    info = torch.iinfo(dtype)
    return info.min, info.max


def _check_integer(name: str, value, lo: int, hi: int) -> None:
    if not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")


def _conv_key(x: torch.Tensor, packed: PackedConvWeights, geometry: _Geometry,
              variant: str) -> str:
    """Tuning key: the geometry, x's dtype and the epilogue (which changes the best tile)."""
    shape = shape_key(*x.shape, packed.out_channels, *packed.kernel, packed.groups,
                      *geometry.stride, *geometry.padding, *geometry.dilation)
    return f"{shape}:{str(x.dtype).removeprefix('torch.')}:{variant}"


def _launch_conv(name: str, key: str, x: torch.Tensor, packed: PackedConvWeights,
                 geometry: _Geometry, pointers: tuple, scalars: tuple, flags: dict,
                 depthwise_kernel, gemm_kernel, gemm_pointers: tuple = (),
                 gemm_flags: dict | None = None, launch_flags: dict | None = None) -> None:
    """Tune (as `name`, or `name`_depthwise) and launch the depthwise or the implicit-GEMM kernel.

    Both kernels take x, the packed weights, then `pointers` (the epilogue's operands and the
    result), `scalars`, the kernel's sizes, the geometry and the `flags`; the GEMM kernel also
    takes `gemm_pointers` after the weights and `gemm_flags`. `launch_flags` go to every launch.
    """
    gemm_flags, launch_flags = gemm_flags or {}, launch_flags or {}
    channels = packed.out_channels
    if packed.depthwise:
        def launch(cfg):
            options = cfg.launch_options()
            grid = (triton.cdiv(geometry.rows, options["BLOCK_P"]),
                    triton.cdiv(channels, options["BLOCK_C"]))
            depthwise_kernel[grid](
                x, packed.weights, *pointers, *scalars, *packed.kernel, *geometry.arguments(),
                **flags, **options, **launch_flags)

        launch(tuned(f"{name}_depthwise", key, x, launch))
        return

    group_out_channels = channels // packed.groups

    def launch(cfg):
        options = cfg.launch_options()
        grid = (triton.cdiv(geometry.rows, options["BLOCK_M"]),
                triton.cdiv(group_out_channels, options["BLOCK_N"]), packed.groups)
        gemm_kernel[grid](
            x, packed.weights, *gemm_pointers, *pointers, *scalars, channels, packed.kernel[1],
            packed.window_depth, packed.group_channels, group_out_channels,
            *geometry.arguments(), **flags, **gemm_flags,
            TAP_ALIGNED=packed.group_channels % options["BLOCK_K"] == 0, **options,
            **launch_flags)

    launch(tuned(name, key, x, launch))


@dataclass(frozen=True)
class QuantizedResidual:
    """A quantized residual added in the integer epilogue: f32(r - zero_point) * scale, with r
    uint8/int8 NHWC of the result's shape and scale = s_r / s_out (s_r for a float32 result)."""

    tensor: torch.Tensor
    zero_point: int = 0
    scale: float = 0.0


def _integer_conv(x, packed, a_zero_point, bias, scale, out_dtype, out_zero_point, lo, hi, result,
                  activation, stride, padding, dilation,
                  residual: QuantizedResidual | None = None) -> torch.Tensor:
    """Validate the integer operands and launch the GEMM or depthwise kernel (result `out_dtype`)."""
    _check_activations(x, packed, (torch.uint8, torch.int8), "integer")
    if packed.dtype != torch.int8:
        raise ValueError(f"the integer convolution needs int8 packed weights, got {packed.dtype}")
    _check_integer("a_zero_point", a_zero_point, *_int_range(x.dtype))
    geometry = _geometry(x, packed, stride, padding, dilation)
    channels = packed.out_channels
    bias = None if bias is None else _vector("bias", bias, torch.int32, channels, x.device)
    scale = None if scale is None else _vector("scale", scale, torch.float32, channels, x.device)
    out_shape = (geometry.batch, geometry.out_height, geometry.out_width, channels)
    out = torch.empty(out_shape, dtype=out_dtype, device=x.device)
    if residual is not None:
        r = residual.tensor
        if not isinstance(r, torch.Tensor) or r.dtype not in (torch.uint8, torch.int8):
            raise ValueError("the residual must be a uint8 or int8 tensor")
        if tuple(r.shape) != out_shape or not r.is_contiguous() or r.device != x.device:
            raise ValueError(f"the residual must be contiguous on {x.device} with the result's "
                             f"shape {out_shape}, got {tuple(r.shape)} on {r.device}")
        _check_integer("residual zero point", residual.zero_point, *_int_range(r.dtype))
    # Unused pointers still need a tensor: the result stands in.
    bias_arg = out if bias is None else bias
    scale_arg = out if scale is None else scale
    residual_arg = out if residual is None else residual.tensor
    scalars = (a_zero_point, out_zero_point, lo, hi,
               0 if residual is None else residual.zero_point,
               0.0 if residual is None else float(residual.scale), geometry.rows, geometry.height,
               geometry.width, x.shape[3], geometry.out_height, geometry.out_width)
    flags = {"HAS_BIAS": bias is not None, "HAS_RESIDUAL": residual is not None, "RESULT": result,
             "ACTIVATION": ACTIVATION_CODES[activation]}
    key = _conv_key(x, packed, geometry, f"{('requant', 'f32', 's32')[result]}"
                    f"{'+bias' if bias is not None else ''}"
                    f"{'+residual' if residual is not None else ''}+{activation}")

    _launch_conv("qconv2d", key, x, packed, geometry, (bias_arg, scale_arg, residual_arg, out),
                 scalars, flags,
                 depthwise_qconv2d_kernel, qconv2d_kernel, gemm_pointers=(packed.weight_sums,),
                 gemm_flags={"A_UNSIGNED": x.dtype == torch.uint8}, launch_flags=INTEGER_LAUNCH)
    return out


def qconv2d(x: torch.Tensor, packed: PackedConvWeights, a_zero_point: int, bias, multiplier,
            out_zero_point: int, lo: int, hi: int, out_dtype: str, *, stride=(1, 1),
            padding=(0, 0, 0, 0), dilation=(1, 1),
            residual: QuantizedResidual | None = None) -> torch.Tensor:
    """Requantized int8 convolution: clamp(rint_f32(f32(acc) * multiplier[o] [+ residual term])
    + out_zero_point, lo, hi) as NHWC [N, OH, OW, O] of out_dtype "u8" or "s8".

    acc = sum (x - a_zero_point) * w + bias[o] in int32 over the taps inside the image; x is
    [N, H, W, C] uint8 or int8, bias int32 [O] or None, multiplier float32 [O]
    (nimbus.compiler.ops.quant.requant_multiplier); lo and hi carry a fused ReLU/ReLU6
    (activation_bounds). padding is [top, left, bottom, right].
    """
    if out_dtype not in QUANTIZED_RESULTS:
        raise ValueError(f"out_dtype must be 'u8' or 's8', got {out_dtype!r}")
    info = torch.iinfo(QUANTIZED_RESULTS[out_dtype])
    _check_integer("out_zero_point", out_zero_point, info.min, info.max)
    _check_integer("lo", lo, info.min, info.max)
    _check_integer("hi", hi, lo, info.max)
    return _integer_conv(x, packed, a_zero_point, bias, multiplier, QUANTIZED_RESULTS[out_dtype],
                         out_zero_point, lo, hi, REQUANTIZED, "none", stride, padding, dilation,
                         residual)


def qconv2d_f32(x: torch.Tensor, packed: PackedConvWeights, a_zero_point: int, bias, scale, *,
                activation: str = "none", stride=(1, 1), padding=(0, 0, 0, 0),
                dilation=(1, 1), residual: QuantizedResidual | None = None) -> torch.Tensor:
    """Dequantized int8 convolution: activation(f32(acc) * scale[o] [+ residual term]) as
    float32 NHWC, with scale = requant_multiplier(s_in, s_w) and activation a name of
    ACTIVATION_CODES (a clamp, or a float activation such as an EfficientNet's SiLU)."""
    activation_code(activation)  # a ValueError naming the choices for an unknown one
    return _integer_conv(x, packed, a_zero_point, bias, scale, torch.float32, 0, 0, 0,
                         DEQUANTIZED, activation, stride, padding, dilation, residual)


def qconv2d_s32(x: torch.Tensor, packed: PackedConvWeights, a_zero_point: int = 0, bias=None, *,
                stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1)) -> torch.Tensor:
    """The int32 accumulators acc (bias included) as NHWC [N, OH, OW, O]."""
    return _integer_conv(x, packed, a_zero_point, bias, None, torch.int32, 0, 0, 0, ACCUMULATORS,
                         "none", stride, padding, dilation)


def conv2d(x: torch.Tensor, packed: PackedConvWeights, bias: torch.Tensor | None = None,
           residual: torch.Tensor | None = None, *, activation: str = "none", stride=(1, 1),
           padding=(0, 0, 0, 0), dilation=(1, 1)) -> torch.Tensor:
    """act(conv2d(x, w) + bias + residual) for NHWC x [N, H, W, C] in fp16, bf16 or fp32, with
    fp32 accumulation; the result [N, OH, OW, O] has x's dtype, and so must bias [O] and
    residual [N, OH, OW, O]. activation is a name of ACTIVATION_CODES."""
    _check_activations(x, packed, FLOAT_DTYPES, "float")
    if packed.dtype != x.dtype:
        raise ValueError(f"packed weights are {packed.dtype} but x is {x.dtype}")
    code = activation_code(activation)
    geometry = _geometry(x, packed, stride, padding, dilation)
    channels = packed.out_channels
    out_shape = (geometry.batch, geometry.out_height, geometry.out_width, channels)
    if bias is not None:
        bias = _vector("bias", bias, x.dtype, channels, x.device)
    if residual is not None:
        if not isinstance(residual, torch.Tensor) or residual.dtype != x.dtype:
            raise ValueError(f"residual must be a {x.dtype} tensor")
        if tuple(residual.shape) != out_shape or not residual.is_contiguous():
            raise ValueError(f"residual must be contiguous with the result's shape {out_shape}, "
                             f"got {tuple(residual.shape)}")
        if residual.device != x.device:
            raise ValueError(f"residual is on {residual.device} but x is on {x.device}")
    out = torch.empty(out_shape, dtype=x.dtype, device=x.device)
    bias_arg = out if bias is None else bias
    residual_arg = out if residual is None else residual
    scalars = (geometry.rows, geometry.height, geometry.width, x.shape[3], geometry.out_height,
               geometry.out_width)
    flags = {"HAS_BIAS": bias is not None, "HAS_RESIDUAL": residual is not None,
             "ACTIVATION": code}
    key = _conv_key(x, packed, geometry, f"{'bias+' if bias is not None else ''}"
                    f"{'residual+' if residual is not None else ''}{activation}")

    _launch_conv("conv2d", key, x, packed, geometry, (bias_arg, residual_arg, out), scalars, flags,
                 depthwise_conv2d_kernel, conv2d_kernel,
                 gemm_flags={"DOT_PRECISION": dot_precision(x.dtype)})
    return out


# ---- benchmark hook -----------------------------------------------------------------------------
# (name, N, H, W, C, O, kernel, stride, padding) of ResNet-18 and MobileNetV2 layers at batch 32.
RESNET_LAYERS = [
    ("3x3 s1 64->64 56x56", 32, 56, 56, 64, 64, 3, 1, 1),
    ("3x3 s2 64->128 56x56", 32, 56, 56, 64, 128, 3, 2, 1),
    ("1x1 256->256 14x14", 32, 14, 14, 256, 256, 1, 1, 0),
]
STEM_LAYER = ("7x7 s2 3->64 224x224", 32, 224, 224, 3, 64, 7, 2, 3)
DEPTHWISE_LAYER = ("depthwise 3x3 32ch 112x112", 32, 112, 112, 32, 32, 3, 1, 1)


def _torch_conv_relu(x_nchw, w, bias, stride, padding, groups):
    """The peer: cuDNN through torch (channels_last tensors), bias and ReLU."""
    out = torch.nn.functional.conv2d(x_nchw, w, bias, stride=stride, padding=padding,
                                     groups=groups)
    return torch.relu(out)


def _exact_accumulators(x, a_zero_point, w, bias, stride, padding, groups):
    """qconv2d's int32 accumulators (NHWC) from a float64 convolution, exact at these sizes."""
    centered = x.permute(0, 3, 1, 2).to(torch.float64) - a_zero_point
    acc = torch.nn.functional.conv2d(centered, w.to(torch.float64), stride=stride,
                                     padding=padding, groups=groups)
    return acc.permute(0, 2, 3, 1).to(torch.int64).to(torch.int32) + bias


def _requantized_reference(acc, multiplier, zero_point, lo, hi):
    """The reference's requantization in separate float32 torch ops (round half to even)."""
    scaled = torch.round(acc.to(torch.float32) * multiplier)
    return (scaled.to(torch.int32) + zero_point).clamp(lo, hi).to(torch.uint8)


def _qconv_case(layer, device) -> BenchCase:
    name, n, h, w, c, o, k, stride, pad = layer
    groups = c if c == o and "depthwise" in name else 1
    x = torch.randint(0, 256, (n, h, w, c), dtype=torch.uint8, device=device)
    weights = torch.randint(-127, 128, (o, c // groups, k, k), dtype=torch.int8, device=device)
    bias = torch.randint(-20000, 20000, (o,), dtype=torch.int32, device=device)
    packed = pack_conv_weights(weights, groups)
    a_zero_point, out_zero_point = 118, 3
    depth = k * k * c // groups
    # A multiplier that spreads the accumulators (std ~ 74 * 74 * sqrt(depth)) over u8.
    multiplier = torch.full((o,), 1.0 / (40.0 * depth ** 0.5), device=device)
    keywords = {"stride": (stride, stride), "padding": (pad,) * 4}

    def run():
        return qconv2d(x, packed, a_zero_point, bias, multiplier, out_zero_point, out_zero_point,
                       255, "u8", **keywords)

    def check():
        acc = _exact_accumulators(x, a_zero_point, weights, bias, stride, pad, groups)
        expected = _requantized_reference(acc, multiplier, out_zero_point, out_zero_point, 255)
        return mismatches(run(), expected), 0.0

    x_half = x.to(torch.float16).permute(0, 3, 1, 2)  # channels_last NCHW view
    w_half = weights.to(torch.float16).to(memory_format=torch.channels_last)
    bias_half = bias.to(torch.float16)
    compiled = torch.compile(_torch_conv_relu)
    out_pixels = n * ((h + 2 * pad - k) // stride + 1) * ((w + 2 * pad - k) // stride + 1)
    return BenchCase(
        f"qconv2d u8 bias+requant+relu {name} b{n} (peer: fp16 cudnn)", run, check,
        flops=2.0 * out_pixels * o * depth, bytes=x.numel() + weights.numel() + out_pixels * o,
        peers={"torch eager": lambda: _torch_conv_relu(x_half, w_half, bias_half, stride, pad,
                                                       groups),
               "torch.compile": lambda: compiled(x_half, w_half, bias_half, stride, pad, groups)})


def _conv_case(layer, device) -> BenchCase:
    name, n, h, w, c, o, k, stride, pad = layer
    groups = c if c == o and "depthwise" in name else 1
    x = torch.randn(n, h, w, c, dtype=torch.float16, device=device)
    weights = (torch.randn(o, c // groups, k, k, device=device) / (k * k * c // groups) ** 0.5
               ).to(torch.float16)
    bias = torch.randn(o, dtype=torch.float16, device=device)
    packed = pack_conv_weights(weights, groups)
    keywords = {"stride": (stride, stride), "padding": (pad,) * 4}

    def run():
        return conv2d(x, packed, bias, activation="relu", **keywords)

    def check():
        expected = _torch_conv_relu(x.permute(0, 3, 1, 2).double(), weights.double(),
                                    bias.double(), stride, pad, groups)
        return relative_error(run(), expected.permute(0, 2, 3, 1)), 5e-3

    x_nchw = x.permute(0, 3, 1, 2)  # channels_last NCHW view of the same memory
    w_last = weights.to(memory_format=torch.channels_last)
    compiled = torch.compile(_torch_conv_relu)
    out_pixels = n * ((h + 2 * pad - k) // stride + 1) * ((w + 2 * pad - k) // stride + 1)
    return BenchCase(
        f"conv2d fp16 bias+relu {name} b{n}", run, check,
        flops=2.0 * out_pixels * o * k * k * c // groups,
        bytes=2.0 * (x.numel() + weights.numel() + out_pixels * o),
        peers={"torch eager": lambda: _torch_conv_relu(x_nchw, w_last, bias, stride, pad, groups),
               "torch.compile": lambda: compiled(x_nchw, w_last, bias, stride, pad, groups)})


def benchmark_cases() -> list[BenchCase]:
    """ResNet-18 and MobileNetV2 layers at batch 32, int8 and fp16, against cuDNN through torch
    (in fp16 for the int8 kernels: torch has no int8 convolution on the GPU)."""
    device = torch.device("cuda")
    cases = [_qconv_case(layer, device) for layer in (*RESNET_LAYERS, DEPTHWISE_LAYER)]
    cases += [_conv_case(layer, device) for layer in (*RESNET_LAYERS, STEM_LAYER, DEPTHWISE_LAYER)]
    return cases
