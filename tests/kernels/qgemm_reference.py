"""The exact results of the packed int8 GEMMs, from the arithmetic of nimbus.compiler.ops.quant."""

from __future__ import annotations

import numpy as np

from nimbus.compiler.dtypes import DType
from nimbus.compiler.ops.quant import requantize
from nimbus.runtime import available_isas

OUT_DTYPES = {"u8": DType.u8, "s8": DType.i8}

# Every path this machine runs, and the AMX kernel over emulated tiles wherever AVX512-VNNI runs:
# the AMX code, its blocking and its tails, checked on CPUs without AMX too.
INT8_ISAS = available_isas() + (["amx_emulated"] if "avx512_vnni" in available_isas() else [])


def accumulators(a: np.ndarray, w: np.ndarray, a_zero_point: int, bias) -> np.ndarray:
    """(a - a_zero_point) @ w.T + bias, exact in int64, then wrapped to int32 like the kernels."""
    acc = ((a.astype(np.int64) - a_zero_point) @ w.astype(np.int64).T).astype(np.int32)
    if bias is not None:
        acc = acc + bias
    return acc


def requantized(acc: np.ndarray, multiplier: np.ndarray, zero_point: int, lo: int, hi: int,
                out_dtype: str) -> np.ndarray:
    return requantize(acc, multiplier, zero_point, lo, hi, OUT_DTYPES[out_dtype], channel_axis=1)


def dequantized(acc: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return acc.astype(np.float32) * scale
