"""Neural-network ops: convolution, linear layers, matmul, normalization, softmax, pooling.

Layouts follow PyTorch: activations NCHW, conv weights OIHW, linear weights [out, in].
Spatial padding is [top, left, bottom, right].
"""

from __future__ import annotations

import numpy as np

from ..dims import Dim
from ..ir import TensorType
from .common import (broadcast_shapes, elements, in_float32, normalize_axis, require_float,
                     require_rank, require_same_dtype, window_output_size)
from .registry import Attr, define

PAIR_ONES = (1, 1)
NO_PADDING = (0, 0, 0, 0)


def _check_pair(name, values, length=2):
    if len(values) != length:
        raise ValueError(f"{name} takes {length} values, got {list(values)}")
    if any(v < 0 for v in values):
        raise ValueError(f"{name} must not be negative, got {list(values)}")


def spatial_output(shape, kernel, stride, padding, dilation, ceil_mode=False) -> tuple[Dim, Dim]:
    """Output (H, W) of a 2-D sliding window over an NCHW shape."""
    _check_pair("stride", stride)
    _check_pair("padding", padding, 4)
    _check_pair("dilation", dilation)
    if min(stride) < 1 or min(dilation) < 1:
        raise ValueError("stride and dilation must be at least 1")
    return tuple(window_output_size(shape[2 + i], kernel[i], stride[i], padding[i],
                                    padding[i + 2], dilation[i], ceil_mode) for i in range(2))


def extract_windows(x: np.ndarray, kernel, stride, padding, dilation, out_hw, pad_value=0.0):
    """Patches of an NCHW array as [N, C, kh, kw, Ho, Wo] (the im2col of the reference)."""
    n, c, h, w = x.shape
    ho, wo = out_hw
    # Pad the end further when ceil_mode lets the last window run past the padding.
    extra = [max(0, (out_hw[i] - 1) * stride[i] + dilation[i] * (kernel[i] - 1) + 1
                 - (x.shape[2 + i] + padding[i] + padding[i + 2])) for i in range(2)]
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
    out_hw = spatial_output(x.shape, (kh, kw), stride, padding, dilation)
    patches = extract_windows(x.astype(accumulate), (kh, kw), stride, padding, dilation, out_hw)
    columns = patches.reshape(n, groups, group_channels * kh * kw, out_hw[0] * out_hw[1])
    weights = w.astype(accumulate).reshape(1, groups, out_channels // groups, -1)
    out = np.matmul(weights, columns)
    return out.reshape(n, out_channels, out_hw[0], out_hw[1])


def conv2d_infer(types, a, what="conv2d"):
    x, w = types[0], types[1]
    require_rank(x, 4, "input")
    require_rank(w, 4, "weight")
    groups = a["groups"]
    if groups < 1 or w.shape[0] % groups:
        raise ValueError(f"{w.shape[0]} output channels do not split into {groups} groups")
    if x.shape[1] != w.shape[1] * groups:
        raise ValueError(f"input has {x.shape[1]} channels; weight {w} with groups={groups} "
                         f"expects {w.shape[1] * groups}")
    if len(types) > 2 and types[2] is not None and tuple(types[2].shape) != (w.shape[0],):
        raise ValueError(f"bias must be [{w.shape[0]}], got {types[2]}")
    out_hw = spatial_output(x.shape, w.shape[2:], a["stride"], a["padding"], a["dilation"])
    return (x.shape[0], w.shape[0], *out_hw)


def conv2d_flops(types, results, a):
    w = types[1]
    return 2 * elements(results[0]) * w.shape[1] * w.shape[2] * w.shape[3]


CONV_ATTRS = {
    "stride": Attr("ints", PAIR_ONES, "step between windows (h, w)"),
    "padding": Attr("ints", NO_PADDING, "zero padding [top, left, bottom, right]"),
    "dilation": Attr("ints", PAIR_ONES, "spacing of kernel taps (h, w)"),
    "groups": Attr("int", 1, "channel groups; groups == channels is depthwise"),
}


def _conv2d_reference(xs, a):
    x, w, b = xs
    out = conv2d_nchw(x, w, a["stride"], a["padding"], a["dilation"], a["groups"])
    return out if b is None else out + b.reshape(1, -1, 1, 1)


def _conv2d_type(types, a):
    require_same_dtype(types, "conv2d operands")
    require_float(types[0], "input")
    return TensorType(types[0].dtype, conv2d_infer(types, a))


define("conv2d", "2-D convolution of NCHW input with OIHW weight, optional bias [O].",
       operands=("input", "weight", "bias?"), attrs=CONV_ATTRS, family="nn",
       infer=_conv2d_type, reference=in_float32(_conv2d_reference), flops=conv2d_flops)


def linear_infer(types, what="linear"):
    x, w = types[0], types[1]
    require_rank(w, 2, "weight")
    if x.rank < 1 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"input {x} does not match weight {w} (last dim must be {w.shape[1]})")
    if len(types) > 2 and types[2] is not None and tuple(types[2].shape) != (w.shape[0],):
        raise ValueError(f"bias must be [{w.shape[0]}], got {types[2]}")
    return (*x.shape[:-1], w.shape[0])


