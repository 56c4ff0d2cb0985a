"""The nimbus runtime: what a cloud inference container installs.

It runs compiled artifacts with numpy and the native kernels of ``nimbus.runtime._kernels``
alone. Nothing here imports the compiler, torch, onnx, lark, sympy or triton at import time,
so ``pip install nimbus`` without extras is enough to serve a model.
"""

from ._kernels import (
    PackedConvWeights,
    PackedWeights,
    available_isas,
    gemm_s8s8s32,
    gemm_u8s8s32,
    pack_conv_weights,
    pack_weights,
    qconv2d,
    qconv2d_f32,
    qconv2d_s32,
    qgemm,
    qgemm_f32,
    qgemm_s32,
    selected_isa,
)

__all__ = [
    "PackedConvWeights",
    "PackedWeights",
    "available_isas",
    "gemm_s8s8s32",
    "gemm_u8s8s32",
    "pack_conv_weights",
    "pack_weights",
    "qconv2d",
    "qconv2d_f32",
    "qconv2d_s32",
    "qgemm",
    "qgemm_f32",
    "qgemm_s32",
    "selected_isa",
]
