"""The native quantize / dequantize kernels against the reference's numpy arithmetic, bit for
bit: ties, saturation, infinities, NaN, signed zeros, odd and empty sizes, 1 and 2 threads, on
the selected ISA path here and on the machine's other paths in reruns under NIMBUS_ISA."""

import numpy as np
import pytest
from nimbus.runtime import _kernels
from nimbus.runtime.cpu_ops.quant import _Quant, dequantize_array, quantize_array
from other_isas import OTHER_ISAS, rerun_under

SHAPES = [(0,), (1,), (3, 5, 7), (2, 16384 + 17), (40000,)]


def values(shape, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, *shape])
    x = (rng.standard_normal(shape) * 60).astype(np.float32)
    flat = x.reshape(-1)
    flat[::5] = np.round(flat[::5]) + 0.5          # exact ties at scale 1 ...
    flat[1::5] = (np.round(flat[1::5]) + 0.5) / 4  # ... and at scale 0.25
    flat[2::9] = np.float32(3e9) * np.sign(flat[2::9] + 0.5)
    flat[3::11] = -0.0
    for i, special in zip(range(4, flat.size, 13), [np.inf, -np.inf, np.nan, -np.nan]):
        flat[i] = special
    return x


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("scale, zero_point, dtype", [
    (1.0, 0, "u8"), (0.25, 128, "u8"), (0.37, 3, "u8"), (0.25, 0, "s8"), (1.7, -100, "s8"),
    (3e-5, 127, "s8")])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_the_reference_bit_for_bit(shape, scale, zero_point, dtype, threads):
    quant = _Quant((scale,), (zero_point,), None)
    x = values(shape, 1)
    with np.errstate(invalid="ignore"):  # numpy warns casting NaN; it gives 0, as the kernel
        expected = quantize_array(x, quant, "u8" if dtype == "u8" else "i8")
    actual = _kernels.quantize(x, scale, zero_point, dtype, threads=threads)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    np.testing.assert_array_equal(actual, expected)
    restored = _kernels.dequantize(expected, scale, zero_point, threads=threads)
    np.testing.assert_array_equal(restored.view(np.int32),
                                  dequantize_array(expected, quant).view(np.int32))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(2, 3, 37, 41), (1, 3, 45, 47), (1, 1, 1, 1), (3, 17, 5, 3),
                                   (1, 64, 33, 33), (2, 5, 0, 3)])
def test_channels_last_writes_nhwc(shape, threads):
    quant = _Quant((0.37,), (3,), None)
    x = values(shape, 2)
    with np.errstate(invalid="ignore"):
        expected = quantize_array(x, quant, "u8").transpose(0, 2, 3, 1)
    actual = _kernels.quantize(x, 0.37, 3, "u8", channels_last=True, threads=threads)
    assert actual.shape == expected.shape and actual.flags.c_contiguous
    np.testing.assert_array_equal(actual, expected)
    signed = _kernels.quantize(x, 0.37, -3, "s8", channels_last=True, threads=threads)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(
            signed, quantize_array(x, _Quant((0.37,), (-3,), None), "i8").transpose(0, 2, 3, 1))


def test_the_quantize_op_hands_convolutions_nhwc_memory():
    from nimbus.runtime.cpu_ops.quant import quantize as quantize_op

    x = values((2, 3, 7, 9), 3)
    attrs = {"scale": (0.25,), "zero_point": (128,), "axis": None, "dtype": "u8"}
    with np.errstate(invalid="ignore"):
        result = quantize_op([x], attrs, None)
        np.testing.assert_array_equal(result, quantize_array(x, _Quant((0.25,), (128,), None), "u8"))
    assert result.transpose(0, 2, 3, 1).flags.c_contiguous  # NCHW view of NHWC memory


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("shape", [(7,), (2, 5, 7), (3, 40000 // 768 + 1, 768), (0, 3)])
def test_dequantize_per_last_axis_channel(shape, dtype, threads):
    rng = np.random.default_rng([4, *shape])
    info = np.iinfo(dtype)
    q = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    channels = shape[-1]
    scales = rng.uniform(1e-3, 2.0, channels).astype(np.float32)
    zero_points = rng.integers(info.min, info.max, channels, endpoint=True).astype(np.int32)
    quant = _Quant(tuple(scales), tuple(int(z) for z in zero_points), len(shape) - 1)
    actual = _kernels.dequantize_channels(q, scales, zero_points, threads=threads)
    expected = dequantize_array(q, quant)
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(actual.view(np.int32), expected.view(np.int32))


def test_dequantize_per_channel_checks_its_parameters():
    q = np.zeros((2, 3), np.uint8)
    with pytest.raises(ValueError, match="scales"):
        _kernels.dequantize_channels(q, np.ones(2, np.float32), np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="scale"):
        _kernels.dequantize_channels(q, np.array([1, 0, 1], np.float32), np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="zero_point"):
        _kernels.dequantize_channels(q, np.ones(3, np.float32), np.array([0, 300, 0], np.int32))
    with pytest.raises(TypeError, match="int32"):
        _kernels.dequantize_channels(q, np.ones(3, np.float32), np.zeros(3, np.int64))


def test_program_steps_are_the_functions():
    rng = np.random.default_rng(9)
    q = rng.integers(-128, 127, (3, 5, 768), dtype=np.int8, endpoint=True)
    scales = rng.uniform(1e-3, 2.0, 768).astype(np.float32)
    zero_points = rng.integers(-128, 127, 768, endpoint=True).astype(np.int32)
    program = _kernels.Program()
    per_tensor, per_column = np.empty(q.shape, np.float32), np.empty(q.shape, np.float32)
    program.dequantize(q, 0.05, -3, per_tensor)
    program.dequantize_channels(q, scales, zero_points, per_column)
    buffer = np.empty(q.shape, np.float32)
    with pytest.raises(ValueError, match="out must not share memory with q"):
        program.dequantize(buffer.view(np.int8).reshape(-1)[:q.size].reshape(q.shape), 0.05,
                           -3, buffer)
    program.run(threads=2)
    np.testing.assert_array_equal(per_tensor, _kernels.dequantize(q, 0.05, -3))
    np.testing.assert_array_equal(per_column,
                                  _kernels.dequantize_channels(q, scales, zero_points))


def test_bad_inputs_raise_clear_errors():
    x = np.zeros((4, 4), np.float32)
    with pytest.raises(TypeError, match="float32"):
        _kernels.quantize(x.astype(np.float64), 1.0, 0, "u8")
    with pytest.raises(ValueError, match="contiguous"):
        _kernels.quantize(x[:, ::2], 1.0, 0, "u8")
    for scale in (0.0, -1.0, float("inf"), float("nan"), 1e-60):
        with pytest.raises(ValueError, match="scale"):
            _kernels.quantize(x, scale, 0, "u8")
    with pytest.raises(ValueError, match="zero_point"):
        _kernels.quantize(x, 1.0, 200, "s8")
    with pytest.raises(ValueError, match="dtype"):
        _kernels.quantize(x, 1.0, 0, "i32")
    with pytest.raises(ValueError, match="channels_last needs x as NCHW"):
        _kernels.quantize(x, 1.0, 0, "u8", channels_last=True)
    with pytest.raises(TypeError, match="int8"):
        _kernels.dequantize(x, 1.0, 0)
    with pytest.raises(ValueError, match="zero_point"):
        _kernels.dequantize(np.zeros(3, np.uint8), 1.0, -1)


@pytest.mark.parametrize("isa", OTHER_ISAS)
def test_every_isa_path(isa):
    rerun_under(__file__, isa, "test_every_isa_path")
