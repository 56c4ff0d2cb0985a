"""Device functions and launch helpers that every nimbus Triton kernel shares.

The integer arithmetic is the reference interpreter's (nimbus.compiler.ops.quant), bit for bit:

    q = clamp(rint_f32(f32(acc) * M) + zero_point, lo, hi)      (rint: half to even)

Kernels that round must be launched with ``enable_fp_fusion=False`` (``INTEGER_LAUNCH``): a
multiply followed by the rounding add must not become one fused multiply-add, whose single
rounding differs from the two the reference performs.
"""

from __future__ import annotations

import os

import torch

import triton
import triton.language as tl

# The floating-point dtypes that the float kernels take.
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Launch options of every kernel that reproduces the reference's float32 rounding steps.
INTEGER_LAUNCH = {"enable_fp_fusion": False}

# Fused activations by name (nimbus.compiler.ops.fused.ACTIVATIONS) -> the code `activate` takes.
ACTIVATION_CODES = {
    "none": 0, "relu": 1, "relu6": 2, "gelu": 3, "gelu_tanh": 4, "silu": 5, "sigmoid": 6,
    "tanh": 7, "hardswish": 8,
}


def dot_precision(dtype) -> str:
    """tl.dot's input precision for operands of `dtype` (a torch dtype).

    float32 takes "tf32x3": each operand split into a TF32 high part and a TF32 remainder, three
    tensor-core products summed, which keeps float32's accuracy (relative error near 1e-6,
    where one TF32 product gives 1e-3) at several times the speed of "ieee" (scalar FMAs; 13
    TFLOP/s in ResNet-18 on an H100). 16-bit operands ignore the setting.
    """
    import torch

    return "tf32x3" if dtype == torch.float32 else "tf32"


def interpreting() -> bool:
    """True when kernels run on the CPU through Triton's interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def activation_code(name: str) -> int:
    try:
        return ACTIVATION_CODES[name]
    except KeyError:
        raise ValueError(f"unknown activation '{name}'; expected one of "
                         f"{', '.join(ACTIVATION_CODES)}") from None


@triton.jit
def rint_f32(x):
    """Round float32 to the nearest integer, ties to even, as numpy's rint does.

    Adding 1.5 * 2^23 moves every |x| < 2^22 into [2^23, 2^24), where float32 spacing is 1,
    so the addition itself rounds (to nearest even); subtracting it back is exact. Larger
    magnitudes are clamped first: they saturate any 8-bit result anyway.
    """
    clamped = tl.minimum(tl.maximum(x, -4194304.0), 4194304.0)
    return (clamped + 12582912.0) - 12582912.0


@triton.jit
def requantize(acc, multiplier, zero_point, lo, hi):
    """int32 accumulators -> int32 values of the quantized result (still to be narrowed).

    acc: int32 tile; multiplier: float32, broadcastable to acc (per output channel);
    zero_point, lo, hi: int32 scalars (the clamp bounds carry a fused ReLU/ReLU6).
    """
    return round_and_clamp(acc.to(tl.float32) * multiplier, zero_point, lo, hi)


@triton.jit
def round_and_clamp(scaled, zero_point, lo, hi):
    """clamp(rint_f32(scaled) + zero_point, lo, hi) as int32: the last steps of requantization."""
    rounded = rint_f32(scaled).to(tl.int32)
    return tl.minimum(tl.maximum(rounded + zero_point, lo), hi)


@triton.jit
def sigmoid_f32(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh_f32(x):
    # tanh(x) = 2 sigmoid(2x) - 1, written with exp of a non-positive argument (never overflows).
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def activate(x, ACTIVATION: tl.constexpr):
    """Apply a fused activation (ACTIVATION_CODES) to a float32 tile."""
    # propagate_nan: NaN stays NaN, as in numpy (by default these are fmax / fmin, giving 0)
    if ACTIVATION == 1:
        x = tl.maximum(x, 0.0, propagate_nan=tl.PropagateNan.ALL)
    elif ACTIVATION == 2:
        x = tl.minimum(tl.maximum(x, 0.0, propagate_nan=tl.PropagateNan.ALL), 6.0,
                       propagate_nan=tl.PropagateNan.ALL)
    elif ACTIVATION == 3:
        x = 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))
    elif ACTIVATION == 4:
        x = 0.5 * x * (1.0 + tanh_f32(0.7978845608028654 * (x + 0.044715 * x * x * x)))
    elif ACTIVATION == 5:
        x = x * sigmoid_f32(x)
    elif ACTIVATION == 6:
        x = sigmoid_f32(x)
    elif ACTIVATION == 7:
        x = tanh_f32(x)
    elif ACTIVATION == 8:
        x = x * tl.minimum(tl.maximum(x + 3.0, 0.0), 6.0) / 6.0
    return x
