"""Neural-network ops: convolution, linear layers, matmul, normalization, softmax, pooling.

Layouts follow PyTorch: activations NCHW, conv weights OIHW, linear weights [out, in].
Spatial padding is [top, left, bottom, right].
"""

from __future__ import annotations

import numpy as np

# The numpy arithmetic lives in the runtime's CPU ops; conv2d_nchw and extract_windows are
# re-exported for the other families and for tests.
from nimbus.runtime.cpu_ops.nn import NO_PADDING, PAIR_ONES, conv2d_nchw, extract_windows  # noqa: F401
from nimbus.runtime.cpu_ops.nn import adaptive_avg_pool_reference as _adaptive_reference
from nimbus.runtime.cpu_ops.nn import avg_pool_reference as _avg_pool_reference
from nimbus.runtime.cpu_ops.nn import batch_norm_reference as _batch_norm_reference
from nimbus.runtime.cpu_ops.nn import conv2d_reference as _conv2d_reference
from nimbus.runtime.cpu_ops.nn import layer_norm_reference as _layer_norm_reference
from nimbus.runtime.cpu_ops.nn import linear_reference as _linear_reference
from nimbus.runtime.cpu_ops.nn import max_pool_reference as _max_pool_reference
from nimbus.runtime.cpu_ops.nn import resize_reference as _resize_reference
from nimbus.runtime.cpu_ops.nn import softmax_reference as _softmax_reference

from ..dims import Dim
from ..ir import TensorType
from .common import (
    broadcast_shapes,
    elements,
    in_float32,
    normalize_axis,
    require_float,
    require_rank,
    require_same_dtype,
    window_output_size,
)
from .registry import Attr, define


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


define("max_pool2d", "Max over sliding windows of NCHW input (padding never wins); quantized "
       "input keeps its parameters.",
       operands=("input",), family="nn",
       attrs={**POOL_ATTRS, "dilation": Attr("ints", PAIR_ONES, "spacing of window taps")},
       infer=_max_pool_infer, reference=_max_pool_reference,
       flops=lambda types, results, a: elements(results[0]) * a["kernel"][0] * a["kernel"][1])


define("avg_pool2d", "Mean over sliding windows of NCHW input.", operands=("input",),
       family="nn",
       attrs={**POOL_ATTRS,
              "count_include_pad": Attr("bool", True, "padding taps count in the divisor")},
       infer=_avg_pool_infer, reference=in_float32(_avg_pool_reference),
       flops=lambda types, results, a: elements(results[0]) * a["kernel"][0] * a["kernel"][1])


def _resized(x: TensorType, name: str, size) -> TensorType:
    """NCHW x with H and W replaced by `size` (the attribute `name`), checked."""
    require_rank(x, 4, "input")
    _check_pair(name, size)
    if min(size) < 1:
        raise ValueError(f"{name} must be positive, got {list(size)}")
    return TensorType(x.dtype, (x.shape[0], x.shape[1], *size))


def _adaptive_infer(types, a):
    return _resized(types[0], "output_size", a["output_size"])


define("adaptive_avg_pool2d", "Mean over the bins that split H and W into `output_size`.",
       operands=("input",), family="nn",
       attrs={"output_size": Attr("ints", doc="output (h, w)")},
       infer=_adaptive_infer, reference=in_float32(_adaptive_reference),
       flops=lambda types, results, a: elements(types[0]))


def _resize_infer(types, a):
    x = types[0]
    if a["mode"] not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got '{a['mode']}'")
    if a["align_corners"] and a["mode"] == "nearest":
        raise ValueError("align_corners is for bilinear resizing")
    if a["scale"] is not None and (len(a["scale"]) != 2 or min(a["scale"]) <= 0):
        raise ValueError(f"scale must be two positive factors, got {list(a['scale'])}")
    if not x.dtype.is_float:
        raise ValueError(f"input must be float, got {x}")
    return _resized(x, "size", a["size"])


define("resize", "Resize H and W of NCHW input to `size`, bilinear or nearest, with torch's "
       "coordinate mapping (F.interpolate).",
       operands=("input",), family="nn",
       attrs={"size": Attr("ints", doc="output (h, w)"),
              "mode": Attr("str", "bilinear", "bilinear or nearest"),
              "align_corners": Attr("bool", False, "corner pixels' centres map onto each other"),
              "scale": Attr("floats?", None, "the (h, w) factors the size came from: the "
                                             "coordinate ratio is then 1 / scale")},
       infer=_resize_infer, reference=in_float32(_resize_reference),
       flops=lambda types, results, a: 4 * elements(results[0]))
