"""Step launchers of the CUDA backend: each plan step becomes one callable over torch tensors.

Imported only when a CUDA session is made (it imports torch and the Triton kernel library).
`build(step, context)` runs once per step at load time: it checks what the step needs (weights
symmetric int8, an elementwise region the templates cover, ...), pre-packs constant weights on
the device (int8 GEMM / conv packing with column sums, float linear weights transposed to
[K, N], conv weights OHWI) and precomputes the integer epilogue (per-channel multipliers, clamp
bounds carrying a fused ReLU/ReLU6, residual factors) with the CPU backend's own functions
(`requant_multiplier`, `activation_bounds`), so both backends round the same float32 values.

Layout: the plan is NCHW. The conv kernels take NHWC, so a conv permutes its input to NHWC
(`_nhwc`: free when the tensor is already channels-last) and returns its NHWC result viewed as
NCHW (`_nchw`: a channels-last NCHW view, no copy). Consecutive convs therefore exchange NHWC
data with no layout change, and ops in between (elementwise, pooling, shape ops) read the
channels-last view through its strides. Results are made contiguous only when they leave the
session.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from nimbus.kernels.triton import attention as tri_attention
from nimbus.kernels.triton import conv as tri_conv
from nimbus.kernels.triton import elementwise as tri_elementwise
from nimbus.kernels.triton import gemm as tri_gemm
from nimbus.kernels.triton import layernorm as tri_layernorm
from nimbus.kernels.triton import quantize as tri_quantize
from nimbus.kernels.triton import softmax as tri_softmax

from ..cpu_ops.common import normalize_axis, numpy_dtype
from ..cpu_ops.elementwise import ATTR_DEFAULTS, ELEMENTWISE_OPS
from ..cpu_ops.nn import output_hw
from ..cpu_ops.quant import CLAMP_ACTIVATIONS, activation_bounds, requant_multiplier
from ..cpu_ops.reduce import reduced_axes
from ..cpu_ops.shape import SLICE_TO_END

TORCH_DTYPES = {
    "f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16, "i8": torch.int8,
    "u8": torch.uint8, "i32": torch.int32, "i64": torch.int64, "bool": torch.bool,
}
FLOAT_TORCH = (torch.float32, torch.float16, torch.bfloat16)
_CONV_RESULTS = {"u8": "u8", "i8": "s8"}  # plan dtype -> conv.qconv2d's out_dtype name


class Unsupported(Exception):
    """This step cannot run on the CUDA backend; the message says why."""


@dataclass
class Launcher:
    """How one step runs: `name` for the kernel table, `run(operands, attrs) -> results`, and
    the operand positions that were consumed at load time (pre-packed constant weights)."""

    name: str
    run: Callable[[list, dict], list]
    packed: frozenset = frozenset()


class Context:
    """What builders need at load time: the device and the plan's constant arrays by slot."""

    def __init__(self, device: torch.device, constants: list):
        self.device = device
        self.constants = constants

    def constant(self, slot):
        """The numpy array of a constant slot, or None for an activation (or absent operand)."""
        return None if slot is None else self.constants[slot]

    def tensor(self, array: np.ndarray) -> torch.Tensor:
        return to_device(array, self.device)


