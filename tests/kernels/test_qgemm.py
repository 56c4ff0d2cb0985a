"""The packed int8 GEMMs on every ISA path of this machine, bit-exact against the reference."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from nimbus.compiler.ir import QuantParams
from nimbus.compiler.ops.quant import requant_multiplier, requantize
from nimbus.runtime.cpu_ops.quant import residual_factor, residual_term
from nimbus.runtime import pack_weights, qgemm, qgemm_f32, qgemm_s32
from nimbus.runtime._kernels import activation, quantize

from checks import assert_matches
from qgemm_reference import INT8_ISAS as ISAS
from qgemm_reference import OUT_DTYPES, accumulators, dequantized, requantized

# Every size of SIZES appears in every dimension; no K is a multiple of 16 and most are odd.
SIZES = [1, 3, 17, 63, 64, 65, 127, 129, 255, 1000]
SHAPES = [(SIZES[i], SIZES[(i + 3) % 10], SIZES[(i + 7) % 10]) for i in range(10)]
SHAPES += [(1000, 17, 129), (5, 7, 2), (6, 64, 4), (12, 128, 66), (7, 200, 257)]
# Last panels of 1 to 4 vectors of 16 columns, each with several row blocks and a partial one.
SHAPES += [(37, 40, 45), (29, 100, 20), (51, 24, 12), (100, 6, 76)]

A_RANGES = {"u8": (np.uint8, 0, 255), "s8": (np.int8, -128, 127)}

# (out_dtype, out_zero_point, lo, hi): plain u8 and s8, then ReLU and ReLU6 bounds.
EPILOGUES = {
    "u8": ("u8", 128, 0, 255),
    "s8": ("s8", -5, -128, 127),
    "u8 relu": ("u8", 100, 100, 255),
    "u8 relu6": ("u8", 100, 100, 160),
    "s8 relu": ("s8", 3, 3, 127),
    "s8 relu6": ("s8", -128, -128, -60),
}


def activations(rng, shape, a_type: str) -> np.ndarray:
    dtype, low, high = A_RANGES[a_type]
    return rng.integers(low, high, size=shape, dtype=dtype, endpoint=True)


def zero_point_of(choice: str, a_type: str, rng) -> int:
    _, low, high = A_RANGES[a_type]
    fixed = {"0": 0, "128": 128 if a_type == "u8" else -128}
    return fixed[choice] if choice in fixed else int(rng.integers(low, high, endpoint=True))


def spanning_multiplier(acc: np.ndarray, rng) -> np.ndarray:
    """Per-channel multipliers that spread each channel over about [-300, 300] before clamping,
    made like the compiler makes them."""
    largest = np.abs(acc.astype(np.float64)).max(axis=0) + 1
    weight_scales = rng.uniform(0.5, 2.0, size=acc.shape[1]) * 300 / largest
    return requant_multiplier(1.0, weight_scales, 1.0)


@pytest.fixture(scope="module", params=SHAPES, ids=lambda shape: "M={}xN={}xK={}".format(*shape))
def problem(request):
    m, n, k = request.param
    rng = np.random.default_rng([m, n, k])
    weights = rng.integers(-128, 127, size=(n, k), dtype=np.int8, endpoint=True)
    bias = rng.integers(-50_000, 50_000, size=n, dtype=np.int32)
    return m, n, k, rng, weights, bias


@pytest.mark.parametrize("zero_point_choice", ["0", "128", "random"])
@pytest.mark.parametrize("a_type", A_RANGES)
@pytest.mark.parametrize("isa", ISAS)
def test_all_epilogues_match_the_reference(problem, isa, a_type, zero_point_choice):
    m, n, k, rng, weights, bias = problem
    a = activations(rng, (m, k), a_type)
    a_zero_point = zero_point_of(zero_point_choice, a_type, rng)
    packed = pack_weights(weights, isa)
    name = f"{isa} {a_type} a_zp={a_zero_point} M={m} N={n} K={k}"

    acc = accumulators(a, weights, a_zero_point, bias)
    assert_matches(qgemm_s32(a, packed, a_zero_point, bias), acc, name=f"{name} s32")
    without_bias = accumulators(a, weights, a_zero_point, None)
    assert_matches(qgemm_s32(a, packed, a_zero_point), without_bias, name=f"{name} s32, no bias")

    multiplier = spanning_multiplier(acc, rng)
    for epilogue, (out_dtype, zero_point, lo, hi) in EPILOGUES.items():
        actual = qgemm(a, packed, a_zero_point, bias, multiplier, zero_point, lo, hi, out_dtype)
        expected = requantized(acc, multiplier, zero_point, lo, hi, out_dtype)
        assert_matches(actual, expected, name=f"{name} {epilogue}")

    # Bit patterns, so that the float result is held to exactness too.
    actual = qgemm_f32(a, packed, a_zero_point, bias, multiplier)
    expected = dequantized(acc, multiplier)
    assert_matches(actual.view(np.int32), expected.view(np.int32), name=f"{name} f32 bits")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("out_dtype", ["u8", "s8"])
def test_rounding_ties_go_to_even(isa, out_dtype):
    # Multipliers of 2**-j make f32(acc) * M land exactly on halves (and quarters) of integers.
    rng = np.random.default_rng(7)
    m, n, k = 37, 70, 9
    a = rng.integers(0, 3, size=(m, k), dtype=np.uint8)
    weights = rng.integers(-3, 3, size=(n, k), dtype=np.int8, endpoint=True)
    bias = rng.integers(-40, 40, size=n, dtype=np.int32)
    multiplier = np.float32(2.0) ** -rng.integers(1, 3, size=n, endpoint=True).astype(np.float32)
    acc = accumulators(a, weights, 1, bias)
    scaled = acc.astype(np.float32) * multiplier
    assert np.count_nonzero(scaled - np.floor(scaled) == 0.5) > m * n // 10
    zero_point = 0 if out_dtype == "s8" else 64
    lo, hi = (-128, 127) if out_dtype == "s8" else (0, 255)
    actual = qgemm(a, pack_weights(weights, isa), 1, bias, multiplier, zero_point, lo, hi,
                   out_dtype)
    expected = requantized(acc, multiplier, zero_point, lo, hi, out_dtype)
    assert_matches(actual, expected, name=f"{isa} ties to even, {out_dtype}")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("a_type, a_value", [("u8", 255), ("s8", -128)])
def test_extreme_values_stay_exact(isa, a_type, a_value):
    # 255 * -128 pairs are where a 16-bit pair sum (vpmaddubsw) would saturate, and sums past
    # 2**24 are where f32(acc) must round to nearest even.
    m, n, k = 9, 33, 1500
    rng = np.random.default_rng(11)
    a = np.full((m, k), a_value, dtype=A_RANGES[a_type][0])
    a[::2, ::3] = 0
    weights = rng.choice(np.array([-128, 127], dtype=np.int8), size=(n, k))
    weights[:4] = -128
    packed = pack_weights(weights, isa)
    acc = accumulators(a, weights, 0, None)
    assert np.abs(acc).max() > 2**24
    assert_matches(qgemm_s32(a, packed), acc, name=f"{isa} extreme s32")
    scale = np.full(n, 1e-3, dtype=np.float32)
    assert_matches(qgemm_f32(a, packed, 0, None, scale).view(np.int32),
                   dequantized(acc, scale).view(np.int32), name=f"{isa} extreme f32 bits")
    multiplier = np.full(n, 2.0**-17, dtype=np.float32)
    expected = requantized(acc, multiplier, 0, -128, 127, "s8")
    assert_matches(qgemm(a, packed, 0, None, multiplier, 0, -128, 127, "s8"), expected,
                   name=f"{isa} extreme s8")


@pytest.mark.parametrize("isa", ISAS)
def test_saturating_multipliers_clamp(isa):
    # Scaled values far outside int32 (but inside int64, where the reference is defined) must
    # clamp, not wrap through the float-to-int32 conversion.
    rng = np.random.default_rng(3)
    a = rng.integers(0, 255, size=(4, 50), dtype=np.uint8, endpoint=True)
    weights = rng.integers(-128, 127, size=(20, 50), dtype=np.int8, endpoint=True)
    multiplier = np.array([3e9, -3e9, 7e5, -7e5] * 5, dtype=np.float32)
    acc = accumulators(a, weights, 0, None)
    packed = pack_weights(weights, isa)
    for out_dtype, lo, hi in [("u8", 0, 255), ("s8", -128, 127)]:
        expected = requantized(acc, multiplier, 0, lo, hi, out_dtype)
        actual = qgemm(a, packed, 0, None, multiplier, 0, lo, hi, out_dtype)
        assert_matches(actual, expected, name=f"{isa} saturating {out_dtype}")


@pytest.mark.parametrize("isa", ISAS)
# The last shape's weights (over 256 KiB packed) are not kept in cache whatever the tile order,
# and its 7 row tiles split into a part per thread (run_parallel).
@pytest.mark.parametrize("m, n, k", [(1, 1000, 64), (130, 64, 65), (7, 129, 3), (1000, 3, 17),
                                     (301, 300, 1001)])
@pytest.mark.parametrize("threads", [2, 3, 16])
def test_threads_give_the_single_thread_result(isa, m, n, k, threads):
    rng = np.random.default_rng([m, n, k, threads])
    a = rng.integers(0, 255, size=(m, k), dtype=np.uint8, endpoint=True)
    weights = rng.integers(-128, 127, size=(n, k), dtype=np.int8, endpoint=True)
    packed = pack_weights(weights, isa)
    expected = accumulators(a, weights, 5, None)
    assert_matches(qgemm_s32(a, packed, 5, threads=threads), expected,
                   name=f"{isa} threads={threads} M={m} N={n} K={k}")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m, n, k", [(0, 4, 3), (4, 0, 3), (4, 3, 0), (0, 0, 0)])
def test_empty_dimensions(isa, m, n, k):
    a = np.ones((m, k), dtype=np.uint8)
    weights = np.ones((n, k), dtype=np.int8)
    bias = np.arange(n, dtype=np.int32)
    packed = pack_weights(weights, isa)
    assert_matches(qgemm_s32(a, packed, 1, bias), accumulators(a, weights, 1, bias),
                   name=f"{isa} M={m} N={n} K={k}")
    multiplier = np.ones(n, dtype=np.float32)
    expected = requantized(accumulators(a, weights, 1, bias), multiplier, 0, 0, 255, "u8")
    assert_matches(qgemm(a, packed, 1, bias, multiplier, 0, 0, 255, "u8"), expected,
                   name=f"{isa} u8 M={m} N={n} K={k}")


def test_reads_read_only_inputs_in_place():
    # Weights and activations memory-mapped from an artifact are read-only.
    a = np.frombuffer(bytes(range(12)), dtype=np.uint8).reshape(3, 4)
    weights = np.frombuffer(bytes(range(8)), dtype=np.int8).reshape(2, 4)
    bias = np.frombuffer(np.array([1, -1], dtype=np.int32).tobytes(), dtype=np.int32)
    assert not (a.flags.writeable or weights.flags.writeable or bias.flags.writeable)
    assert_matches(qgemm_s32(a, pack_weights(weights), 2, bias),
                   accumulators(a, weights, 2, bias), name="read-only inputs")


def test_packed_weights_remember_their_shape_and_path():
    for isa in ISAS:
        packed = pack_weights(np.zeros((5, 7), dtype=np.int8), isa)
        assert (packed.n, packed.k, packed.isa) == (5, 7, isa)
        assert repr(packed) == f"PackedWeights(n=5, k=7, isa='{isa}')"


def test_concurrent_calls_share_the_worker_pool_safely():
    # Two sessions calling at once: one gets the pooled threads, the other runs alone.
    rng = np.random.default_rng(5)
    a = rng.integers(0, 255, size=(100, 70), dtype=np.uint8, endpoint=True)
    weights = rng.integers(-128, 127, size=(300, 70), dtype=np.int8, endpoint=True)
    packed = pack_weights(weights)
    expected = accumulators(a, weights, 9, None)
    with ThreadPoolExecutor(max_workers=4) as executor:
        results = list(executor.map(lambda _: qgemm_s32(a, packed, 9, threads=2), range(64)))
    for index, result in enumerate(results):
        assert_matches(result, expected, name=f"concurrent call {index}")


@pytest.mark.parametrize("isa", ISAS)
def test_results_go_into_a_given_out_array(isa):
    rng = np.random.default_rng(13)
    a = rng.integers(-128, 127, size=(20, 45), dtype=np.int8, endpoint=True)
    weights = rng.integers(-128, 127, size=(70, 45), dtype=np.int8, endpoint=True)
    bias = rng.integers(-999, 999, size=70, dtype=np.int32)
    packed = pack_weights(weights, isa)
    acc = accumulators(a, weights, -3, bias)
    multiplier = spanning_multiplier(acc, rng)
    outs = {
        "s32": (lambda out: qgemm_s32(a, packed, -3, bias, out=out), acc),
        "s8": (lambda out: qgemm(a, packed, -3, bias, multiplier, 0, -128, 127, "s8", out=out),
               requantized(acc, multiplier, 0, -128, 127, "s8")),
        "f32": (lambda out: qgemm_f32(a, packed, -3, bias, multiplier, out=out),
                dequantized(acc, multiplier)),
    }
    for name, (call, expected) in outs.items():
        out = np.full(expected.shape, 7, dtype=expected.dtype)
        assert call(out) is out
        assert_matches(out.view(np.int32) if name == "f32" else out,
                       expected.view(np.int32) if name == "f32" else expected,
                       name=f"{isa} out= {name}")


@pytest.mark.parametrize("residual_type", A_RANGES)
@pytest.mark.parametrize("isa", ISAS)
def test_residual_epilogue_matches_the_reference(problem, isa, residual_type):
    m, n, k, rng, weights, bias = problem
    a = activations(rng, (m, k), "u8")
    packed = pack_weights(weights, isa)
    residual = activations(rng, (m, n), residual_type)
    residual_zero_point = zero_point_of("random", residual_type, rng)
    quant = QuantParams([0.05], [residual_zero_point])
    acc = accumulators(a, weights, 3, bias)
    multiplier = spanning_multiplier(acc, rng)
    name = f"{isa} residual {residual_type} M={m} N={n} K={k}"
    for epilogue, (out_dtype, zero_point, lo, hi) in EPILOGUES.items():
        out_scale = 1.0 / (1 + len(epilogue))  # any scale: the residual term scales with it
        term = residual_term(residual, quant, out_scale)
        actual = qgemm(a, packed, 3, bias, multiplier, zero_point, lo, hi, out_dtype, threads=2,
                       residual=residual, residual_zero_point=residual_zero_point,
                       residual_scale=float(residual_factor(quant, out_scale)))
        expected = requantize(acc, multiplier, zero_point, lo, hi, OUT_DTYPES[out_dtype], 1, term)
        assert_matches(actual, expected, name=f"{name} {epilogue}")
    actual = qgemm_f32(a, packed, 3, bias, multiplier, residual=residual,
                       residual_zero_point=residual_zero_point,
                       residual_scale=float(residual_factor(quant, 1.0)))
    expected = (dequantized(acc, multiplier) + residual_term(residual, quant, 1.0)).astype(np.float32)
    assert_matches(actual.view(np.int32), expected.view(np.int32), name=f"{name} f32 bits")


@pytest.mark.parametrize("isa", ISAS)
def test_f32_result_activations_equal_the_float_kernels(problem, isa):
    """An f32 result's activation, applied per tile in cache, is the float kernels' activation
    of the unfused result, bit for bit (also after a residual)."""
    m, n, k, rng, weights, bias = problem
    a = activations(rng, (m, k), "u8")
    packed = pack_weights(weights, isa)
    scale = np.full(n, 0.01, np.float32)
    residual = activations(rng, (m, n), "u8")
    with_residual = {"residual": residual, "residual_zero_point": 7, "residual_scale": 0.05}
    for name in ("gelu", "silu", "relu6"):
        for extra in ({}, with_residual):
            plain = qgemm_f32(a, packed, 3, bias, scale, **extra)
            fused = qgemm_f32(a, packed, 3, bias, scale, threads=2, activation=name, **extra)
            expected = activation(plain, name) if plain.size else plain
            assert_matches(fused.view(np.int32), expected.view(np.int32),
                           name=f"{isa} {name} residual={bool(extra)} M={m} N={n} K={k}")
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        qgemm_f32(a, packed, 3, bias, scale, activation="swish")


@pytest.mark.parametrize("isa", ISAS)
def test_quantized_result_after_a_float_activation(problem, isa):
    """u8/s8 after a float activation: each tile goes to f32, through the activation and the
    quantize kernel's arithmetic while in cache; equal to those three steps unfused."""
    m, n, k, rng, weights, bias = problem
    a = activations(rng, (m, k), "u8")
    packed = pack_weights(weights, isa)
    scale = np.full(n, 0.01, np.float32)
    for name in ("gelu", "tanh"):
        values = activation(qgemm_f32(a, packed, 3, bias, scale), name)
        for out_dtype, lo, hi in (("u8", 0, 255), ("s8", -128, 127)):
            fused = qgemm(a, packed, 3, bias, scale, 5, lo, hi, out_dtype, threads=2,
                          activation=name, output_scale=0.03)
            expected = quantize(values, 0.03, 5, out_dtype)
            assert_matches(fused, expected, name=f"{isa} {name} {out_dtype} M={m} N={n} K={k}")
    with pytest.raises(ValueError, match="relu and relu6 as its bounds"):
        qgemm(a, packed, 3, bias, scale, 5, 0, 255, "u8", activation="relu")
    with pytest.raises(ValueError, match="needs output_scale"):
        qgemm(a, packed, 3, bias, scale, 5, 0, 255, "u8", activation="gelu")
    with pytest.raises(ValueError, match="lo and hi must be its bounds"):
        qgemm(a, packed, 3, bias, scale, 5, 5, 255, "u8", activation="gelu", output_scale=0.1)
    with pytest.raises(ValueError, match="takes no residual"):
        qgemm(a, packed, 3, bias, scale, 5, 0, 255, "u8", activation="gelu", output_scale=0.1,
              residual=activations(rng, (m, n), "u8"), residual_zero_point=0, residual_scale=1.0)
