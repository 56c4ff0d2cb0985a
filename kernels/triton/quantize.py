"""Quantize and dequantize: float <-> int8 at the edges of an integer region, one pass each.

    quantize:    q = clamp(rint_f32(x / scale) + zero_point, lo, hi)   (the op table's rounding:
                 an IEEE float32 division, then round half to even)
    dequantize:  x = f32(q - zero_point) * scale

Both take one scale and zero point for the whole tensor, or one per index of `axis`
(per-channel). A program handles BLOCK consecutive elements of the contiguous tensor; with
per-axis parameters it derives each element's channel from its flat index, as
(index // inner) % channels, where inner is the product of the sizes after `axis`.

Results are bit for bit the CPU backend's: the division is `div_rn` (Triton's plain `/` on
float32 may round less exactly), rounding is `rint_f32`, and the kernels launch with
INTEGER_LAUNCH so that no multiply-add is fused.
"""

from __future__ import annotations

import numpy as np
import torch

import triton
import triton.language as tl

from ._common import INTEGER_LAUNCH, rint_f32
from .autotune import config, register_space, shape_key, tuned

SPACE = register_space("quantize", [
    config(4, 1, BLOCK=1024),
    config(4, 1, BLOCK=4096),
    config(8, 1, BLOCK=8192),
])
register_space("dequantize", SPACE)
INTEGER_DTYPES = {"u8": torch.uint8, "i8": torch.int8}