def to_device(array: np.ndarray, device) -> torch.Tensor:
    """A torch copy of a numpy array on `device` (bf16 goes through its 16-bit pattern)."""
    array = np.asarray(array)
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(np.array(array.view(np.uint16))).view(torch.bfloat16).to(device)
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.array(array, order="C")
    return torch.from_numpy(array).to(device)


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A numpy copy of a device tensor (never a view of session or device memory)."""
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        bits = tensor.view(torch.int16).to("cpu", copy=True).contiguous().numpy()
        return bits.view(numpy_dtype("bf16"))
    return tensor.to("cpu", copy=True).contiguous().numpy()


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).contiguous()


def _nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def _operands(xs: list, count: int) -> list:
    return list(xs) + [None] * (count - len(xs))


def _geometry(attrs: dict) -> dict:
    return {"stride": tuple(attrs["stride"]), "padding": tuple(attrs["padding"]),
            "dilation": tuple(attrs["dilation"])}


# ---- quantization parameters --------------------------------------------------------------------
def _input_quant(step, index: int = 0):
    info = step.types[index]
    if info is None or info.quant is None:
        raise Unsupported(f"operand {index} has no quantization parameters")
    if len(info.scale) != 1:
        raise Unsupported(f"operand {index} is quantized per axis; the kernels take one scale")
    return float(info.scale[0]), int(info.zero_point[0])


def _weight_quant(step):
    info = step.types[1]
    if info is None or info.quant is None or info.dtype != "i8":
        raise Unsupported("the weights are not int8 with quantization parameters")
    if any(info.zero_point):
        raise Unsupported("the weights are asymmetric (non-zero zero points); the int8 kernels "
                          "take symmetric weights")
    return np.asarray(info.scale, dtype=np.float32)


def _residual_factor(step, output_scale: float):
    """(zero point, f32(s_r / s_out)) of a quantized residual (s_out = 1 for f32 results), as
    the CPU backend's `residual_term` computes them; None without a residual operand."""
    info = step.types[3] if len(step.types) > 3 else None
    if info is None:
        return None
    if info.quant is None or len(info.scale) != 1:
        raise Unsupported("the residual must be quantized per tensor")
    factor = np.float32(np.float64(np.float32(info.scale[0])) / np.float64(np.float32(output_scale)))
    return int(info.zero_point[0]), factor


def _channels(values: np.ndarray, count: int) -> np.ndarray:
    return np.ascontiguousarray(np.broadcast_to(np.asarray(values, np.float32), (count,)))


