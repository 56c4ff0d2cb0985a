"""The native mean over one axis (a global average pool) against numpy's float64 mean, bit for
bit, for odd shapes and thread counts, and its argument errors. Again under NIMBUS_ISA for the
machine's other paths."""

import numpy as np
import pytest
from nimbus.runtime import _kernels
from other_isas import OTHER_ISAS, rerun_under


@pytest.mark.parametrize("threads", [1, 2, 5])
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 49, 513), (3, 7, 1), (17, 3, 33), (1, 300, 5),
                                   (1, 49, 1280), (1, 5, 131), (2, 3, 200), (1, 3136, 144),
                                   (1, 1000, 32), (1, 77, 47), (1, 9, 1159)])
def test_mean_axis_is_the_float64_mean(shape, threads):
    x = (np.random.default_rng(list(shape)).standard_normal(shape) * 100).astype(np.float32)
    expected = x.mean(axis=1, dtype=np.float64).astype(np.float32)
    np.testing.assert_array_equal(_kernels.mean_axis(x, threads), expected)


def test_mean_axis_checks_its_argument():
    with pytest.raises(ValueError, match=r"x must be 3-D \[O, L, I\]"):
        _kernels.mean_axis(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="at least one value to average over"):
        _kernels.mean_axis(np.zeros((2, 0, 3), np.float32))
    with pytest.raises(TypeError, match="float32"):
        _kernels.mean_axis(np.zeros((2, 3, 4), np.float64))


@pytest.mark.parametrize("isa", OTHER_ISAS)
def test_every_isa_path(isa):
    rerun_under(__file__, isa, "test_every_isa_path")