@triton.jit
def _parameters(offsets, mask, scale_ptr, zero_point_ptr, channels, inner,
                PER_AXIS: tl.constexpr):
    """(scale, zero point) of each element: one pair, or the pair of its channel."""
    if PER_AXIS:
        channel = (offsets // inner) % channels
        scale = tl.load(scale_ptr + channel, mask=mask, other=1.0)
        zero_point = tl.load(zero_point_ptr + channel, mask=mask, other=0)
    else:
        scale = tl.load(scale_ptr)
        zero_point = tl.load(zero_point_ptr)
    return scale, zero_point


@triton.jit
def quantize_kernel(
    x_ptr,              # float16/bfloat16/float32 input, contiguous
    q_ptr,              # uint8/int8 result, contiguous
    scale_ptr,          # float32 [1] or [channels] scales
    zero_point_ptr,     # int32 [1] or [channels] zero points
    numel,              # elements
    channels, inner,    # size of the quantization axis, product of the sizes after it
    lo, hi,             # the result type's range
    PER_AXIS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < numel
    scale, zero_point = _parameters(offsets, mask, scale_ptr, zero_point_ptr, channels, inner,
                                    PER_AXIS)
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    q = rint_f32(tl.math.div_rn(x, scale)).to(tl.int32) + zero_point
    q = tl.minimum(tl.maximum(q, lo), hi)
    tl.store(q_ptr + offsets, q.to(q_ptr.dtype.element_ty), mask=mask)


@triton.jit
def dequantize_kernel(
    q_ptr,              # uint8/int8/int32 input, contiguous
    x_ptr,              # float32 result, contiguous
    scale_ptr,          # float32 [1] or [channels] scales
    zero_point_ptr,     # int32 [1] or [channels] zero points
    numel,              # elements
    channels, inner,    # size of the quantization axis, product of the sizes after it
    PER_AXIS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < numel
    scale, zero_point = _parameters(offsets, mask, scale_ptr, zero_point_ptr, channels, inner,
                                    PER_AXIS)
    q = tl.load(q_ptr + offsets, mask=mask, other=0).to(tl.int32)
    tl.store(x_ptr + offsets, (q - zero_point).to(tl.float32) * scale, mask=mask)


class QuantParameters:
    """One tensor's quantization parameters on its device, prepared once (a plan's data)."""

    def __init__(self, scale, zero_point, axis: int | None, rank: int, device):
        scale = np.atleast_1d(np.asarray(scale, np.float32))
        zero_point = np.atleast_1d(np.asarray(zero_point, np.int32))
        if zero_point.size == 1 and scale.size > 1:
            zero_point = np.repeat(zero_point, scale.size)
        if scale.size != zero_point.size or (axis is None and scale.size != 1):
            raise ValueError(f"{scale.size} scales and {zero_point.size} zero points "
                             f"{'per tensor' if axis is None else f'along axis {axis}'}")
        if axis is not None and not 0 <= axis < rank:
            raise ValueError(f"quantization axis {axis} is out of range for rank {rank}")
        self.axis = axis if scale.size > 1 else None
        self.scale = torch.from_numpy(scale).to(device)
        self.zero_point = torch.from_numpy(zero_point).to(device)

    def layout(self, shape: tuple) -> tuple[int, int]:
        """(channels, inner) of a tensor of `shape` (1, 1 per tensor)."""
        if self.axis is None:
            return 1, 1
        channels = shape[self.axis]
        if channels != self.scale.numel():
            raise ValueError(f"{self.scale.numel()} scales for axis {self.axis} of size {channels}")
        return channels, int(np.prod(shape[self.axis + 1:], dtype=np.int64))


def _launch(name: str, kernel, source: torch.Tensor, result: torch.Tensor,
            params: QuantParameters, extra: tuple) -> torch.Tensor:
    numel = source.numel()
    if numel == 0:
        return result
    channels, inner = params.layout(tuple(source.shape))

    def launch(cfg):
        options = cfg.launch_options()
        kernel[(triton.cdiv(numel, options["BLOCK"]),)](
            source, result, params.scale, params.zero_point, numel, channels, inner, *extra,
            PER_AXIS=params.axis is not None, **options, **INTEGER_LAUNCH)

    launch(tuned(name, shape_key(numel, "axis" if params.axis is not None else "tensor"), source,
                 launch))
    return result


def quantize(x: torch.Tensor, params: QuantParameters, dtype: str) -> torch.Tensor:
    """x (fp16/bf16/fp32) quantized to `dtype` ("u8" or "i8") with `params`."""
    if dtype not in INTEGER_DTYPES:
        raise ValueError(f"dtype must be 'u8' or 'i8', got {dtype!r}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"quantize takes a float tensor, got {x.dtype}")
    x = x.contiguous()
    info = torch.iinfo(INTEGER_DTYPES[dtype])
    result = torch.empty(x.shape, dtype=INTEGER_DTYPES[dtype], device=x.device)
    return _launch("quantize", quantize_kernel, x, result, params, (info.min, info.max))


def dequantize(q: torch.Tensor, params: QuantParameters) -> torch.Tensor:
    """q (uint8/int8/int32) dequantized to float32 with `params`."""
    if q.dtype not in (torch.uint8, torch.int8, torch.int32):
        raise ValueError(f"dequantize takes uint8, int8 or int32, got {q.dtype}")
    q = q.contiguous()
    result = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    return _launch("dequantize", dequantize_kernel, q, result, params, ())


def benchmark_cases():
    """Quantize and dequantize of ResNet-18's stem input and a BERT-base FFN activation at
    batch 32, against the same arithmetic in torch eager and torch.compile."""
    from .bench import BenchCase, mismatches

    cases = []
    for shape, label in [((32, 3, 224, 224), "image"), ((32 * 128, 3072), "ffn")]:
        x = torch.randn(shape, device="cuda") * 3
        params = QuantParameters(0.05, 128, None, len(shape), "cuda")

        def eager(x=x):  # the peer: what a torch model would run
            q = torch.round(x / 0.05).to(torch.int32) + 128
            return torch.clamp(q, 0, 255).to(torch.uint8)

        def check(x=x, params=params):
            # The reference is numpy's IEEE float32 division; torch divides by a Python scalar
            # through its reciprocal, which rounds a few values of millions the other way.
            values = x.cpu().numpy()
            scaled = np.rint(values / np.float32(0.05)) + 128
            expected = torch.from_numpy(np.clip(scaled, 0, 255).astype(np.uint8))
            return mismatches(quantize(x, params, "u8").cpu(), expected), 0.0

        cases.append(BenchCase(
            name=f"quantize f32->u8 {label} {'x'.join(map(str, shape))}",
            run=lambda x=x, params=params: quantize(x, params, "u8"), check=check,
            flops=3.0 * x.numel(), bytes=5.0 * x.numel(),
            peers={"torch eager": eager, "torch.compile": torch.compile(eager)}))
    return cases
