"""Bad arguments of the packed int8 GEMMs raise errors that name the argument."""

import re

import numpy as np
import pytest

from nimbus.runtime import pack_weights, qgemm, qgemm_f32, qgemm_s32

INT32_MAX = int(np.iinfo(np.int32).max)
MAX_DEPTH = INT32_MAX // (255 * 128)

A = np.zeros((2, 3), dtype=np.uint8)
W = np.zeros((4, 3), dtype=np.int8)
PACKED = pack_weights(W)
BIAS = np.zeros(4, dtype=np.int32)
SCALE = np.ones(4, dtype=np.float32)
SHARED = np.zeros(12, dtype=np.uint8)  # activations and a result in one buffer

# name -> (packing call, exception, message)
BAD_WEIGHTS = {
    "w not an array": (lambda: pack_weights([[1]]), TypeError, "w must be a numpy.ndarray"),
    "w wrong dtype": (lambda: pack_weights(W.astype(np.uint8)), TypeError,
                      "w must have dtype int8, got uint8"),
    "w 1-D": (lambda: pack_weights(W[0]), ValueError, "w must be 2-D [N, K], got 1-D shape (3,)"),
    "w transposed": (lambda: pack_weights(np.zeros((3, 4), dtype=np.int8).T), ValueError,
                     "w must be C-contiguous"),
    "K too deep": (lambda: pack_weights(np.zeros((1, MAX_DEPTH + 1), dtype=np.int8)), ValueError,
                   f"K = {MAX_DEPTH + 1} is larger than {MAX_DEPTH}"),
    "unknown isa": (lambda: pack_weights(W, "sse9"), ValueError,
                    "unknown ISA path 'sse9'; the paths are amx, avx512_vnni, avx2, portable, amx_emulated"),
}


@pytest.mark.parametrize("case", BAD_WEIGHTS)
def test_bad_weights_raise_named_errors(case):
    call, exception, message = BAD_WEIGHTS[case]
    with pytest.raises(exception, match=re.escape(message)):
        call()


def requantize_with(**changes):
    arguments = dict(a=A, packed=PACKED, a_zero_point=0, bias=BIAS, multiplier=SCALE,
                     out_zero_point=0, lo=0, hi=255, out_dtype="u8")
    arguments.update(changes)
    return lambda: qgemm(**arguments)


# name -> (GEMM call, exception, message)
BAD_CALLS = {
    "a not an array": (lambda: qgemm_s32([[1, 2, 3]], PACKED), TypeError,
                       "a must be a numpy.ndarray, got list"),
    "a wrong dtype": (lambda: qgemm_s32(A.astype(np.int16), PACKED), TypeError,
                      "a must have dtype uint8 or int8, got int16"),
    "a 3-D": (lambda: qgemm_s32(A[None], PACKED), ValueError,
              "a must be 2-D [M, K], got 3-D shape (1, 2, 3)"),
    "a sliced": (lambda: qgemm_s32(np.zeros((2, 6), dtype=np.uint8)[:, ::2], PACKED), ValueError,
                 "a must be C-contiguous, got strides (6, 2) for shape (2, 3)"),
    "K mismatch": (lambda: qgemm_s32(np.zeros((2, 5), dtype=np.uint8), PACKED), ValueError,
                   "a must have shape [M, K] with K = 3 (the depth of the packed weights), "
                   "got shape (2, 5)"),
    "packed not packed": (lambda: qgemm_s32(A, W), TypeError, "incompatible function arguments"),
    "u8 zero point": (lambda: qgemm_s32(A, PACKED, 256), ValueError,
                      "a_zero_point must lie in the uint8 range [0, 255], got 256"),
    "s8 zero point": (lambda: qgemm_s32(A.astype(np.int8), PACKED, 128), ValueError,
                      "a_zero_point must lie in the int8 range [-128, 127], got 128"),
    "bias wrong dtype": (lambda: qgemm_s32(A, PACKED, 0, BIAS.astype(np.int64)), TypeError,
                         "bias must have dtype int32, got int64"),
    "bias wrong length": (
        lambda: qgemm_s32(A, PACKED, 0, BIAS[:3]),
        ValueError,
        "bias must have shape (4,), one value per output channel, got shape (3,)",
    ),
    "bias strided": (lambda: qgemm_s32(A, PACKED, 0, np.zeros(8, dtype=np.int32)[::2]),
                     ValueError, "bias must be C-contiguous"),
    "threads zero": (lambda: qgemm_s32(A, PACKED, threads=0), ValueError,
                     "threads must be at least 1, got 0"),
    "out wrong dtype": (lambda: qgemm_s32(A, PACKED, out=np.zeros((2, 4), dtype=np.int64)),
                        TypeError, "out must have dtype int32, got int64"),
    "out wrong shape": (lambda: qgemm_s32(A, PACKED, out=np.zeros((4, 2), dtype=np.int32)),
                        ValueError, "out must have shape (2, 4), got shape (4, 2)"),
    "out read-only": (lambda: qgemm_s32(A, PACKED, out=np.frombuffer(bytes(32), dtype=np.int32)
                                        .reshape(2, 4)), ValueError, "out must be writable"),
    "out overlaps a": (requantize_with(a=SHARED[:6].reshape(2, 3), out=SHARED[4:].reshape(2, 4)),
                       ValueError, "out must not share memory with a"),
    "scale wrong dtype": (lambda: qgemm_f32(A, PACKED, 0, None, SCALE.astype(np.float64)),
                          TypeError, "scale must have dtype float32, got float64"),
    "scale not finite": (lambda: qgemm_f32(A, PACKED, 0, None, np.array([1, 1, np.inf, 1],
                                                                        dtype=np.float32)),
                         ValueError, "scale must be finite, got inf at index 2"),
    "multiplier wrong length": (requantize_with(multiplier=SCALE[:2]), ValueError,
                                "multiplier must have shape (4,)"),
    "multiplier nan": (requantize_with(multiplier=np.full(4, np.nan, dtype=np.float32)),
                       ValueError, "multiplier must be finite, got nan at index 0"),
    "out_dtype": (requantize_with(out_dtype="s32"), ValueError,
                  "out_dtype must be 'u8' or 's8', got 's32'"),
    "out zero point": (requantize_with(out_dtype="s8", out_zero_point=200, lo=-128, hi=127),
                       ValueError, "out_zero_point must lie in the s8 range [-128, 127], got 200"),
    "lo below range": (requantize_with(lo=-1), ValueError,
                       "lo must lie in the u8 range [0, 255], got -1"),
    "hi above range": (requantize_with(hi=256), ValueError,
                       "hi must lie in the u8 range [0, 255], got 256"),
    "hi below lo": (requantize_with(lo=10, hi=9), ValueError,
                    "hi must not be less than lo = 10, got 9"),
}


@pytest.mark.parametrize("case", BAD_CALLS)
def test_bad_calls_raise_named_errors(case):
    call, exception, message = BAD_CALLS[case]
    with pytest.raises(exception, match=re.escape(message)):
        call()