def _f32_activation(out: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "relu":
        return torch.clamp_min(out, 0.0)
    if activation == "relu6":
        return torch.clamp(out, 0.0, 6.0)
    return out


# ---- layers -------------------------------------------------------------------------------------
def _linear(step, ctx: Context) -> Launcher:
    weight = ctx.constant(step.operands[1])
    packed = None if weight is None else tri_gemm.pack_float_weights(ctx.tensor(weight))
    activation = step.attrs.get("activation", "none")

    def run(xs, attrs):
        x, w, bias, residual = _operands(xs, 4)
        weights = packed if packed is not None else tri_gemm.pack_float_weights(w)
        if residual is not None:  # the op lets it broadcast; the kernel reads the full shape
            residual = torch.broadcast_to(residual, (*x.shape[:-1], weights.shape[1]))
        return [tri_gemm.gemm(x, weights, bias, residual, activation)]

    return Launcher("triton:gemm.gemm", run, frozenset({1}) if packed is not None else frozenset())


def _conv(step, ctx: Context) -> Launcher:
    groups = step.attrs["groups"]
    weight = ctx.constant(step.operands[1])
    packed = None if weight is None else tri_conv.pack_conv_weights(ctx.tensor(weight), groups)
    activation = step.attrs.get("activation", "none")
    geometry = _geometry(step.attrs)

    def run(xs, attrs):
        x, w, bias, residual = _operands(xs, 4)
        weights = packed if packed is not None else tri_conv.pack_conv_weights(w, groups)
        if residual is not None:
            out_hw = output_hw(x.shape, weights.kernel, geometry["stride"], geometry["padding"],
                               geometry["dilation"])
            residual = _nhwc(torch.broadcast_to(residual, (x.shape[0], weights.out_channels, *out_hw)))
        out = tri_conv.conv2d(_nhwc(x), weights, bias, residual, activation=activation, **geometry)
        return [_nchw(out)]

    return Launcher("triton:conv.conv2d", run, frozenset({1}) if packed is not None else frozenset())


def _integer_layer(step) -> tuple[float, int, list, str]:
    """(input scale, input zero point, weight scales, result dtype) of a qconv2d / qlinear step
    whose result type the integer kernels support."""
    input_scale, input_zero = _input_quant(step)
    out_dtype = str(step.attrs["dtype"])
    if out_dtype not in ("u8", "i8", "f32"):
        raise Unsupported(f"result dtype {out_dtype} has no kernel")
    return input_scale, input_zero, _weight_quant(step), out_dtype


def _quantized_after(step, out_dtype: str, ctx: Context):
    """A float activation (gelu, silu, ...) runs on the f32 result, which a quantized result's
    own quantize kernel then quantizes, as the op defines it: that quantization, else None."""
    a = step.attrs
    if out_dtype == "f32" or a["activation"] in CLAMP_ACTIVATIONS:
        return None
    return tri_quantize.QuantParameters(a["scale"], (a["zero_point"],), None,
                                        len(step.types[0].shape), ctx.device)


def _qconv(step, ctx: Context) -> Launcher:
    a = step.attrs
    input_scale, input_zero, weight_scales, out_dtype = _integer_layer(step)
    groups, geometry = a["groups"], _geometry(a)
    channels = int(step.types[1].shape[0])
    weight = ctx.constant(step.operands[1])
    packed = None if weight is None else tri_conv.pack_conv_weights(ctx.tensor(weight), groups)
    quantized_after = _quantized_after(step, out_dtype, ctx)
    residual_info = _residual_factor(step, 1.0 if out_dtype == "f32" else a["scale"])
    if out_dtype == "f32" or quantized_after is not None:
        multiplier = requant_multiplier(input_scale, weight_scales)
        lo = hi = zero_point = 0
    else:
        multiplier = requant_multiplier(input_scale, weight_scales, a["scale"])
        lo, hi = activation_bounds(a["activation"], out_dtype, a["scale"], a["zero_point"])
        zero_point = int(a["zero_point"])
    multiplier = ctx.tensor(_channels(multiplier, channels))

    def run(xs, attrs):
        x, w, bias, residual = _operands(xs, 4)
        weights = packed if packed is not None else tri_conv.pack_conv_weights(w, groups)
        quantized_residual = None
        if residual is not None:  # added in the kernel's epilogue, laid out like its result
            out_hw = output_hw(x.shape, weights.kernel, geometry["stride"], geometry["padding"],
                               geometry["dilation"])
            quantized_residual = tri_conv.QuantizedResidual(
                _nhwc(torch.broadcast_to(residual, (x.shape[0], channels, *out_hw))),
                residual_info[0], float(residual_info[1]))
        x = _nhwc(x)
        if quantized_after is not None:
            out = tri_quantize.quantize(
                tri_conv.qconv2d_f32(x, weights, input_zero, bias, multiplier,
                                     activation=a["activation"], **geometry),
                quantized_after, out_dtype)
        elif out_dtype == "f32":
            out = tri_conv.qconv2d_f32(x, weights, input_zero, bias, multiplier,
                                       activation=a["activation"], residual=quantized_residual,
                                       **geometry)
        else:
            out = tri_conv.qconv2d(x, weights, input_zero, bias, multiplier, zero_point, lo, hi,
                                   _CONV_RESULTS[out_dtype], residual=quantized_residual,
                                   **geometry)
        return [_nchw(out)]

    name = ("triton:conv.qconv2d_f32" if out_dtype == "f32" or quantized_after is not None
            else "triton:conv.qconv2d")
    return Launcher(name, run, frozenset({1}) if packed is not None else frozenset())


def _qlinear(step, ctx: Context) -> Launcher:
    a = step.attrs
    input_scale, input_zero, weight_scales, out_dtype = _integer_layer(step)
    channels = int(step.types[1].shape[0])
    weight = ctx.constant(step.operands[1])
    packed = None if weight is None else tri_gemm.pack_weights(ctx.tensor(weight))
    quantized_after = _quantized_after(step, out_dtype, ctx)
    residual_info = _residual_factor(step, 1.0 if out_dtype == "f32" else a["scale"])
    residual_zero, residual_scale = residual_info if residual_info else (0, 0.0)
    if out_dtype == "f32" or quantized_after is not None:
        scale = requant_multiplier(input_scale, weight_scales)
        options = {"activation": a["activation"]}
    else:
        scale = requant_multiplier(input_scale, weight_scales, a["scale"])
        lo, hi = activation_bounds(a["activation"], out_dtype, a["scale"], a["zero_point"])
        options = {"zero_point": int(a["zero_point"]), "lo": lo, "hi": hi}
    scale = ctx.tensor(_channels(scale, channels))

    def run(xs, attrs):
        x, w, bias, residual = _operands(xs, 4)
        weights = packed if packed is not None else tri_gemm.pack_weights(w)
        if residual is not None:
            residual = torch.broadcast_to(residual, (*x.shape[:-1], channels))
        epilogue = tri_gemm.QuantEpilogue(
            out_dtype="f32" if quantized_after is not None else out_dtype, bias=bias,
            scale=scale, residual=residual, residual_zero_point=residual_zero,
            residual_scale=float(residual_scale), **options)
        out = tri_gemm.qgemm(x, input_zero, weights, epilogue)
        if quantized_after is not None:
            out = tri_quantize.quantize(out, quantized_after, out_dtype)
        return [out]

    return Launcher("triton:gemm.qgemm", run, frozenset({1}) if packed is not None else frozenset())


# ---- elementwise, softmax, layer_norm, attention ------------------------------------------------
def single_op_expr(op: str, attrs: dict, count: int) -> str:
    """The canonical fused_elementwise text of one elementwise op over inputs $0..$count-1.

    Same grammar as the compiler's printer (nimbus.compiler.ops.fused.Expr.__str__): attributes
    in schema order, only those that differ from their defaults, floats as repr, dtypes by name.
    """
    defaults = {"dtype": None} if op == "cast" else ATTR_DEFAULTS.get(op, {})
    unknown = sorted(set(attrs) - set(defaults))
    if unknown:
        raise Unsupported(f"unexpected attribute(s) {unknown} for elementwise op {op}")
    shown = []
    for name, default in defaults.items():
        value = attrs.get(name, default)
        if value == default and op != "cast":
            continue
        if op == "clamp":
            text = repr(float(value))
        else:
            text = str(value)
        shown.append(f"{name}={text}")
    inner = ",".join(f"${i}" for i in range(count))
    return f"{op}{'[' + ','.join(shown) + ']' if shown else ''}({inner})"


def _elementwise(step, ctx: Context) -> Launcher:
    if step.op == "fused_elementwise":
        expr = step.attrs["expr"]
    else:
        expr = single_op_expr(step.op, step.attrs, len(step.operands))
    dtypes = [info.dtype for info in step.types]
    try:
        problems = tri_elementwise.unsupported(expr, dtypes)
    except ValueError as err:
        raise Unsupported(str(err)) from None
    if problems:
        raise Unsupported("; ".join(problems))

    def run(xs, attrs):
        return [tri_elementwise.fused_elementwise(expr, list(xs))]

    return Launcher("triton:elementwise.fused_elementwise", run)


def _softmax(step, ctx: Context) -> Launcher:
    def run(xs, attrs):
        x = xs[0]
        axis = normalize_axis(attrs["axis"], x.dim())
        if axis == x.dim() - 1:
            return [tri_softmax.softmax(x.contiguous())]
        return [tri_softmax.softmax(x.movedim(axis, -1).contiguous()).movedim(-1, axis)]

    return Launcher("triton:softmax.softmax", run)


def _layer_norm(step, ctx: Context) -> Launcher:
    def run(xs, attrs):
        x, weight, bias = _operands(xs, 3)
        axis = normalize_axis(attrs["axis"], x.dim())
        rows = x.reshape(*x.shape[:axis], -1).contiguous()  # normalized axes as one last axis
        weight = None if weight is None else weight.reshape(-1).contiguous()
        bias = None if bias is None else bias.reshape(-1).contiguous()
        return [tri_layernorm.layer_norm(rows, weight, bias, attrs["eps"]).reshape(x.shape)]

    return Launcher("triton:layernorm.layer_norm", run)


def _attention(step, ctx: Context) -> Launcher:
    def run(xs, attrs):
        q, k, v, mask = _operands(xs, 4)
        rank = q.dim()
        if rank == 4:
            return [tri_attention.attention(q, k, v, mask, attrs["scale"])]
        if rank == 3:  # [B, L, D]: one head
            if mask is not None and mask.dim() == 3:
                mask = mask.unsqueeze(1)
            out = tri_attention.attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), mask,
                                          attrs["scale"])
            return [out.squeeze(1)]
        raise ValueError(f"attention on rank-{rank} operands has no kernel (ranks 3 and 4)")

    return Launcher("triton:attention.attention", run)


