"""The native NHWC max pooling against the numpy reference, exactly, for every element type, and
the float32 average pooling bit for bit (signed zeros, NaN and infinities included, both divisor
rules), on every ISA path of this machine (the AVX-512 max pooling keeps each window's maximum in
a register)."""

import numpy as np
import pytest
from nimbus.runtime import _kernels
from nimbus.runtime.cpu_ops.nn import avg_pool_reference, max_pool_reference, output_hw
from other_isas import OTHER_ISAS, rerun_under

# (N, C, H, W), kernel, stride, padding [top, left, bottom, right], dilation, ceil mode
GEOMETRIES = [
    ((1, 64, 112, 112), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), False),  # ResNet's stem
    ((2, 17, 9, 10), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), False),
    ((1, 3, 7, 8), (2, 3), (2, 2), (0, 0, 0, 0), (2, 1), True),
    ((3, 5, 6, 5), (2, 2), (2, 2), (1, 0, 0, 1), (1, 1), False),
    ((1, 33, 1, 1), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), False),
    ((2, 7, 11, 4), (5, 2), (3, 1), (2, 0, 2, 1), (1, 2), True),
    ((2, 6, 28, 28), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), False),  # LeNet's first pooling
    ((1, 130, 5, 6), (3, 2), (1, 2), (1, 1, 1, 0), (1, 1), False),  # 2 vectors and a part
    ((1, 2, 20, 3), (17, 2), (1, 1), (0, 0, 0, 0), (1, 1), False),  # past 16 window rows
]
TYPES = {"u8": (np.uint8, 0, 255), "i8": (np.int8, -128, 127), "f32": (np.float32, None, None)}


def nchw_input(shape, dtype_name, rng) -> np.ndarray:
    dtype, low, high = TYPES[dtype_name]
    if low is None:
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(low, high, size=shape, dtype=dtype, endpoint=True)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype_name", TYPES)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "x".join(map(str, g[0])))
def test_max_pool_matches_the_reference(geometry, dtype_name, threads):
    shape, kernel, stride, padding, dilation, ceil_mode = geometry
    x = nchw_input(shape, dtype_name, np.random.default_rng(list(shape)))
    attrs = {"kernel": kernel, "stride": stride, "padding": padding, "dilation": dilation,
             "ceil_mode": ceil_mode}
    expected = max_pool_reference([x], attrs)
    out_hw = output_hw(x.shape, kernel, stride, padding, dilation, ceil_mode)
    actual = _kernels.max_pool2d(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), kernel, stride,
                                 padding, dilation, out_hw, threads=threads)
    np.testing.assert_array_equal(actual.transpose(0, 3, 1, 2), expected)


# The geometries without dilation, and average pooling's own: DenseNet's transition, Inception's
# padded 3 x 3 at stride 1, windows past the padding (ceil mode) and windows wholly in it.
AVERAGE_GEOMETRIES = [g[:4] + (g[5],) for g in GEOMETRIES if g[4] == (1, 1)] + [
    ((1, 128, 56, 56), (2, 2), (2, 2), (0, 0, 0, 0), False),
    ((2, 19, 17, 13), (3, 3), (1, 1), (1, 1, 1, 1), False),
    ((1, 9, 8, 7), (3, 3), (2, 2), (1, 1, 1, 1), True),
    ((1, 5, 2, 3), (3, 4), (2, 3), (2, 2, 2, 2), True),
]


def bits(x: np.ndarray) -> np.ndarray:
    """float32 bits, every NaN as one (its sign and payload carry no meaning)."""
    return np.where(np.isnan(x), np.float32(np.nan), x).astype(np.float32).view(np.int32)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("geometry", AVERAGE_GEOMETRIES, ids=lambda g: "x".join(map(str, g[0])))
def test_avg_pool_matches_the_reference_bit_for_bit(geometry, count_include_pad, threads):
    shape, kernel, stride, padding, ceil_mode = geometry
    rng = np.random.default_rng(list(shape))
    x = nchw_input(shape, "f32", rng)
    specials = np.array([-0.0, np.nan, np.inf, -np.inf, 1e38, -1e38], np.float32)
    x.reshape(-1)[rng.integers(0, x.size, specials.size)] = specials
    x[:, 0] = -0.0  # windows of negative zeros: each padding tap past the first adds +0.0
    attrs = {"kernel": kernel, "stride": stride, "padding": padding, "ceil_mode": ceil_mode,
             "count_include_pad": count_include_pad}
    with np.errstate(all="ignore"):
        expected = avg_pool_reference([x], attrs)
    out_hw = output_hw(x.shape, kernel, stride, padding, (1, 1), ceil_mode)
    actual = _kernels.avg_pool2d(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), kernel, stride,
                                 padding, out_hw, count_include_pad, threads=threads)
    np.testing.assert_array_equal(bits(actual.transpose(0, 3, 1, 2)), bits(expected))


def test_bad_average_pool_input_is_a_clear_error():
    x = np.zeros((1, 4, 4, 2), np.float32)
    with pytest.raises(TypeError, match="float32"):
        _kernels.avg_pool2d(x.astype(np.float64), (2, 2), (1, 1), (0, 0, 0, 0), (3, 3), True)
    with pytest.raises(ValueError, match="C-contiguous"):
        _kernels.avg_pool2d(x.transpose(0, 2, 1, 3), (2, 2), (1, 1), (0, 0, 0, 0), (3, 3), True)
    with pytest.raises(ValueError, match="stride values"):
        _kernels.avg_pool2d(x, (2, 2), (0, 1), (0, 0, 0, 0), (3, 3), True)


@pytest.mark.parametrize("nan_at", [0, 1, 3])
def test_nan_wins_like_numpy(nan_at):
    x = np.zeros((1, 1, 2, 2), np.float32)
    x.reshape(-1)[nan_at] = np.nan
    out = _kernels.max_pool2d(x.transpose(0, 2, 3, 1).copy(), (2, 2), (1, 1), (0, 0, 0, 0),
                              (1, 1), (1, 1))
    assert np.isnan(out).all()


def test_bad_input_is_a_clear_error():
    x = np.zeros((1, 4, 4, 2), np.float32)
    with pytest.raises(TypeError, match="uint8, int8 or float32"):
        _kernels.max_pool2d(x.astype(np.float64), (2, 2), (1, 1), (0, 0, 0, 0), (1, 1), (3, 3))
    with pytest.raises(ValueError, match="4-D"):
        _kernels.max_pool2d(x[0], (2, 2), (1, 1), (0, 0, 0, 0), (1, 1), (3, 3))
    with pytest.raises(ValueError, match="C-contiguous"):
        _kernels.max_pool2d(x.transpose(0, 2, 1, 3), (2, 2), (1, 1), (0, 0, 0, 0), (1, 1), (3, 3))
    with pytest.raises(ValueError, match="kernel values"):
        _kernels.max_pool2d(x, (0, 2), (1, 1), (0, 0, 0, 0), (1, 1), (3, 3))
    with pytest.raises(ValueError, match="padding must hold 4"):
        _kernels.max_pool2d(x, (2, 2), (1, 1), (0, 0), (1, 1), (3, 3))


@pytest.mark.parametrize("isa", OTHER_ISAS)
def test_every_isa_path(isa):
    rerun_under(__file__, isa, "test_every_isa_path")
