"""The native NCHW -> NHWC conversion that a float model's input takes before its first layer,
on the selected ISA path here and on the machine's other paths in reruns under NIMBUS_ISA."""

import numpy as np
import pytest
from nimbus.runtime._kernels import to_channels_last
from nimbus.runtime.cpu_ops.nn import channels_last
from other_isas import OTHER_ISAS, rerun_under


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 7), (3, 17, 9, 11), (1, 300, 3, 3),
                                   (2, 3, 64, 65), (0, 3, 4, 4), (2, 0, 4, 4)])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_matches_numpy_transpose(shape, threads):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    actual = to_channels_last(x, threads=threads)
    assert actual.flags.c_contiguous
    np.testing.assert_array_equal(actual, x.transpose(0, 2, 3, 1))


def test_bad_inputs_get_clear_errors():
    x = np.zeros((1, 3, 4, 4), np.float32)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        to_channels_last(x.astype(np.float64))
    with pytest.raises(ValueError, match=r"x must be 4-D \[N, C, H, W\]"):
        to_channels_last(x[0])
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        to_channels_last(x[:, :, :, ::2])


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_channels_last_reuses_nhwc_memory_and_converts_the_rest(dtype):
    nhwc = np.arange(2 * 5 * 6 * 3, dtype=dtype).reshape(2, 5, 6, 3)
    view = nhwc.transpose(0, 3, 1, 2)  # what the native layers return
    assert np.shares_memory(channels_last(view), nhwc)
    nchw = np.ascontiguousarray(view)
    converted = channels_last(nchw)
    assert converted.flags.c_contiguous
    np.testing.assert_array_equal(converted, nhwc)


@pytest.mark.parametrize("isa", OTHER_ISAS)
def test_every_isa_path(isa):
    rerun_under(__file__, isa, "test_every_isa_path")