# ---- layout ops (torch, data movement) ----------------------------------------------------------
def _slice(x, attrs):
    axis, step = normalize_axis(attrs["axis"], x.dim()), attrs["step"]
    window = slice(attrs["start"], min(attrs["end"], SLICE_TO_END), step)
    if step > 0:
        index = [slice(None)] * x.dim()
        index[axis] = window
        return x[tuple(index)]
    positions = torch.arange(*window.indices(x.shape[axis]), dtype=torch.int64, device=x.device)
    return torch.index_select(x, axis, positions)


def _gather(data, indices, attrs):
    axis = normalize_axis(attrs["axis"], data.dim())
    size = data.shape[axis]
    flat = indices.reshape(-1).to(torch.int64)
    # A CUDA graph cannot read the indices on the host: the session checks them before the
    # replay instead (CudaSession._gather_index_bounds).
    if (flat.numel() and not (flat.is_cuda and torch.cuda.is_current_stream_capturing())
            and bool(((flat < -size) | (flat >= size)).any())):
        raise IndexError(f"gather index out of range [-{size}, {size})")
    flat = torch.where(flat < 0, flat + size, flat)
    picked = torch.index_select(data, axis, flat)
    return picked.reshape(*data.shape[:axis], *indices.shape, *data.shape[axis + 1:])


