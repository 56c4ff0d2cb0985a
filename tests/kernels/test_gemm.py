"""The portable int8 GEMMs of the native extension against numpy's int32 matmul."""

import re

import numpy as np
import pytest

from nimbus.runtime import gemm_s8s8s32, gemm_u8s8s32

from checks import assert_matches

# Sizes around the SIMD widths and none a multiple of the cache blocks.
SIZES = [1, 3, 17, 63, 64, 65, 129]

INT32_MAX = int(np.iinfo(np.int32).max)

# name -> (kernel, dtype of a, range of a, largest K: no sum of K products leaves int32)
GEMMS = {
    "u8s8s32": (gemm_u8s8s32, np.uint8, (0, 255), INT32_MAX // (255 * 128)),
    "s8s8s32": (gemm_s8s8s32, np.int8, (-128, 127), INT32_MAX // (128 * 128)),
}
B_RANGE = (-128, 127)


def reference_gemm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a.astype(np.int32) @ b.astype(np.int32)


def random_matrix(rng: np.random.Generator, shape, dtype, value_range) -> np.ndarray:
    low, high = value_range
    return rng.integers(low, high, size=shape, dtype=dtype, endpoint=True)


def extreme_matrix(rng: np.random.Generator, shape, dtype, value_range) -> np.ndarray:
    return rng.choice(np.array(value_range, dtype=dtype), size=shape)


@pytest.mark.parametrize("gemm_name", GEMMS)
@pytest.mark.parametrize("k", SIZES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("m", SIZES)
def test_random_inputs_match_numpy(gemm_name, m, n, k):
    kernel, a_dtype, a_range, _ = GEMMS[gemm_name]
    rng = np.random.default_rng([m, n, k])
    a = random_matrix(rng, (m, k), a_dtype, a_range)
    b = random_matrix(rng, (k, n), np.int8, B_RANGE)
    name = f"gemm_{gemm_name} M={m} N={n} K={k}"
    assert_matches(kernel(a, b), reference_gemm(a, b), name=name)


# (3, 1000, 300) spans several cache blocks of both N and K.
@pytest.mark.parametrize("gemm_name", GEMMS)
@pytest.mark.parametrize("m, n, k", [(5, 7, 1), (64, 65, 129), (3, 1000, 300)])
def test_edge_values_match_numpy(gemm_name, m, n, k):
    kernel, a_dtype, a_range, _ = GEMMS[gemm_name]
    rng = np.random.default_rng([m, n, k])
    a = extreme_matrix(rng, (m, k), a_dtype, a_range)
    b = extreme_matrix(rng, (k, n), np.int8, B_RANGE)
    name = f"gemm_{gemm_name} M={m} N={n} K={k} on extreme values"
    assert_matches(kernel(a, b), reference_gemm(a, b), name=name)


# a_value * -128 is the product of largest magnitude, so the sums sit next to the int32 limits.
@pytest.mark.parametrize("gemm_name, a_value", [("u8s8s32", 255), ("s8s8s32", -128)])
def test_largest_depth_reaches_the_int32_bound_without_overflow(gemm_name, a_value):
    kernel, a_dtype, _, max_depth = GEMMS[gemm_name]
    a = np.full((1, max_depth), a_value, dtype=a_dtype)
    b = np.full((max_depth, 2), -128, dtype=np.int8)
    expected = np.full((1, 2), a_value * -128 * max_depth, dtype=np.int32)
    name = f"gemm_{gemm_name} K={max_depth}"
    assert_matches(kernel(a, b), expected, name=name)


@pytest.mark.parametrize("gemm_name", GEMMS)
def test_depth_past_the_int32_bound_is_rejected(gemm_name):
    kernel, a_dtype, _, max_depth = GEMMS[gemm_name]
    a = np.zeros((1, max_depth + 1), dtype=a_dtype)
    b = np.zeros((max_depth + 1, 1), dtype=np.int8)
    message = f"K = {max_depth + 1} is larger than {max_depth}, the most that an int32 accumulator"
    with pytest.raises(ValueError, match=re.escape(message)):
        kernel(a, b)


@pytest.mark.parametrize("gemm_name", GEMMS)
@pytest.mark.parametrize("m, n, k", [(0, 4, 3), (4, 0, 3), (4, 3, 0)])
def test_empty_dimensions(gemm_name, m, n, k):
    kernel, a_dtype, _, _ = GEMMS[gemm_name]
    a = np.ones((m, k), dtype=a_dtype)
    b = np.ones((k, n), dtype=np.int8)
    name = f"gemm_{gemm_name} M={m} N={n} K={k}"
    assert_matches(kernel(a, b), reference_gemm(a, b), name=name)


def test_reads_read_only_inputs_in_place():
    # Weights memory-mapped from an artifact are read-only; the kernel must not need a copy.
    a = np.frombuffer(bytes(range(12)), dtype=np.uint8).reshape(3, 4)
    b = np.frombuffer(bytes(range(8)), dtype=np.int8).reshape(4, 2)
    assert not a.flags.writeable and not b.flags.writeable
    assert_matches(gemm_u8s8s32(a, b), reference_gemm(a, b), name="read-only inputs")


U8 = np.zeros((2, 3), dtype=np.uint8)
S8 = np.zeros((3, 4), dtype=np.int8)

# (a, b, exception, message) for gemm_u8s8s32; messages name the argument, expected and given.
BAD_ARGUMENTS = {
    "a not an array": ([[1, 2, 3]], S8, TypeError, "a must be a numpy.ndarray, got list"),
    "a wrong dtype": (U8.astype(np.int8), S8, TypeError, "a must have dtype uint8, got int8"),
    "b wrong dtype": (U8, S8.astype(np.float32), TypeError, "b must have dtype int8, got float32"),
    "a 1-D": (U8[0], S8, ValueError, "a must be 2-D [M, K], got 1-D shape (3,)"),
    "b 3-D": (U8, S8[None], ValueError, "b must be 2-D [K, N], got 3-D shape (1, 3, 4)"),
    "a sliced": (
        np.zeros((2, 6), dtype=np.uint8)[:, ::2],
        S8,
        ValueError,
        "a must be C-contiguous, got strides (6, 2) for shape (2, 3); "
        "pass numpy.ascontiguousarray(a)",
    ),
    "b transposed": (
        U8,
        np.zeros((4, 3), dtype=np.int8).T,
        ValueError,
        "b must be C-contiguous, got strides (1, 3) for shape (3, 4)",
    ),
    "K mismatch": (
        U8,
        np.zeros((4, 7), dtype=np.int8),
        ValueError,
        "b must have shape [K, N] with K = 3 (the columns of a), got shape (4, 7)",
    ),
    # Zero-size inputs whose result would need 2**124 elements: rejected before allocating.
    "M*N overflow": (
        np.zeros((2**62, 0), dtype=np.uint8),
        np.zeros((0, 2**62), dtype=np.int8),
        ValueError,
        "the result [M, N] = [4611686018427387904, 4611686018427387904] has more int32 elements",
    ),
}


@pytest.mark.parametrize("case", BAD_ARGUMENTS)
def test_bad_arguments_raise_named_errors(case):
    a, b, exception, message = BAD_ARGUMENTS[case]
    with pytest.raises(exception, match=re.escape(message)):
        gemm_u8s8s32(a, b)


def test_s8s8_names_its_own_dtype():
    with pytest.raises(TypeError, match="a must have dtype int8, got uint8"):
        gemm_s8s8s32(U8, S8)
