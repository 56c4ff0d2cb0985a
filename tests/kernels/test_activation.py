"""The native activation pass (the float kernels' epilogue activations on their own) against
float64 references, and its argument checks; again under NIMBUS_ISA for the machine's other
paths (AVX-512 and AVX2 vector math, the portable scalar one)."""

import numpy as np
import pytest
from checks import assert_matches
from nimbus.runtime import _kernels
from other_isas import OTHER_ISAS, rerun_under
from test_sgemm import ACTIVATIONS


@pytest.mark.parametrize("name", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(1,), (17,), (3, 5, 33), (128, 3072)])
def test_activation_matches_the_reference(name, shape):
    x = (np.random.default_rng(list(shape)).standard_normal(shape) * 6).astype(np.float32)
    x.flat[0] = -40.0  # saturated tails
    if x.size > 1:
        x.flat[1] = 40.0
    actual = _kernels.activation(x, name)
    assert actual.shape == x.shape and actual is not x
    assert_matches(actual.astype(np.float64), ACTIVATIONS[name](x.astype(np.float64)),
                   name=name, rtol=1e-5)
    # chunks over two threads (128 x 3072 is more than one chunk): the same bits
    np.testing.assert_array_equal(_kernels.activation(x, name, threads=2), actual)


@pytest.mark.parametrize("name", ["relu", "relu6", "sigmoid", "tanh", "silu", "gelu", "gelu_tanh",
                                  "hardswish"])
def test_nan_stays_nan(name):
    """NaN gives NaN, as numpy's functions do, in full vectors of lanes and in a tail: the exp
    behind tanh and sigmoid once clamped NaN to a finite value (tanh(NaN) came out -1)."""
    x = np.array([np.nan] * 17 + [0.5], np.float32)
    actual = _kernels.activation(x, name)
    assert np.isnan(actual[:17]).all()
    assert_matches(actual[17:].astype(np.float64), ACTIVATIONS[name](x[17:].astype(np.float64)),
                   name=name, rtol=1e-5)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        _kernels.activation(np.zeros(3, np.float32), "swish")
    with pytest.raises(TypeError, match="float32"):
        _kernels.activation(np.zeros(3), "relu")
    with pytest.raises(ValueError, match="C-contiguous"):
        _kernels.activation(np.zeros((4, 4), np.float32)[:, ::2], "relu")
    with pytest.raises(ValueError, match="threads"):
        _kernels.activation(np.zeros(3, np.float32), "relu", threads=0)


@pytest.mark.parametrize("isa", OTHER_ISAS)
def test_every_isa_path(isa):
    rerun_under(__file__, isa, "test_every_isa_path")