def _linear_type(types, a):
    require_same_dtype(types, "linear operands")
    require_float(types[0], "input")
    return TensorType(types[0].dtype, linear_infer(types))


def _linear_reference(xs, a):
    x, w, b = xs
    out = np.matmul(x, w.T)
    return out if b is None else out + b


define("linear", "x @ weight^T + bias over the last axis; weight is [out, in].",
       operands=("input", "weight", "bias?"), family="nn", infer=_linear_type,
       reference=in_float32(_linear_reference),
       flops=lambda types, results, a: 2 * elements(results[0]) * types[1].shape[1])


def matmul_infer(types):
    a, b = types
    if a.rank < 2 or b.rank < 2:
        raise ValueError(f"matmul operands need rank >= 2, got {a} and {b}")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"inner dimensions differ: {a} @ {b}")
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return (*batch, a.shape[-2], b.shape[-1])


def _matmul_type(types, a):
    dtype = require_same_dtype(types, "matmul operands")
    require_float(types[0], "a")
    return TensorType(dtype, matmul_infer(types))


define("matmul", "Batched a @ b with numpy broadcasting of the leading axes.",
       operands=("a", "b"), family="nn", infer=_matmul_type,
       reference=in_float32(lambda xs, a: np.matmul(xs[0], xs[1])),
       flops=lambda types, results, a: 2 * elements(results[0]) * types[0].shape[-1])


def _batch_norm_infer(types, a):
    x = types[0]
    require_float(x, "input")
    if x.rank < 2:
        raise ValueError(f"input needs a channel axis, got {x}")
    for name, t in zip(("mean", "var", "weight", "bias"), types[1:]):
        if t is not None and tuple(t.shape) != (x.shape[1],):
            raise ValueError(f"{name} must be [{x.shape[1]}], got {t}")
    return TensorType(x.dtype, x.shape)


def _batch_norm_reference(xs, a):
    x, mean, var, weight, bias = xs
    shape = (1, -1) + (1,) * (x.ndim - 2)
    scale = 1.0 / np.sqrt(var.astype(np.float64) + a["eps"])
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    return x * scale.astype(np.float32).reshape(shape) + shift.astype(np.float32).reshape(shape)


define("batch_norm", "Inference batch normalization over axis 1 with running mean and var.",
       operands=("input", "mean", "var", "weight?", "bias?"), family="nn",
       attrs={"eps": Attr("float", 1e-5, "added to the variance")},
       infer=_batch_norm_infer, reference=in_float32(_batch_norm_reference),
       flops=lambda types, results, a: 2 * elements(results[0]))


def _layer_norm_infer(types, a):
    x = types[0]
    require_float(x, "input")
    axis = normalize_axis(a["axis"], x.rank)
    for name, t in zip(("weight", "bias"), types[1:]):
        if t is not None and tuple(t.shape) != tuple(x.shape[axis:]):
            raise ValueError(f"{name} must be {list(x.shape[axis:])}, got {t}")
    return TensorType(x.dtype, x.shape)


def _layer_norm_reference(xs, a):
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


define("layer_norm", "Normalize over the axes from `axis` to the last, then scale and shift.",
       operands=("input", "weight?", "bias?"), family="nn",
       attrs={"axis": Attr("int", -1, "first normalized axis"),
              "eps": Attr("float", 1e-5, "added to the variance")},
       infer=_layer_norm_infer, reference=in_float32(_layer_norm_reference),
       flops=lambda types, results, a: 8 * elements(results[0]))


def _softmax_infer(types, a):
    require_float(types[0], "input")
    normalize_axis(a["axis"], types[0].rank)
    return TensorType(types[0].dtype, types[0].shape)


