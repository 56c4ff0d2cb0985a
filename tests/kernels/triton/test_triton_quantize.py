"""The Triton quantize / dequantize kernels against the CPU backend's arithmetic, bit for bit:
per tensor and per axis, u8 and i8, on odd sizes, with ties, saturating and huge values."""

import numpy as np
import pytest
import torch
from nimbus.compiler.ir import QuantParams
from nimbus.kernels.triton.quantize import QuantParameters, dequantize, quantize
from nimbus.runtime.cpu_ops.quant import dequantize_array, quantize_array

# (shape, axis): odd sizes, never a multiple of a block; per-tensor (None) and per-axis cases.
LAYOUTS = [((3, 5, 7, 11), None), ((3, 5, 7, 11), 1), ((2, 9, 13), 2), ((1027,), 0), ((4, 1), 0)]


def values(shape, seed: int) -> np.ndarray:
    """Random floats with exact ties (k + 0.5 steps), values past the 8-bit range, huge
    magnitudes, signed zeros and -inf/+inf."""
    rng = np.random.default_rng([seed, *shape])
    x = (rng.standard_normal(shape) * 40).astype(np.float32)
    flat = x.reshape(-1)
    flat[::7] = np.round(flat[::7]) + 0.5
    flat[1::11] = np.float32(3e9) * np.sign(flat[1::11])
    flat[2::13] = -0.0
    if flat.size > 20:
        flat[3], flat[4] = np.inf, -np.inf
    return x


def parameters(shape, axis, dtype: str, seed: int):
    rng = np.random.default_rng(seed)
    count = 1 if axis is None else shape[axis]
    scale = rng.uniform(0.05, 2.0, count).astype(np.float32)
    scale[0] = 0.5  # ties land on k + 0.5 exactly
    low, high = (0, 255) if dtype == "u8" else (-128, 127)
    zero_point = rng.integers(low, high, count, endpoint=True)
    return QuantParams(scale, zero_point, axis)


@pytest.mark.parametrize("dtype", ["u8", "i8"])
@pytest.mark.parametrize("shape, axis", LAYOUTS)
def test_quantize_matches_the_cpu_backend(shape, axis, dtype, device):
    quant = parameters(shape, axis, dtype, len(shape))
    params = QuantParameters(quant.scale, quant.zero_point, axis, len(shape), device)
    x = values(shape, 1)
    expected = quantize_array(x, quant, dtype)
    actual = quantize(torch.from_numpy(x).to(device), params, dtype).cpu().numpy()
    assert actual.dtype == expected.dtype
    np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("dtype", ["u8", "i8"])
@pytest.mark.parametrize("shape, axis", LAYOUTS)
def test_dequantize_matches_the_cpu_backend(shape, axis, dtype, device):
    quant = parameters(shape, axis, dtype, len(shape))
    params = QuantParameters(quant.scale, quant.zero_point, axis, len(shape), device)
    q = quantize_array(values(shape, 1), quant, dtype)
    restored = dequantize(torch.from_numpy(q).to(device), params).cpu().numpy()
    np.testing.assert_array_equal(restored.view(np.int32), dequantize_array(q, quant).view(np.int32))


def test_half_inputs(device):
    quant = QuantParams([0.25], [3])
    params = QuantParameters(quant.scale, quant.zero_point, None, 2, device)
    x = np.clip(values((5, 33), 2), -6e4, 6e4).astype(np.float16)
    expected = quantize_array(x.astype(np.float32), quant, "u8")
    np.testing.assert_array_equal(quantize(torch.from_numpy(x).to(device), params, "u8").cpu().numpy(),
                                  expected)


def test_int32_accumulators(device):
    quant = QuantParams([0.25], [3])
    params = QuantParameters(quant.scale, quant.zero_point, None, 2, device)
    acc = np.random.default_rng(3).integers(-2**30, 2**30, (5, 33)).astype(np.int32)
    np.testing.assert_array_equal(dequantize(torch.from_numpy(acc).to(device), params).cpu().numpy(),
                                  dequantize_array(acc, quant))


def test_bad_parameters_and_inputs_raise(device):
    with pytest.raises(ValueError, match="2 scales and 3 zero points"):
        QuantParameters([1.0, 2.0], [0, 0, 0], 0, 2, device)
    with pytest.raises(ValueError, match="per tensor"):
        QuantParameters([1.0, 2.0], [0], None, 2, device)
    with pytest.raises(ValueError, match="out of range"):
        QuantParameters([1.0, 2.0], [0], 2, 2, device)
    params = QuantParameters([1.0, 2.0], [0], 0, 2, device)
    with pytest.raises(ValueError, match="2 scales for axis 0 of size 3"):
        quantize(torch.zeros(3, 4, device=device), params, "u8")
    with pytest.raises(ValueError, match="dtype must be"):
        quantize(torch.zeros(2, 4, device=device), params, "i32")
    with pytest.raises(ValueError, match="float tensor"):
        quantize(torch.zeros(2, 4, dtype=torch.int32, device=device), params, "u8")
    with pytest.raises(ValueError, match="uint8, int8 or int32"):
        dequantize(torch.zeros(2, 4, device=device), params)
