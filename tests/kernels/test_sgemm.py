"""The float32 GEMM (pack_sgemm_weights, sgemm) on every ISA path of this machine, against a
float64 reference: odd shapes, every activation, bias and residual present or absent, thread
counts, and the errors for bad arguments. ACTIVATIONS is the float64 reference of the
activations, which test_sconv.py shares."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from checks import assert_matches, float_path
from nimbus.runtime import _kernels

ISAS = _kernels.available_isas()

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# The definitions of torch.nn.functional (gelu "none" is the erf form).
ACTIVATIONS = {
    "none": lambda x: x,
    "relu": lambda x: np.maximum(x, 0.0),
    "relu6": lambda x: np.clip(x, 0.0, 6.0),
    "gelu": lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),
    "gelu_tanh": lambda x: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi)
                                                    * (x + 0.044715 * x**3))),
    "silu": lambda x: x * _sigmoid(x),
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "hardswish": lambda x: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0,
}


def linear(x, w, bias=None, residual=None, activation="none"):
    """act(x @ w.T + bias + residual) in float64."""
    out = x.astype(np.float64) @ w.astype(np.float64).T
    if bias is not None:
        out = out + bias
    if residual is not None:
        out = out + residual
    return ACTIVATIONS[activation](out)


# No size is a multiple of any register tile; M covers 1..2 tiles of 12 rows and a multiple
# row tile, N covers partial panels of 16 and 32 columns, K several depth blocks.
SIZES = [1, 3, 17, 33, 100]
SHAPES = [(m, n, k) for m in SIZES for n in SIZES for k in SIZES if (m + n + k) % 3 == 0]
# (200, 1000, 300): weights over 1 MiB under few rows, which go in panel groups.
SHAPES += [(5, 77, 1100), (130, 65, 600), (1, 1000, 257), (250, 40, 31), (200, 1000, 300)]
RTOL = 1e-5


def problem(m, n, k, seed=0):
    rng = np.random.default_rng([m, n, k, seed])
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = (rng.standard_normal((n, k), dtype=np.float32) / np.sqrt(k)).astype(np.float32)
    bias = rng.standard_normal(n, dtype=np.float32)
    residual = rng.standard_normal((m, n), dtype=np.float32)
    return x, w, bias, residual


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "M={}xN={}xK={}".format(*s))
def test_matches_the_reference_with_and_without_bias_and_residual(isa, shape):
    x, w, bias, residual = problem(*shape)
    packed = _kernels.pack_sgemm_weights(w, isa=isa)
    assert packed.isa == float_path(isa) and packed.shape == (shape[1], shape[2])
    for b in (None, bias):
        for r in (None, residual):
            name = f"{isa} {shape} bias={b is not None} residual={r is not None}"
            actual = _kernels.sgemm(x, packed, b, r)
            assert_matches(actual, linear(x, w, b, r).astype(np.float32), name=name, rtol=RTOL)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("shape", [(1, 3, 17), (17, 33, 100), (100, 70, 33)],
                         ids=lambda s: "M={}xN={}xK={}".format(*s))
def test_every_activation(isa, activation, shape):
    x, w, bias, residual = problem(*shape, seed=1)
    # Spread the pre-activations over [-8, 8] so that every branch of each function runs.
    x *= 3.0
    packed = _kernels.pack_sgemm_weights(w, isa=isa)
    actual = _kernels.sgemm(x, packed, bias, residual, activation)
    expected = linear(x, w, bias, residual, activation).astype(np.float32)
    assert_matches(actual, expected, name=f"{isa} {activation} {shape}", rtol=RTOL)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_nan_stays_nan_through_every_activation(isa, activation):
    """A NaN in a row of x makes that row NaN, as in numpy: relu and relu6 once gave 0 on the
    vector paths (the max instruction returns its second operand when either is NaN)."""
    x, w, bias, residual = problem(17, 33, 20, seed=2)
    x[3, 5] = np.nan
    packed = _kernels.pack_sgemm_weights(w, isa=isa)
    actual = _kernels.sgemm(x, packed, bias, residual, activation)
    expected = linear(x, w, bias, residual, activation).astype(np.float32)
    assert np.isnan(actual[3]).all()
    assert_matches(actual, expected, name=f"{isa} {activation}", rtol=RTOL)


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "silu", "sigmoid", "tanh"])
def test_activations_hold_far_from_zero(activation):
    """Large arguments saturate instead of overflowing to inf or nan."""
    x = np.array([[-200.0, -90.0, -30.0, -1e-3, 0.0, 1e-3, 30.0, 90.0, 200.0]], np.float32).T
    packed = _kernels.pack_sgemm_weights(np.ones((1, 1), np.float32))
    actual = _kernels.sgemm(np.ascontiguousarray(x), packed, activation=activation)
    expected = ACTIVATIONS[activation](x.astype(np.float64)).astype(np.float32)
    assert np.all(np.isfinite(actual))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", [(1, 1000, 300), (7, 129, 65), (300, 200, 700),
                                   (200, 1000, 300)],
                         ids=lambda s: "M={}xN={}xK={}".format(*s))
def test_thread_counts_give_identical_results(isa, shape):
    x, w, bias, residual = problem(*shape, seed=2)
    packed = _kernels.pack_sgemm_weights(w, isa=isa)
    single = _kernels.sgemm(x, packed, bias, residual, "gelu", threads=1)
    for threads in (2, 3, 8):
        actual = _kernels.sgemm(x, packed, bias, residual, "gelu", threads=threads)
        assert np.array_equal(actual, single), f"{isa} {shape} threads={threads}"


def test_zero_sized_operands():
    packed = _kernels.pack_sgemm_weights(np.zeros((5, 0), np.float32))
    bias = np.arange(5, dtype=np.float32)
    out = _kernels.sgemm(np.zeros((3, 0), np.float32), packed, bias)
    assert_matches(out, np.broadcast_to(bias, (3, 5)).astype(np.float32), name="K=0")
    empty = _kernels.sgemm(np.zeros((0, 4), np.float32),
                           _kernels.pack_sgemm_weights(np.ones((5, 4), np.float32)))
    assert empty.shape == (0, 5)


@pytest.mark.parametrize("isa", ISAS)
def test_nimbus_isa_forces_the_default_path(isa):
    """Packing without isa= follows NIMBUS_ISA, like the int8 kernels."""
    script = ("import numpy as np\n"
              "from nimbus.runtime import _kernels as k\n"
              "p = k.pack_sgemm_weights(np.ones((3, 5), np.float32))\n"
              "c = k.pack_sconv_weights(np.ones((4, 1, 3, 3), np.float32), groups=4)\n"
              "out = k.sgemm(np.ones((2, 5), np.float32), p, activation='gelu')\n"
              "assert np.allclose(out, 5.0), out\n"
              "print(p.isa, c.isa)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, "NIMBUS_ISA": isa}, check=True)
    assert result.stdout.split() == [float_path(isa)] * 2


def test_repr_names_shape_and_isa():
    packed = _kernels.pack_sgemm_weights(np.zeros((3, 5), np.float32), isa="portable")
    assert repr(packed) == "PackedSgemmWeights(shape=(3, 5), isa='portable')"


# ---- bad arguments ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def packed():
    return _kernels.pack_sgemm_weights(np.ones((4, 6), np.float32))


def test_weights_must_be_a_float32_matrix():
    with pytest.raises(TypeError, match="w must have dtype float32, got float64"):
        _kernels.pack_sgemm_weights(np.ones((4, 6)))
    with pytest.raises(ValueError, match="w must be 2-D"):
        _kernels.pack_sgemm_weights(np.ones(6, np.float32))
    with pytest.raises(ValueError, match="w must be C-contiguous"):
        _kernels.pack_sgemm_weights(np.ones((6, 4), np.float32).T)
    with pytest.raises(ValueError, match="unknown ISA path 'avx9'"):
        _kernels.pack_sgemm_weights(np.ones((4, 6), np.float32), isa="avx9")


def test_bad_activations_are_named(packed):
    x = np.ones((2, 6), np.float32)
    with pytest.raises(TypeError, match="x must have dtype float32, got int8"):
        _kernels.sgemm(x.astype(np.int8), packed)
    with pytest.raises(TypeError, match="x must be a numpy.ndarray, got list"):
        _kernels.sgemm([[1.0] * 6], packed)
    with pytest.raises(ValueError, match="x must be 2-D"):
        _kernels.sgemm(np.ones((1, 2, 6), np.float32), packed)
    with pytest.raises(ValueError, match=r"x must have shape \[M, K\] with K = 6"):
        _kernels.sgemm(np.ones((2, 5), np.float32), packed)
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        _kernels.sgemm(np.ones((6, 2), np.float32).T, packed)


def test_bad_epilogues_are_named(packed):
    x = np.ones((2, 6), np.float32)
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        _kernels.sgemm(x, packed, np.ones(5, np.float32))
    with pytest.raises(TypeError, match="bias must have dtype float32"):
        _kernels.sgemm(x, packed, np.ones(4))
    with pytest.raises(ValueError, match=r"residual must have the shape of the result \(2, 4\)"):
        _kernels.sgemm(x, packed, residual=np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match="residual must be C-contiguous"):
        _kernels.sgemm(x, packed, residual=np.ones((4, 2), np.float32).T)
    with pytest.raises(ValueError, match="unknown activation 'swish'; the activations are"):
        _kernels.sgemm(x, packed, activation="swish")
    with pytest.raises(ValueError, match="threads must be at least 1, got 0"):
        _kernels.sgemm(x, packed, threads=0)


def test_results_go_into_a_given_out_array(packed):
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    out = np.full((2, 4), np.nan, np.float32)
    result = _kernels.sgemm(x, packed, out=out)
    assert result is out
    assert_matches(out, linear(x, np.ones((4, 6), np.float32)).astype(np.float32), name="out=")
    with pytest.raises(ValueError, match=r"out must have shape \(2, 4\)"):
        _kernels.sgemm(x, packed, out=np.empty((4, 2), np.float32))
    residual = np.ones((2, 4), np.float32)
    with pytest.raises(ValueError, match="out must not share memory with residual"):
        _kernels.sgemm(x, packed, residual=residual, out=residual)
