"""Neural-network ops: convolution, linear layers, matmul, normalization, softmax, pooling.

Layouts follow PyTorch: activations NCHW, conv weights OIHW, linear weights [out, in];
spatial padding is [top, left, bottom, right]. The ``*_reference`` functions compute in float32
(or float64 for normalizations) and are also the compiler's references; the kernels wrap them
in ``in_float32`` exactly as the op table does.
"""

from __future__ import annotations

import numpy as np

from .common import in_float32, normalize_axis, window_output_size
from .registry import kernel, without_types

PAIR_ONES = (1, 1)
NO_PADDING = (0, 0, 0, 0)


def output_hw(shape, kernel, stride, padding, dilation, ceil_mode=False) -> tuple[int, int]:
    """Output (H, W) of a 2-D sliding window over a static NCHW shape."""
    return tuple(window_output_size(shape[2 + i], kernel[i], stride[i], padding[i],
                                    padding[i + 2], dilation[i], ceil_mode) for i in range(2))


def extract_windows(x: np.ndarray, kernel, stride, padding, dilation, out_hw, pad_value=0.0):
    """Patches of an NCHW array as [N, C, kh, kw, Ho, Wo] (the im2col of the reference)."""
    n, c = x.shape[:2]
    ho, wo = out_hw
    # Pad the end further when ceil_mode lets the last window run past the padding.
    extra = [max(0, (out_hw[i] - 1) * stride[i] + dilation[i] * (kernel[i] - 1) + 1
                 - (x.shape[2 + i] + padding[i] + padding[i + 2])) for i in range(2)]
    padded = x
    if any(padding) or any(extra):
        padded = np.pad(x, ((0, 0), (0, 0), (padding[0], padding[2] + extra[0]),
                            (padding[1], padding[3] + extra[1])), constant_values=pad_value)
    patches = np.empty((n, c, kernel[0], kernel[1], ho, wo), dtype=x.dtype)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            top, left = i * dilation[0], j * dilation[1]
            patches[:, :, i, j] = padded[:, :, top:top + stride[0] * (ho - 1) + 1:stride[0],
                                         left:left + stride[1] * (wo - 1) + 1:stride[1]]
    return patches


def conv2d_nchw(x, w, stride, padding, dilation, groups, accumulate=np.float32):
    """Grouped 2-D convolution by im2col and one batched matmul, accumulating in ``accumulate``."""
    n = x.shape[0]
    out_channels, group_channels, kh, kw = w.shape
    out_hw = output_hw(x.shape, (kh, kw), stride, padding, dilation)
    patches = extract_windows(x.astype(accumulate), (kh, kw), stride, padding, dilation, out_hw)
    columns = patches.reshape(n, groups, group_channels * kh * kw, out_hw[0] * out_hw[1])
    weights = w.astype(accumulate).reshape(1, groups, out_channels // groups, -1)
    out = np.matmul(weights, columns)
    return out.reshape(n, out_channels, out_hw[0], out_hw[1])


def conv2d_reference(xs, a):
    x, w, b = xs
    out = conv2d_nchw(x, w, a["stride"], a["padding"], a["dilation"], a["groups"])
    return out if b is None else out + b.reshape(1, -1, 1, 1)


def linear_reference(xs, a):
    x, w, b = xs
    out = np.matmul(x, w.T)
    return out if b is None else out + b


def batch_norm_reference(xs, a):
    x, mean, var, weight, bias = xs
    shape = (1, -1) + (1,) * (x.ndim - 2)
    scale = 1.0 / np.sqrt(var.astype(np.float64) + a["eps"])
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
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


def max_pool_reference(xs, a):
    x = xs[0]
    out_hw = output_hw(x.shape, a["kernel"], a["stride"], a["padding"], a["dilation"],
                       a["ceil_mode"])
    lowest = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    windows = extract_windows(x, a["kernel"], a["stride"], a["padding"], a["dilation"], out_hw,
                              pad_value=lowest)
    return windows.max(axis=(2, 3))


def avg_pool_reference(xs, a):
    x = xs[0]
    kernel, stride, padding = a["kernel"], a["stride"], a["padding"]
    out_hw = output_hw(x.shape, kernel, stride, padding, PAIR_ONES, a["ceil_mode"])
    sums = extract_windows(x, kernel, stride, padding, PAIR_ONES, out_hw).sum(axis=(2, 3))
    # The divisor counts the input taps, plus the padding taps when count_include_pad; taps
    # that ceil_mode adds past the padding never count (torch's rule).
    counted = np.ones((1, 1) + x.shape[2:], dtype=np.float32)
    if a["count_include_pad"]:
        counted = np.pad(counted, ((0, 0), (0, 0), (padding[0], padding[2]),
                                   (padding[1], padding[3])), constant_values=1.0)
        padding = NO_PADDING
    divisor = extract_windows(counted, kernel, stride, padding, PAIR_ONES, out_hw).sum(axis=(2, 3))
    return sums / divisor


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


kernel("conv2d")(without_types(in_float32(conv2d_reference)))
kernel("linear")(without_types(in_float32(linear_reference)))
kernel("matmul")(without_types(in_float32(lambda xs, a: np.matmul(xs[0], xs[1]))))
kernel("batch_norm")(without_types(in_float32(batch_norm_reference)))
kernel("layer_norm")(without_types(in_float32(layer_norm_reference)))
kernel("softmax")(without_types(in_float32(softmax_reference)))
kernel("max_pool2d")(without_types(max_pool_reference))
kernel("avg_pool2d")(without_types(in_float32(avg_pool_reference)))
kernel("adaptive_avg_pool2d")(without_types(in_float32(adaptive_avg_pool_reference)))
