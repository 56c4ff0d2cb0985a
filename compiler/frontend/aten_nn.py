"""Neural-network ATen ops: convolution, pooling, normalization, softmax, matrix products and
embedding lookups.

torch gives spatial padding per axis ([h, w], applied on both sides); the IR takes
[top, left, bottom, right].
"""

from __future__ import annotations

import torch
import torch.fx

from .context import ConversionContext
from .table import argument, converts, fake_value

aten = torch.ops.aten


def _pair(values) -> list[int]:
    """torch lets one value stand for both spatial axes."""
    values = list(values)
    return values * 2 if len(values) == 1 else values


def _both_sides(padding) -> list[int]:
    height, width = _pair(padding)
    return [height, width, height, width]


def _requires_nchw(node: torch.fx.Node) -> str | None:
    rank = fake_value(node.args[0]).dim()
    return None if rank == 4 else f"rank-{rank} input; only batched 2-D (NCHW) is supported"


def _conv2d_only(node: torch.fx.Node) -> str | None:
    if argument(node, 6, "transposed"):
        return "transposed convolution"
    return _requires_nchw(node)


@converts(aten.convolution.default, check=_conv2d_only)
def convolution(cx: ConversionContext, x, weight, bias, stride, padding, dilation, transposed,
                output_padding, groups):
    return cx.emit("conv2d", x, weight, bias, stride=_pair(stride), padding=_both_sides(padding),
                   dilation=_pair(dilation), groups=groups)


@converts(aten.max_pool2d_with_indices.default, check=_requires_nchw, results=(0,))
def max_pool2d(cx: ConversionContext, x, kernel_size, stride=(), padding=(0,), dilation=(1,),
               ceil_mode=False):
    pooled = cx.emit("max_pool2d", x, kernel=_pair(kernel_size),
                     stride=_pair(stride or kernel_size), padding=_both_sides(padding),
                     dilation=_pair(dilation), ceil_mode=ceil_mode)
    return pooled, None


def _avg_pool_check(node: torch.fx.Node) -> str | None:
    if argument(node, 6, "divisor_override") is not None:
        return "divisor_override"
    return _requires_nchw(node)


@converts(aten.avg_pool2d.default, check=_avg_pool_check)
def avg_pool2d(cx: ConversionContext, x, kernel_size, stride=(), padding=(0,), ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    return cx.emit("avg_pool2d", x, kernel=_pair(kernel_size),
                   stride=_pair(stride or kernel_size), padding=_both_sides(padding),
                   ceil_mode=ceil_mode, count_include_pad=count_include_pad)


@converts(aten._adaptive_avg_pool2d.default, check=_requires_nchw)
def adaptive_avg_pool2d(cx: ConversionContext, x, output_size):
    return cx.emit("adaptive_avg_pool2d", x, output_size=_pair(output_size))


def _static_resize(node: torch.fx.Node) -> str | None:
    """The IR resizes to a static size (a segmentation head's, the input's H and W)."""
    if not all(isinstance(d, int) for d in fake_value(node).shape[2:]):
        return "resizing to a symbolic size"
    return _requires_nchw(node)


def _resize(cx: ConversionContext, x, output_size, scale_factors, mode: str,
            align_corners: bool = False):
    # The size is what torch traced; a scale factor given instead of a size sets the ratio.
    size = [int(d) for d in fake_value(cx.node).shape[2:]]
    scale = None if output_size is not None or scale_factors is None else \
        [float(f) for f in _pair(scale_factors)]
    return cx.emit("resize", x, size=size, mode=mode, align_corners=bool(align_corners),
                   scale=scale)


@converts(aten.upsample_bilinear2d.vec, check=_static_resize)
def upsample_bilinear2d(cx: ConversionContext, x, output_size, align_corners, scale_factors):
    return _resize(cx, x, output_size, scale_factors, "bilinear", align_corners)


@converts(aten.upsample_nearest2d.vec, check=_static_resize)
def upsample_nearest2d(cx: ConversionContext, x, output_size, scale_factors):
    return _resize(cx, x, output_size, scale_factors, "nearest")


@converts(aten._native_batch_norm_legit_no_training.default, results=(0,))
def batch_norm(cx: ConversionContext, x, weight, bias, running_mean, running_var, momentum, eps):
    # The other results (saved statistics) only serve training.
    return cx.emit("batch_norm", x, running_mean, running_var, weight, bias, eps=eps), None, None


@converts(aten.native_layer_norm.default, results=(0,))
def layer_norm(cx: ConversionContext, x, normalized_shape, weight, bias, eps):
    axis = x.type.rank - len(normalized_shape)
    return cx.emit("layer_norm", x, weight, bias, axis=axis, eps=eps), None, None


def _no_half_to_float(node: torch.fx.Node) -> str | None:
    return "half_to_float" if argument(node, 2, "half_to_float") else None


@converts(aten._softmax.default, check=_no_half_to_float)
def softmax(cx: ConversionContext, x, dim, half_to_float):
    return cx.emit("softmax", x, axis=dim)


@converts(aten._log_softmax.default, check=_no_half_to_float)
def log_softmax(cx: ConversionContext, x, dim, half_to_float):
    # (x - max) - log(sum(exp(x - max))): the shift keeps exp from overflowing.
    shifted = cx.emit("sub", x, cx.emit("reduce_max", x, axes=[dim], keepdim=True))
    total = cx.emit("sum", cx.emit("exp", shifted), axes=[dim], keepdim=True)
    return cx.emit("sub", shifted, cx.emit("log", total))


@converts(aten.mm.default, aten.bmm.default)
def matmul(cx: ConversionContext, a, b):
    return cx.emit("matmul", a, b)


@converts(aten.addmm.default)
def addmm(cx: ConversionContext, bias, a, b, *, beta=1, alpha=1):
    # beta * bias + alpha * (a @ b); nn.Linear arrives as addmm(bias, x, permute(weight)).
    product = cx.emit("matmul", a, b)
    if alpha != 1:
        product = cx.emit("mul", product, cx.scalar(alpha, product.type.dtype))
    if beta != 1:
        bias = cx.emit("mul", bias, cx.scalar(beta, bias.type.dtype))
    return cx.emit("add", product, bias)


@converts(aten.embedding.default)
def embedding(cx: ConversionContext, weight, indices, padding_idx=-1, scale_grad_by_freq=False,
              sparse=False):
    return cx.emit("gather", weight, indices, axis=0)