def _scalar(value, dtype: str):
    """`value` as numpy converts it to `dtype` (the CPU backend's np.full / np.pad)."""
    if dtype in ("f32", "f16", "bf16"):
        return float(value)
    return np.asarray(value).astype(numpy_dtype(dtype)).item()


def _pad(x, attrs):
    pads, rank = attrs["pads"], x.dim()
    widths = []
    for axis in reversed(range(rank)):
        widths += [pads[axis], pads[axis + rank]]
    dtype = next(name for name, t in TORCH_DTYPES.items() if t == x.dtype)
    return F.pad(x, widths, value=_scalar(attrs["value"], dtype)) if widths else x


LAYOUT = {
    "reshape": lambda xs, a: [xs[0].reshape(a["shape"])],
    "permute": lambda xs, a: [xs[0].permute(a["perm"])],
    "expand": lambda xs, a: [xs[0].expand(a["shape"])],
    "slice": lambda xs, a: [_slice(xs[0], a)],
    "split": lambda xs, a: list(torch.split(xs[0], list(a["sizes"]), dim=a["axis"])),
    "concat": lambda xs, a: [torch.cat(list(xs), dim=a["axis"])],
    "gather": lambda xs, a: [_gather(xs[0], xs[1], a)],
    "pad": lambda xs, a: [_pad(xs[0], a)],
}


