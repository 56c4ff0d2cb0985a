"""Neural-network ops: convolution, linear layers, matmul, normalization, softmax, pooling.

Layouts follow PyTorch: activations NCHW, conv weights OIHW, linear weights [out, in];
spatial padding is [top, left, bottom, right]. The ``*_reference`` functions compute in float32
(or float64 for normalizations) and are also the compiler's references; the kernels wrap them
in ``in_float32`` as the op table does, except where a faster ``*_kernel`` computes the same
values (float32 normalizations, one GEMM over all rows, strided convolution output).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .. import _kernels
from .common import in_float32, nhwc, normalize_axis, window_output_size
from .packing import PACKED_WEIGHTS
from .registry import (NATIVE_THREADS, RUNTIME, kernel, native_step, plan_empty,
                       plan_empty_like, prepared_or, preparer, without_types)
from .shape import contiguous_operand

PAIR_ONES = (1, 1)
NO_PADDING = (0, 0, 0, 0)


def output_hw(shape, kernel, stride, padding, dilation, ceil_mode=False) -> tuple[int, int]:
    """Output (H, W) of a 2-D sliding window over a static NCHW shape."""
    return tuple(window_output_size(shape[2 + i], kernel[i], stride[i], padding[i],
                                    padding[i + 2], dilation[i], ceil_mode) for i in range(2))


def output_sizes(kernel, stride, padding, dilation, ceil_mode=False):
    """output_hw of one window geometry as a function of the input shape, remembered for the
    shapes a prepared step meets (a microsecond per run otherwise)."""
    return functools.lru_cache(maxsize=64)(
        lambda shape: output_hw(shape, kernel, stride, padding, dilation, ceil_mode))


def pad_spatial(x: np.ndarray, padding, extra=(0, 0), value=0.0) -> np.ndarray:
    """NCHW ``x`` padded by [top, left, bottom, right] (+ ``extra`` more at the bottom/right);
    ``x`` itself when there is nothing to add. Only the border is filled."""
    top, left = padding[0], padding[1]
    bottom, right = padding[2] + extra[0], padding[3] + extra[1]
    if not (top or left or bottom or right):
        return x
    n, c, h, w = x.shape
    out = np.empty((n, c, top + h + bottom, left + w + right), dtype=x.dtype)
    out[:, :, :top] = value
    out[:, :, top + h:] = value
    out[:, :, top:top + h, :left] = value
    out[:, :, top:top + h, left + w:] = value
    out[:, :, top:top + h, left:left + w] = x
    return out


def _window_extra(shape, kernel, stride, padding, dilation, out_hw):
    # Pad the end further when ceil_mode lets the last window run past the padding.
    return [max(0, (out_hw[i] - 1) * stride[i] + dilation[i] * (kernel[i] - 1) + 1
                - (shape[2 + i] + padding[i] + padding[i + 2])) for i in range(2)]


def _windows_view(padded, kernel, stride, dilation, out_hw, order=(0, 1, 2, 3, 4, 5)):
    """A read-only strided view of the windows of padded NCHW data: axes [N, C, kh, kw, Ho, Wo]
    in ``order``."""
    sn, sc, sh, sw = padded.strides
    shape = (padded.shape[0], padded.shape[1], kernel[0], kernel[1], out_hw[0], out_hw[1])
    strides = (sn, sc, sh * dilation[0], sw * dilation[1], sh * stride[0], sw * stride[1])
    return np.lib.stride_tricks.as_strided(padded, tuple(shape[i] for i in order),
                                           tuple(strides[i] for i in order), writeable=False)


def _tap(padded, i, j, stride, dilation, out_hw):
    """The input under kernel tap (i, j) for every output position: [N, C, Ho, Wo] view."""
    top, left = i * dilation[0], j * dilation[1]
    return padded[:, :, top:top + stride[0] * (out_hw[0] - 1) + 1:stride[0],
                  left:left + stride[1] * (out_hw[1] - 1) + 1:stride[1]]


def extract_windows(x: np.ndarray, kernel, stride, padding, dilation, out_hw, pad_value=0.0):
    """Patches of an NCHW array as [N, C, kh, kw, Ho, Wo] (the im2col of the reference)."""
    extra = _window_extra(x.shape, kernel, stride, padding, dilation, out_hw)
    padded = pad_spatial(x, padding, extra, pad_value)
    return np.ascontiguousarray(_windows_view(padded, kernel, stride, dilation, out_hw))


# Output positions per image from which one GEMM per image beats one GEMM over the batch (whose
# result needs a transpose back to NCHW).
_PER_IMAGE_GEMM_MIN = 1024
# Elements of one block of the depthwise accumulation (kept within the L2 cache).
_DEPTHWISE_BLOCK = 1 << 15


def conv2d_nchw(x, w, stride, padding, dilation, groups, accumulate=np.float32):
    """Grouped 2-D convolution accumulating in ``accumulate``; a new C-contiguous array.

    Depthwise convolutions sum the kernel taps (one multiply-add pass per tap), 1x1 convolutions
    are a plain matmul, the others one GEMM per group over im2col columns. With float64
    accumulation of integer data (qconv2d's reference) every path is exact integer arithmetic.
    """
    return np.ascontiguousarray(conv2d_any_layout(x, w, stride, padding, dilation, groups,
                                                  accumulate))


def conv2d_any_layout(x, w, stride, padding, dilation, groups, accumulate=np.float32):
    """``conv2d_nchw``'s values as a fresh array that may be strided (N and C swapped in memory)."""
    x = x.astype(accumulate, copy=False)
    w = w.astype(accumulate, copy=False)
    n, channels = x.shape[:2]
    out_channels, group_channels, kh, kw = w.shape
    ho, wo = out_hw = output_hw(x.shape, (kh, kw), stride, padding, dilation)
    if group_channels == 1 and groups == channels and groups > 1:
        return _depthwise(x, w, stride, padding, dilation, out_hw)
    og = out_channels // groups
    if (kh, kw) == (1, 1) and not any(padding):
        taps = x
        if tuple(stride) != (1, 1):
            taps = x[:, :, ::stride[0], ::stride[1]][:, :, :ho, :wo]
        if groups == 1 and (ho * wo >= _PER_IMAGE_GEMM_MIN or n == 1):
            columns = taps.reshape(n, channels, ho * wo)  # copies only a strided input
            return np.matmul(w.reshape(out_channels, channels), columns).reshape(
                n, out_channels, ho, wo)
        columns = np.ascontiguousarray(taps.transpose(1, 0, 2, 3)).reshape(
            groups, group_channels, n * ho * wo)
    else:
        padded = pad_spatial(x, padding)
        if groups == 1 and ho * wo >= _PER_IMAGE_GEMM_MIN:
            view = _windows_view(padded, (kh, kw), stride, dilation, out_hw)
            columns = np.ascontiguousarray(view)
            return np.matmul(w.reshape(out_channels, -1),
                             columns.reshape(n, channels * kh * kw, ho * wo)).reshape(
                n, out_channels, ho, wo)
        # [C, kh, kw, N, Ho, Wo]: one GEMM per group over the whole batch
        view = _windows_view(padded, (kh, kw), stride, dilation, out_hw, (1, 2, 3, 0, 4, 5))
        columns = np.ascontiguousarray(view).reshape(groups, group_channels * kh * kw,
                                                     n * ho * wo)
    out = np.matmul(w.reshape(groups, og, -1), columns)
    return out.reshape(out_channels, n, ho, wo).transpose(1, 0, 2, 3)


def _depthwise(x, w, stride, padding, dilation, out_hw):
    """Depthwise convolution as a sum over the taps of shifted input times per-channel weights.

    Channels last, each stride phase of the padded input is one flat array in which every tap
    is a flat offset: the output is computed on a grid of rows ``wide`` positions long (the
    positions past ``wo``, and rows past ``ho``, are discarded), so that each tap is one
    contiguous multiply-add per cache-sized block. Returns an NCHW view of NHWC memory.
    """
    n, channels, h, wd = x.shape
    out_channels, _, kh, kw = w.shape
    if out_channels != channels:  # channel multiplier: output channel o reads input o // m
        x = np.repeat(x, out_channels // channels, axis=1)
    ho, wo = out_hw
    (s0, s1), (d0, d1) = stride, dilation
    taps = [((i * d0) % s0, (j * d1) % s1, (i * d0) // s0, (j * d1) // s1)
            for i in range(kh) for j in range(kw)]
    tall = ho + max(t[2] for t in taps) + 1  # grid rows per image (one spare row)
    wide = wo + max(t[3] for t in taps)
    row, image = wide * out_channels, tall * wide * out_channels
    total = n * image
    guard = tall * row  # flat reads of the last image run at most this far past it
    top, left = padding[0], padding[1]
    rows, cols = min(h, s0 * tall - top), min(wd, s1 * wide - left)
    buffer = np.zeros(n * s0 * s1 * image + (guard if (s0, s1) == (1, 1) else 0), dtype=x.dtype)
    grid = buffer[:n * s0 * s1 * image].reshape(n, s0 * tall, s1 * wide, out_channels)
    grid[:, top:top + rows, left:left + cols] = x[:, :, :rows, :cols].transpose(0, 2, 3, 1)
    phases = {}
    for a, b, _, _ in taps:
        if (a, b) not in phases:
            if (s0, s1) == (1, 1):
                phases[a, b] = buffer
            else:
                flat = np.empty(total + guard, dtype=x.dtype)
                flat[total:] = 0
                flat[:total].reshape(n, tall, wide, out_channels)[...] = grid[:, a::s0, b::s1]
                phases[a, b] = flat
    block = max(1, _DEPTHWISE_BLOCK // out_channels) * out_channels
    block = min(block, total)
    weights = w.reshape(out_channels, kh * kw).T
    tiled = [np.tile(weights[t], block // out_channels) for t in range(kh * kw)]
    offsets = [(phases[a, b], oi * row + oj * out_channels) for a, b, oi, oj in taps]
    out = np.empty(total, dtype=x.dtype)
    scratch = np.empty(block, dtype=x.dtype)
    for start in range(0, total, block):
        size = min(block, total - start)
        target = out[start:start + size]
        tmp = scratch[:size]
        for t, (source, offset) in enumerate(offsets):
            begin = start + offset
            if t == 0:
                np.multiply(source[begin:begin + size], tiled[t][:size], out=target)
            else:
                np.multiply(source[begin:begin + size], tiled[t][:size], out=tmp)
                target += tmp
    return out.reshape(n, tall, wide, out_channels)[:, :ho, :wo].transpose(0, 3, 1, 2)


def conv2d_reference(xs, a):
    x, w, b = xs
    out = conv2d_nchw(x, w, a["stride"], a["padding"], a["dilation"], a["groups"])
    return out if b is None else out + b.reshape(1, -1, 1, 1)


def linear_reference(xs, a):
    x, w, b = xs
    out = np.matmul(x, w.T)
    return out if b is None else out + b


def batch_norm_scale_shift(mean, var, weight, bias, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """batch_norm(x) = x * scale + shift per channel: (scale, shift) in float64."""
    scale = 1.0 / np.sqrt(np.asarray(var, np.float64) + eps)
    if weight is not None:
        scale = scale * weight
    shift = -np.asarray(mean, np.float64) * scale
    if bias is not None:
        shift = shift + bias
    return scale, shift


def batch_norm_reference(xs, a):
    x, mean, var, weight, bias = xs
    shape = (1, -1) + (1,) * (x.ndim - 2)
    scale, shift = batch_norm_scale_shift(mean, var, weight, bias, a["eps"])
    return x * scale.astype(np.float32).reshape(shape) + shift.astype(np.float32).reshape(shape)


def layer_norm_reference(xs, a):
    x, weight, bias = xs
    axes = tuple(range(normalize_axis(a["axis"], x.ndim), x.ndim))
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=axes, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=axes, keepdims=True)
    out = (x64 - mean) / np.sqrt(var + a["eps"])
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


def softmax_reference(xs, a):
    x = xs[0].astype(np.float64)
    shifted = np.exp(x - x.max(axis=a["axis"], keepdims=True))
    return shifted / shifted.sum(axis=a["axis"], keepdims=True)


def _layer_norm_vectors(normalized: tuple, weight, bias):
    """weight and bias as float32 vectors over the `normalized` trailing dims of x, or None where
    the native kernel does not take them (other dtypes, not one value per normalized element)."""
    channels = math.prod(normalized)
    for t in (weight, bias):
        if t is not None and (t.dtype != np.float32 or t.size != channels
                              or t.shape != normalized[len(normalized) - t.ndim:]):
            return None
    return tuple(None if t is None else _float32_vector(t.reshape(-1)) for t in (weight, bias))


def _native_layer_norm(x, vectors, axis, eps):
    """layer_norm on the native kernel over x as [rows, C] with weight and bias from
    _layer_norm_vectors; None for other dtypes or no channels."""
    channels = math.prod(x.shape[axis:])
    if x.dtype != np.float32 or not channels:
        return None
    rows = (x if x.flags.c_contiguous else np.ascontiguousarray(x)).reshape(-1, channels)
    out = _kernels.layer_norm(rows, *vectors, eps, NATIVE_THREADS.get())
    return out.reshape(x.shape)


@preparer("layer_norm")
def prepare_layer_norm(a, types, operands):
    """layer_norm's native call with constant weight and bias checked and converted once. Run
    after a large GEMM, these per-run checks met cold caches: np.prod alone took 100 us there
    (3 us warm), beside a 24 us kernel (BERT-base's layer norms at batch 1)."""
    _, weight, bias = operands
    if weight is RUNTIME or bias is RUNTIME:
        return None
    axis, eps, by_shape = a["axis"], a["eps"], {}

    def run(xs):
        x = xs[0]
        if not -x.ndim <= axis < x.ndim:
            return None
        start = axis % x.ndim
        normalized = x.shape[start:]
        if normalized not in by_shape:
            by_shape[normalized] = _layer_norm_vectors(normalized, weight, bias)
        vectors = by_shape[normalized]
        out = None if vectors is None else _native_layer_norm(x, vectors, start, eps)
        return None if out is None else [out]

    return run


@native_step("layer_norm")
def build_layer_norm(program, a, types, operands, runtime, results):
    """The native layer norm as a program step, for float32 x (a strided view gets a copy step)
    and constant weight and bias."""
    x, weight, bias = operands
    if runtime[1] or runtime[2] or x.dtype != np.float32 or not -x.ndim <= a["axis"] < x.ndim:
        return None
    x = contiguous_operand(program, x)
    normalized = x.shape[a["axis"] % x.ndim:]
    channels = math.prod(normalized)
    vectors = _layer_norm_vectors(normalized, weight, bias)
    if vectors is None or not channels:
        return None
    out = plan_empty(x.shape, np.float32)
    program.layer_norm(x.reshape(-1, channels), *vectors, a["eps"], out.reshape(-1, channels))
    return [out]


def layer_norm_kernel(xs, a):
    """layer_norm in float32 (the reference's float64 is not needed: |error| ~1e-6 relative),
    natively where it applies, else in numpy."""
    x, weight, bias = xs
    axis = normalize_axis(a["axis"], x.ndim)
    vectors = _layer_norm_vectors(x.shape[axis:], weight, bias)
    native = None if vectors is None else _native_layer_norm(x, vectors, axis, a["eps"])
    if native is not None:
        return native
    rows = x.reshape(x.shape[:axis] + (-1,)) if axis < x.ndim - 1 else x
    mean = rows.mean(axis=-1, keepdims=True)
    out = rows - mean
    var = np.square(out).mean(axis=-1, keepdims=True)  # pairwise sums along the row
    var += np.float32(a["eps"])
    np.sqrt(var, out=var)
    out /= var
    out = out.reshape(x.shape)
    if weight is not None:
        out *= weight
    if bias is not None:
        out += bias
    return out


def softmax_kernel(xs, a):
    """softmax in float32, shifted by the maximum (~1e-6 relative to the float64 reference);
    natively over the last axis."""
    x = xs[0]
    axis = a["axis"]
    if x.dtype == np.float32 and x.ndim and axis in (-1, x.ndim - 1):
        return _kernels.softmax(np.ascontiguousarray(x), -1, NATIVE_THREADS.get())
    out = x - x.max(axis=axis, keepdims=True)
    np.exp(out, out=out)
    out /= out.sum(axis=axis, keepdims=True)
    return out


@native_step("softmax")
def build_softmax(program, a, types, operands, runtime, results):
    """The native softmax over the last axis as a program step (a classifier's last op)."""
    x = operands[0]
    if x.dtype != np.float32 or not x.ndim or a["axis"] not in (-1, x.ndim - 1):
        return None
    out = plan_empty(x.shape, np.float32)
    program.softmax(contiguous_operand(program, x), -1, out)
    return [out]


def _tap_reduce(x, kernel, stride, padding, dilation, out_hw, pad_value, combine):
    """``combine`` of the kernel taps' [N, C, Ho, Wo] views, accumulated in place."""
    extra = _window_extra(x.shape, kernel, stride, padding, dilation, out_hw)
    padded = pad_spatial(x, padding, extra, pad_value)
    out = None
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            tap = _tap(padded, i, j, stride, dilation, out_hw)
            if out is None:
                out = np.array(tap, order="C")  # always a copy: updated in place
            else:
                combine(out, tap, out=out)
    return out


def max_pool_reference(xs, a):
    x = xs[0]
    out_hw = output_hw(x.shape, a["kernel"], a["stride"], a["padding"], a["dilation"],
                       a["ceil_mode"])
    lowest = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    return _tap_reduce(x, a["kernel"], a["stride"], a["padding"], a["dilation"], out_hw, lowest,
                       np.maximum)


NATIVE_POOL_DTYPES = (np.uint8, np.int8, np.float32)


@preparer("max_pool2d")
def prepare_max_pool(a, types, operands):
    """max_pool_reference on the native NHWC kernel for u8/i8/f32, returned as an NCHW view of
    NHWC memory like the convolutions that feed it."""
    geometry = tuple(tuple(a[name]) for name in ("kernel", "stride", "padding", "dilation"))
    sizes = output_sizes(*geometry, a["ceil_mode"])

    def run(xs):
        x = xs[0]
        if x.dtype not in NATIVE_POOL_DTYPES:
            return None
        out = _kernels.max_pool2d(channels_last(x), *geometry, sizes(x.shape),
                                  NATIVE_THREADS.get())
        return [out.transpose(0, 3, 1, 2)]

    return run


@native_step("max_pool2d")
def build_max_pool(program, a, types, operands, runtime, results):
    """prepare_max_pool's call as a program step."""
    x = operands[0]
    if x.dtype not in NATIVE_POOL_DTYPES or not x.size:
        return None
    x_nhwc = channels_last_operand(program, x)
    out = plan_empty_like(results[0])
    if x_nhwc is None or not nhwc(out).flags.c_contiguous:
        return None
    geometry = [a[name] for name in ("kernel", "stride", "padding", "dilation")]
    program.max_pool2d(x_nhwc, *geometry, out.shape[2:], nhwc(out))
    return [out]


def avg_pool_reference(xs, a):
    x = xs[0]
    kernel, stride, padding = a["kernel"], a["stride"], a["padding"]
    out_hw = output_hw(x.shape, kernel, stride, padding, PAIR_ONES, a["ceil_mode"])
    sums = _tap_reduce(x, kernel, stride, padding, PAIR_ONES, out_hw, 0.0, np.add)
    # The divisor counts the input taps, plus the padding taps when count_include_pad; taps
    # that ceil_mode adds past the padding never count (torch's rule).
    counted = np.ones((1, 1) + x.shape[2:], dtype=np.float32)
    if a["count_include_pad"]:
        counted = np.pad(counted, ((0, 0), (0, 0), (padding[0], padding[2]),
                                   (padding[1], padding[3])), constant_values=1.0)
        padding = NO_PADDING
    divisor = extract_windows(counted, kernel, stride, padding, PAIR_ONES, out_hw).sum(axis=(2, 3))
    sums /= divisor
    return sums


def _avg_pool_geometry(a) -> tuple:
    return tuple(a["kernel"]), tuple(a["stride"]), tuple(a["padding"])


@preparer("avg_pool2d")
def prepare_avg_pool(a, types, operands):
    """avg_pool_reference on the native NHWC kernel for float32 (the same bits: the taps summed
    in the same order, the same divisors), returned as an NCHW view of NHWC memory like the
    convolutions that feed it. In numpy, DenseNet-121's transition over 128 x 56 x 56 took
    0.72 ms."""
    kernel, stride, padding = _avg_pool_geometry(a)
    sizes = output_sizes(kernel, stride, padding, PAIR_ONES, a["ceil_mode"])

    def run(xs):
        x = xs[0]
        if x.dtype != np.float32:
            return None
        out = _kernels.avg_pool2d(channels_last(x), kernel, stride, padding, sizes(x.shape),
                                  a["count_include_pad"], NATIVE_THREADS.get())
        return [out.transpose(0, 3, 1, 2)]

    return run


@native_step("avg_pool2d")
def build_avg_pool(program, a, types, operands, runtime, results):
    """prepare_avg_pool's call as a program step."""
    x = operands[0]
    if x.dtype != np.float32 or not x.size:
        return None
    x_nhwc = channels_last_operand(program, x)
    out = plan_empty_like(results[0])
    if x_nhwc is None or not nhwc(out).flags.c_contiguous:
        return None
    kernel, stride, padding = _avg_pool_geometry(a)
    program.avg_pool2d(x_nhwc, kernel, stride, padding, out.shape[2:], a["count_include_pad"],
                       nhwc(out))
    return [out]


def adaptive_avg_pool_reference(xs, a):
    x = xs[0]
    (h, w), (oh, ow) = x.shape[2:], a["output_size"]
    out = np.empty(x.shape[:2] + (oh, ow), dtype=np.float32)
    for i in range(oh):
        top, bottom = (i * h) // oh, -(-((i + 1) * h) // oh)
        for j in range(ow):
            left, right = (j * w) // ow, -(-((j + 1) * w) // ow)
            out[:, :, i, j] = x[:, :, top:bottom, left:right].mean(axis=(2, 3), dtype=np.float64)
    return out


def _resize_sources(out_size: int, in_size: int, a: dict, axis: int) -> np.ndarray:
    """Where output index i reads along one axis, in input coordinates, as torch computes it in
    float32 (so the same indices come out): align_corners maps the corner pixels' centres onto
    each other; otherwise pixel centres map with ratio in / out, or 1 / scale where the op was
    given a scale factor."""
    f32 = np.float32
    index = np.arange(out_size, dtype=f32)
    if a["align_corners"]:
        ratio = f32(in_size - 1) / f32(out_size - 1) if out_size > 1 else f32(0)
        return index * ratio
    ratio = f32(1) / f32(a["scale"][axis]) if a["scale"] else f32(in_size) / f32(out_size)
    if a["mode"] == "nearest":
        return np.floor(index * ratio)
    return np.maximum((index + f32(0.5)) * ratio - f32(0.5), f32(0))


def _resize_neighbours(out_size: int, in_size: int, a: dict, axis: int):
    """(low, high, weight): the input neighbours each output reads along one axis, and the
    share of the high one (nearest resizing reads `low` alone)."""
    source = _resize_sources(out_size, in_size, a, axis)
    low = np.minimum(np.floor(source), in_size - 1).astype(np.intp)
    return low, np.minimum(low + 1, in_size - 1), source - low


def resize_reference(xs, a):
    """Bilinear or nearest resizing of the last two axes of NCHW x to `size`."""
    x = xs[0]
    out = x
    for axis, (out_size, in_size) in enumerate(zip(a["size"], x.shape[2:])):
        low, high, weight = _resize_neighbours(out_size, in_size, a, axis)
        if a["mode"] == "nearest":
            out = np.take(out, low, axis=2 + axis)
            continue
        weight = weight.reshape((-1,) + (1,) * (1 - axis))
        out = np.take(out, low, axis=2 + axis) * (1 - weight) + np.take(out, high,
                                                                        axis=2 + axis) * weight
    return out.astype(x.dtype, copy=False)


# ---- float layers on the native kernels ---------------------------------------------------------
def channels_last_operand(program, x: np.ndarray) -> np.ndarray | None:
    """channels_last(x) for a program: x's NHWC memory itself, or an array that a step added to
    ``program`` fills from C-contiguous float32 x; None for other layouts."""
    if nhwc(x).flags.c_contiguous:
        return nhwc(x)
    if x.dtype != np.float32 or not x.flags.c_contiguous:
        return None
    out = plan_empty(nhwc(x).shape, np.float32)
    program.to_channels_last(x, out)
    return out


def channels_last(x: np.ndarray) -> np.ndarray:
    """x [N, C, H, W] as C-contiguous NHWC memory: free for the NCHW views of NHWC results that
    the native kernels return; a model's NCHW float input goes through the native transpose,
    several times faster than numpy's strided copy."""
    view = nhwc(x)
    if view.flags.c_contiguous or x.dtype != np.float32 or not x.flags.c_contiguous:
        return np.ascontiguousarray(view)
    return _kernels.to_channels_last(x, NATIVE_THREADS.get())


def _float32_vector(values):
    return None if values is None else np.ascontiguousarray(values, dtype=np.float32)


def native_float_conv_weights(w) -> bool:
    """Whether the native float convolutions take weights ``w``: float32, not empty, and
    finite. They skip padded taps and Winograd mixes weights, which equals numpy's sums only
    while no weight is inf or NaN (0 * inf is NaN in the padding); checked once per constant."""
    return (w.dtype == np.float32 and w.size > 0
            and PACKED_WEIGHTS.get(w, "finite", lambda w: bool(np.isfinite(w).all())))


def native_conv_args(w, bias, a):
    """(packed weights, float32 bias, stride, padding, dilation) of a float convolution on the
    native kernel, or None for weights it does not take."""
    if not native_float_conv_weights(w):
        return None
    stride, dilation = tuple(a["stride"]), tuple(a["dilation"])
    # A layer of stride 1 packs only the Winograd form where its kernel takes one.
    unit_stride = stride == (1, 1) and dilation == (1, 1)
    packed = PACKED_WEIGHTS.get(w, "sconv", _kernels.pack_sconv_weights, a["groups"], None,
                                unit_stride)
    return packed, _float32_vector(bias), stride, tuple(a["padding"]), dilation


def native_linear_args(w, bias):
    """(packed weights, float32 bias) of a float linear layer on the native GEMM, or None."""
    if w.dtype != np.float32 or w.ndim != 2 or not w.size:
        return None
    return PACKED_WEIGHTS.get(w, "sgemm", _kernels.pack_sgemm_weights), _float32_vector(bias)


def prepare_native_conv2d(w, bias, a, activation: str = "none"):
    """act(conv2d(x, w) + bias + residual) on the native float kernel with weights packed once:
    ``run(x, residual)`` returns an NCHW view of NHWC memory (so a following convolution reads
    channels-last data without a copy), or None where that kernel does not apply (other dtypes,
    empty tensors, a residual that broadcasts); None at once for such weights."""
    args = native_conv_args(w, bias, a)
    if args is None:
        return None
    packed, bias, stride, padding, dilation = args
    sizes = output_sizes(w.shape[2:], stride, padding, dilation)

    def run(x, residual):
        if x.dtype != np.float32 or not x.size:
            return None
        out_hw = sizes(x.shape)
        if not out_hw[0] * out_hw[1]:
            return None
        if residual is not None:
            if residual.shape != (x.shape[0], w.shape[0], *out_hw):
                return None
            residual = np.ascontiguousarray(residual.transpose(0, 2, 3, 1), dtype=np.float32)
        out = _kernels.sconv2d(channels_last(x), packed, bias, residual, activation, stride,
                               padding, dilation, NATIVE_THREADS.get())
        return out.transpose(0, 3, 1, 2)

    return run


def prepare_native_linear(w, bias, activation: str = "none"):
    """act(x @ w.T + bias + residual) on the native float GEMM with weights packed once, as
    prepare_native_conv2d."""
    args = native_linear_args(w, bias)
    if args is None:
        return None
    packed, bias = args
    n, k = w.shape

    def run(x, residual):
        if x.dtype != np.float32 or not x.size:
            return None
        shape = x.shape[:-1] + (n,)
        if residual is not None:
            if residual.shape != shape:
                return None
            residual = np.ascontiguousarray(residual.reshape(-1, n), dtype=np.float32)
        return _kernels.sgemm(np.ascontiguousarray(x.reshape(-1, k)), packed, bias, residual,
                              activation, NATIVE_THREADS.get()).reshape(shape)

    return run


def layer_step(operands, prepare):
    """A float layer's prepared step: ``prepare(w, bias)`` (prepare_native_conv2d or
    prepare_native_linear) for a constant w and bias; the operands are x, w, bias[, residual]."""
    w, bias = operands[1], operands[2]
    run = None if not isinstance(w, np.ndarray) or bias is RUNTIME else prepare(w, bias)
    if run is None:
        return None

    def run_step(xs):
        out = run(xs[0], xs[3] if len(xs) > 3 else None)
        return None if out is None else [out]

    return run_step


def build_native_conv2d(program, a, types, operands, runtime, results, activation: str = "none"):
    """prepare_native_conv2d's call as a program step (a native_step builder): constant
    weights and bias, float32 x and an NHWC-memory result as the traced run gave."""
    x, w, bias = operands[:3]
    residual = operands[3] if len(operands) > 3 else None
    args = None if runtime[1] or (bias is not None and runtime[2]) else native_conv_args(w, bias, a)
    if args is None or x.dtype != np.float32 or not x.size:
        return None
    packed, bias, stride, padding, dilation = args
    x_nhwc = channels_last_operand(program, x)
    out = plan_empty_like(results[0])
    if x_nhwc is None or not nhwc(out).flags.c_contiguous:
        return None
    residual_nhwc = None
    if residual is not None:
        residual_nhwc = channels_last_operand(program, residual)
        if residual_nhwc is None or residual_nhwc.dtype != np.float32:
            return None
    program.sconv2d(x_nhwc, packed, bias, residual_nhwc, activation, stride, padding, dilation,
                    nhwc(out))
    return [out]


def build_native_linear(program, a, types, operands, runtime, results, activation: str = "none"):
    """prepare_native_linear's call as a program step, for C-contiguous float32 x."""
    x, w, bias = operands[:3]
    residual = operands[3] if len(operands) > 3 else None
    args = None if runtime[1] or (bias is not None and runtime[2]) else native_linear_args(w, bias)
    if args is None or x.dtype != np.float32 or not x.size:
        return None
    x = contiguous_operand(program, x)
    if residual is not None:
        residual = contiguous_operand(program, residual) if residual.dtype == np.float32 else None
        if residual is None:
            return None
    packed, bias = args
    n, k = w.shape
    out = plan_empty(results[0].shape, np.float32)
    program.sgemm(x.reshape(-1, k), packed, bias,
                  None if residual is None else residual.reshape(-1, n), activation,
                  out.reshape(-1, n))
    return [out]


def native_conv2d(x, w, bias, residual, a, activation: str = "none"):
    """prepare_native_conv2d's result for one call (None where it does not apply)."""
    run = prepare_native_conv2d(w, bias, a, activation)
    return None if run is None else run(x, residual)


def native_linear(x, w, bias, residual, activation: str = "none"):
    """prepare_native_linear's result for one call (None where it does not apply)."""
    run = prepare_native_linear(w, bias, activation)
    return None if run is None else run(x, residual)


def conv2d_kernel(xs, a):
    x, w, b = xs
    native = native_conv2d(x, w, b, None, a)
    if native is not None:
        return native
    out = conv2d_any_layout(x, w, a["stride"], a["padding"], a["dilation"], a["groups"])
    result = np.empty(out.shape, dtype=out.dtype)
    if b is None:
        np.copyto(result, out)
    else:
        np.add(out, b.reshape(1, -1, 1, 1), out=result)
    return result


def linear_kernel(xs, a):
    x, w, b = xs
    native = native_linear(x, w, b, None)
    if native is not None:
        return native
    out = matmul_rows(x, w.T)
    if b is not None:
        out += b
    return out


def matmul_rows(x, w):
    """x @ w for a 2-D ``w`` as one GEMM over all rows of ``x`` (numpy would loop over x's
    leading axes)."""
    if x.ndim <= 2:
        return np.matmul(x, w)
    return np.matmul(x.reshape(-1, x.shape[-1]), w).reshape(x.shape[:-1] + (w.shape[-1],))


def matmul_kernel(xs, a):
    x, y = xs
    if y.ndim == 2:
        return matmul_rows(x, y)
    return np.matmul(x, y)


kernel("conv2d")(without_types(in_float32(conv2d_kernel)))
kernel("linear")(without_types(in_float32(linear_kernel)))
preparer("conv2d")(lambda a, types, operands: layer_step(
    operands, lambda w, bias: prepare_native_conv2d(w, bias, a)))
preparer("linear")(lambda a, types, operands: layer_step(operands, prepare_native_linear))
native_step("conv2d")(build_native_conv2d)
native_step("linear")(build_native_linear)
kernel("matmul")(without_types(in_float32(matmul_kernel)))
kernel("batch_norm")(without_types(in_float32(batch_norm_reference)))
kernel("layer_norm")(without_types(in_float32(layer_norm_kernel)))
kernel("softmax")(without_types(in_float32(softmax_kernel)))
kernel("max_pool2d")(lambda xs, a, types: prepared_or(
    prepare_max_pool, without_types(max_pool_reference), xs, a, types))
kernel("avg_pool2d")(lambda xs, a, types: prepared_or(
    prepare_avg_pool, without_types(in_float32(avg_pool_reference)), xs, a, types))
kernel("adaptive_avg_pool2d")(without_types(in_float32(adaptive_avg_pool_reference)))
@functools.lru_cache(maxsize=256)
def _packed_interpolation(out_size: int, in_size: int, align_corners: bool, scale: tuple | None,
                          axis: int):
    """The bilinear weights that each output along one axis gives its two input neighbours
    (resize_reference's indices and weights) as a [out, in] matrix packed for the native GEMM;
    a model resizes few shapes, so each is packed once."""
    a = {"mode": "bilinear", "align_corners": align_corners, "scale": scale}
    low, high, weight = _resize_neighbours(out_size, in_size, a, axis)
    matrix = np.zeros((out_size, in_size), np.float32)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, low), 1 - weight)
    np.add.at(matrix, (rows, high), weight)
    return _kernels.pack_sgemm_weights(matrix)


@kernel("resize")
@without_types
@in_float32
def resize(xs, a):
    """Bilinear resizing of finite x as two small matrix products on the native GEMM, within
    float32 rounding of the reference (its gathers and blends took 8.8 ms for DeepLabV3's
    21x14x14 -> 224x224). numpy's BLAS would start a thread pool of its own beside the
    session's, whose spinning threads then took the cores from the session's threads: DeepLabV3
    float at batch 1 took 22 ms instead of 11. Non-finite x takes the reference, where an inf or
    NaN reaches only its own neighbours (in a product, 0 * inf would spread NaN along the row).
    Rows first, on the smaller tensor; the columns' product then writes the C-contiguous
    result."""
    x = xs[0]
    if a["mode"] != "bilinear" or not x.size or not np.isfinite(x).all():
        return resize_reference(xs, a)
    (out_h, out_w), (height, width) = a["size"], x.shape[2:]
    scale = tuple(a["scale"]) if a["scale"] else None
    rows = _packed_interpolation(out_h, height, a["align_corners"], scale, 0)
    columns = _packed_interpolation(out_w, width, a["align_corners"], scale, 1)
    planes = x.shape[0] * x.shape[1]
    threads = NATIVE_THREADS.get()
    by_column = np.ascontiguousarray(np.swapaxes(x.astype(np.float32, copy=False), 2, 3))
    tall = _kernels.sgemm(by_column.reshape(-1, height), rows, None, None, "none", threads)
    tall = np.ascontiguousarray(np.swapaxes(tall.reshape(planes, width, out_h), 1, 2))
    out = _kernels.sgemm(tall.reshape(-1, width), columns, None, None, "none", threads)
    return out.reshape(*x.shape[:2], out_h, out_w)