def _softmax_reference(xs, a):
    x = xs[0].astype(np.float64)
    shifted = np.exp(x - x.max(axis=a["axis"], keepdims=True))
    return shifted / shifted.sum(axis=a["axis"], keepdims=True)


define("softmax", "exp(x) / sum(exp(x)) along `axis`.", operands=("input",), family="nn",
       attrs={"axis": Attr("int", -1, "axis normalized over")},
       infer=_softmax_infer, reference=in_float32(_softmax_reference),
       flops=lambda types, results, a: 5 * elements(results[0]))


POOL_ATTRS = {
    "kernel": Attr("ints", doc="window (h, w)"),
    "stride": Attr("ints", PAIR_ONES, "step between windows (h, w)"),
    "padding": Attr("ints", NO_PADDING, "padding [top, left, bottom, right]"),
    "ceil_mode": Attr("bool", False, "round the output size up"),
}


def _pool_infer(types, a):
    x = types[0]
    require_rank(x, 4, "input")
    _check_pair("kernel", a["kernel"])
    dilation = a.get("dilation", PAIR_ONES)
    out_hw = spatial_output(x.shape, a["kernel"], a["stride"], a["padding"], dilation,
                            a["ceil_mode"])
    return TensorType(x.dtype, (x.shape[0], x.shape[1], *out_hw))


def _max_pool_infer(types, a):
    # A max of quantized values is the quantized max (scales are positive): parameters carry over.
    x = types[0]
    if x.quant is not None and x.quant.per_axis:
        raise ValueError(f"input must be float or quantized per tensor, got {x}")
    return _pool_infer(types, a).with_dtype(x.dtype, x.quant)


def _avg_pool_infer(types, a):
    require_float(types[0], "input")
    return _pool_infer(types, a)


def _max_pool_reference(xs, a):
    x = xs[0]
    out_hw = spatial_output(x.shape, a["kernel"], a["stride"], a["padding"], a["dilation"],
                            a["ceil_mode"])
    lowest = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    windows = extract_windows(x, a["kernel"], a["stride"], a["padding"], a["dilation"], out_hw,
                              pad_value=lowest)
    return windows.max(axis=(2, 3))


define("max_pool2d", "Max over sliding windows of NCHW input (padding never wins); quantized "
       "input keeps its parameters.",
       operands=("input",), family="nn",
       attrs={**POOL_ATTRS, "dilation": Attr("ints", PAIR_ONES, "spacing of window taps")},
       infer=_max_pool_infer, reference=_max_pool_reference,
       flops=lambda types, results, a: elements(results[0]) * a["kernel"][0] * a["kernel"][1])


def _avg_pool_reference(xs, a):
    x = xs[0]
    kernel, stride, padding = a["kernel"], a["stride"], a["padding"]
    out_hw = spatial_output(x.shape, kernel, stride, padding, PAIR_ONES, a["ceil_mode"])
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


define("avg_pool2d", "Mean over sliding windows of NCHW input.", operands=("input",),
       family="nn",
       attrs={**POOL_ATTRS,
              "count_include_pad": Attr("bool", True, "padding taps count in the divisor")},
       infer=_avg_pool_infer, reference=in_float32(_avg_pool_reference),
       flops=lambda types, results, a: elements(results[0]) * a["kernel"][0] * a["kernel"][1])


def _adaptive_infer(types, a):
    x = types[0]
    require_rank(x, 4, "input")
    _check_pair("output_size", a["output_size"])
    if min(a["output_size"]) < 1:
        raise ValueError(f"output_size must be positive, got {list(a['output_size'])}")
    return TensorType(x.dtype, (x.shape[0], x.shape[1], *a["output_size"]))


def _adaptive_reference(xs, a):
    x = xs[0]
    (h, w), (oh, ow) = x.shape[2:], a["output_size"]
    out = np.empty(x.shape[:2] + (oh, ow), dtype=np.float32)
    for i in range(oh):
        top, bottom = (i * h) // oh, -(-((i + 1) * h) // oh)
        for j in range(ow):
            left, right = (j * w) // ow, -(-((j + 1) * w) // ow)
            out[:, :, i, j] = x[:, :, top:bottom, left:right].mean(axis=(2, 3), dtype=np.float64)
    return out


define("adaptive_avg_pool2d", "Mean over the bins that split H and W into `output_size`.",
       operands=("input",), family="nn",
       attrs={"output_size": Attr("ints", doc="output (h, w)")},
       infer=_adaptive_infer, reference=in_float32(_adaptive_reference),
       flops=lambda types, results, a: elements(types[0]))