# ---- torch fallbacks (compute ops without a Triton kernel) --------------------------------------
def _windows(x, kernel, stride, padding, dilation, out_hw, pad_value):
    """[N, C, Ho, Wo, kh, kw] windows of NCHW x, as the CPU backend's extract_windows."""
    extra = [max(0, (out_hw[i] - 1) * stride[i] + dilation[i] * (kernel[i] - 1) + 1
                 - (x.shape[2 + i] + padding[i] + padding[i + 2])) for i in range(2)]
    padded = F.pad(x, (padding[1], padding[3] + extra[1], padding[0], padding[2] + extra[0]),
                   value=pad_value)
    spans = [dilation[i] * (kernel[i] - 1) + 1 for i in range(2)]
    windows = padded.unfold(2, spans[0], stride[0]).unfold(3, spans[1], stride[1])
    return windows[:, :, :out_hw[0], :out_hw[1], ::dilation[0], ::dilation[1]]


def _max_pool(xs, a):
    x = xs[0]
    out_hw = output_hw(x.shape, a["kernel"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"])
    lowest = -math.inf if x.is_floating_point() else torch.iinfo(x.dtype).min
    windows = _windows(x, a["kernel"], a["stride"], a["padding"], a["dilation"], out_hw, lowest)
    return [windows.amax(dim=(-2, -1))]


def _avg_pool(xs, a):
    x = xs[0]
    kernel, stride, padding, ones = a["kernel"], a["stride"], a["padding"], (1, 1)
    out_hw = output_hw(x.shape, kernel, stride, padding, ones, a["ceil_mode"])
    sums = _windows(x.to(torch.float32), kernel, stride, padding, ones, out_hw, 0.0).sum(dim=(-2, -1))
    counted = torch.ones((1, 1, *x.shape[2:]), dtype=torch.float32, device=x.device)
    if a["count_include_pad"]:
        counted = F.pad(counted, (padding[1], padding[3], padding[0], padding[2]), value=1.0)
        padding = (0, 0, 0, 0)
    divisor = _windows(counted, kernel, stride, padding, ones, out_hw, 0.0).sum(dim=(-2, -1))
    return [(sums / divisor).to(x.dtype)]


def _adaptive_avg_pool(xs, a):
    x = xs[0]
    return [F.adaptive_avg_pool2d(x.to(torch.float64), tuple(a["output_size"])).to(x.dtype)]


def _resize(xs, a):
    """F.interpolate with the op's size, or its scale factors where it has them (which set
    torch's coordinate ratio, as on the CPU); float32 arithmetic for 16-bit inputs."""
    x = xs[0]
    options = {"mode": a["mode"]}
    if a["mode"] == "bilinear":
        options["align_corners"] = a["align_corners"]
    if a["scale"]:
        options.update(scale_factor=tuple(a["scale"]), recompute_scale_factor=False)
    else:
        options["size"] = tuple(a["size"])
    return [F.interpolate(x.to(torch.float32), **options).to(x.dtype)]


def _batch_norm(xs, a):
    x, mean, var, weight, bias = _operands(xs, 5)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    scale = 1.0 / torch.sqrt(var.to(torch.float64) + a["eps"])
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    out = x.to(torch.float32) * scale.to(torch.float32).reshape(shape) + shift.to(torch.float32).reshape(shape)
    return [out.to(x.dtype)]


_TORCH_ACTIVATIONS = {
    "none": lambda t: t, "relu": torch.relu, "relu6": lambda t: torch.clamp(t, 0.0, 6.0),
    "gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"), "silu": F.silu,
    "sigmoid": torch.sigmoid, "tanh": torch.tanh, "hardswish": F.hardswish,
}


def _matmul(xs, a):
    return [torch.matmul(xs[0].to(torch.float32), xs[1].to(torch.float32)).to(xs[0].dtype)]


def _fused_matmul(xs, a):
    x, y, residual = _operands(xs, 3)
    out = torch.matmul(x.to(torch.float32), y.to(torch.float32))
    if residual is not None:
        out = out + residual.to(torch.float32)
    return [_TORCH_ACTIVATIONS[a["activation"]](out).to(x.dtype)]


def _reduction(kind):
    def run(xs, a):
        x = xs[0]
        axes = tuple(sorted(reduced_axes(a["axes"], x.dim())))
        wide = x.to(torch.float64) if x.is_floating_point() or kind == "mean" else x
        if kind == "mean":
            out = wide.mean(dim=axes, keepdim=a["keepdim"]) if axes else wide
        elif kind == "sum":
            out = wide.sum(dim=axes, keepdim=a["keepdim"]) if axes else wide
        elif kind == "max":
            out = wide.amax(dim=axes, keepdim=a["keepdim"]) if axes else wide
        else:
            out = wide.amin(dim=axes, keepdim=a["keepdim"]) if axes else wide
        return [out.to(x.dtype)]

    return run


def _quantize(step, ctx: Context) -> Launcher:
    a = step.attrs
    params = tri_quantize.QuantParameters(a["scale"], tuple(a["zero_point"]) or (0,), a["axis"],
                                          len(step.types[0].shape), ctx.device)
    dtype = str(a["dtype"])
    if dtype not in tri_quantize.INTEGER_DTYPES:
        raise Unsupported(f"quantize to {dtype} has no kernel")

    def run(xs, attrs):
        return [tri_quantize.quantize(xs[0], params, dtype)]

    return Launcher("triton:quantize.quantize", run)


def _dequantize(step, ctx: Context) -> Launcher:
    info = step.types[0]
    if info is None or info.quant is None:
        raise Unsupported("the operand has no quantization parameters")
    params = tri_quantize.QuantParameters(info.scale, info.zero_point, info.axis, info.rank,
                                          ctx.device)

    def run(xs, attrs):
        return [tri_quantize.dequantize(xs[0], params)]

    return Launcher("triton:quantize.dequantize", run)


TORCH_FALLBACKS = {
    "max_pool2d": _max_pool, "avg_pool2d": _avg_pool, "adaptive_avg_pool2d": _adaptive_avg_pool,
    "batch_norm": _batch_norm, "matmul": _matmul, "fused_matmul": _fused_matmul,
    "mean": _reduction("mean"), "sum": _reduction("sum"), "reduce_max": _reduction("max"),
    "reduce_min": _reduction("min"), "resize": _resize,
}


# ---- the table ----------------------------------------------------------------------------------
BUILDERS = {
    "linear": _linear, "fused_linear": _linear,
    "conv2d": _conv, "fused_conv2d": _conv,
    "qconv2d": _qconv, "qlinear": _qlinear,
    "fused_elementwise": _elementwise,
    "softmax": _softmax, "layer_norm": _layer_norm, "attention": _attention,
    "quantize": _quantize, "dequantize": _dequantize,
}


def _full(step, ctx: Context) -> Launcher:
    device = ctx.device

    def run(xs, a):
        dtype = str(a["dtype"])
        return [torch.full(tuple(a["shape"]), _scalar(a["value"], dtype), dtype=TORCH_DTYPES[dtype],
                           device=device)]

    return Launcher("torch", run)


def build(step, ctx: Context) -> Launcher:
    """The launcher of one validated plan step; raises Unsupported saying why there is none."""
    op = step.op
    if op in BUILDERS:
        return BUILDERS[op](step, ctx)
    if op in ELEMENTWISE_OPS:
        return _elementwise(step, ctx)
    if op == "full":
        return _full(step, ctx)
    if op in LAYOUT:
        return Launcher("torch", LAYOUT[op])
    if op in TORCH_FALLBACKS:
        return Launcher("torch", TORCH_FALLBACKS[op])
    raise Unsupported("no Triton kernel and no torch fallback")
