"""Triton softmax and layer norm against the op table's numpy references.

Tolerance: max|actual - expected| / max|expected| <= 1e-5 for float32 inputs, 1e-2 for float16
and bfloat16 ones (the result is rounded to the input's 8- or 11-bit mantissa). bfloat16 inputs
reach the reference as float32 arrays holding the same values (numpy has no bfloat16).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nimbus.compiler.ops import get_op
from nimbus.kernels.triton import _rows, layernorm, softmax
from triton_checks import close_within, to_numpy

TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
DTYPES = list(TOLERANCE)
assert_close = close_within(TOLERANCE)


def reference(op: str, arrays: list, **attrs) -> np.ndarray:
    entry = get_op(op)
    return entry.run_reference(arrays, entry.normalize_attrs(attrs), None)[0]


def random_input(shape, dtype, device, scale=3.0, offset=0.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(hash(tuple(shape)) % 2**31)
    return (torch.randn(shape, generator=generator) * scale + offset).to(dtype).to(device)


@pytest.fixture
def looped(monkeypatch):
    """Rows wider than 32 columns take the looped (online) kernels, in chunks of the first config."""
    monkeypatch.setattr(_rows, "MAX_SINGLE_BLOCK_COLS", 32)


SHAPES = [(1, 1), (7, 33), (3, 130), (2, 3, 7), (5,), (2, 1100)]


# ---- softmax ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_softmax_matches_reference(shape, dtype, device):
    x = random_input(shape, dtype, device)
    assert_close(softmax.softmax(x), reference("softmax", [to_numpy(x)], axis=-1), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(3, 33), (2, 130), (1, 200)], ids=str)
def test_softmax_looped_matches_reference(shape, dtype, device, looped):
    x = random_input(shape, dtype, device, scale=10.0)
    assert_close(softmax.softmax(x), reference("softmax", [to_numpy(x)], axis=-1), dtype)


@pytest.mark.parametrize("use_looped", [False, True])
def test_softmax_with_minus_infinity(use_looped, device, monkeypatch):
    """-inf scores get probability 0, even when a whole leading chunk of the row is -inf."""
    if use_looped:
        monkeypatch.setattr(_rows, "MAX_SINGLE_BLOCK_COLS", 32)
    x = random_input((4, 300), torch.float32, device)
    x[:, :150] = float("-inf")
    x[1, 200:] = float("-inf")
    expected = reference("softmax", [to_numpy(x)], axis=-1)
    assert_close(softmax.softmax(x), expected, torch.float32)


def test_softmax_large_magnitudes(device):
    x = random_input((3, 65), torch.float32, device, scale=1e4)
    assert_close(softmax.softmax(x), reference("softmax", [to_numpy(x)], axis=-1), torch.float32)


def test_softmax_empty_input(device):
    assert softmax.softmax(torch.empty(0, 5, device=device)).shape == (0, 5)


def test_softmax_errors(device):
    with pytest.raises(ValueError, match="float16, bfloat16 and float32"):
        softmax.softmax(torch.ones(3, 4, dtype=torch.int32, device=device))
    with pytest.raises(ValueError, match="contiguous"):
        softmax.softmax(torch.ones(4, 6, device=device).t())
    with pytest.raises(ValueError, match="rank >= 1"):
        softmax.softmax(torch.tensor(1.0, device=device))
    with pytest.raises(TypeError, match="torch tensor"):
        softmax.softmax(np.ones((2, 2), np.float32))


# ---- layer norm -------------------------------------------------------------------------------
def affine_params(cols, dtype, device, with_weight, with_bias):
    weight = random_input((cols,), dtype, device, scale=1.0, offset=1.0) if with_weight else None
    bias = random_input((cols + 1,), dtype, device)[:cols].contiguous() if with_bias else None
    return weight, bias


@pytest.mark.parametrize("affine", ["none", "weight", "both"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_layer_norm_matches_reference(shape, dtype, affine, device):
    x = random_input(shape, dtype, device, offset=2.0)
    weight, bias = affine_params(shape[-1], dtype, device, affine != "none", affine == "both")
    expected = reference("layer_norm", [to_numpy(x), to_numpy(weight), to_numpy(bias)], axis=-1, eps=1e-5)
    assert_close(layernorm.layer_norm(x, weight, bias), expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(3, 33), (2, 130), (1, 200)], ids=str)
def test_layer_norm_looped_matches_reference(shape, dtype, device, looped):
    x = random_input(shape, dtype, device, offset=-5.0)
    weight, bias = affine_params(shape[-1], dtype, device, True, True)
    expected = reference("layer_norm", [to_numpy(x), to_numpy(weight), to_numpy(bias)], axis=-1, eps=1e-5)
    assert_close(layernorm.layer_norm(x, weight, bias), expected, dtype)


@pytest.mark.parametrize("use_looped", [False, True])
def test_layer_norm_large_mean_small_variance(use_looped, device, monkeypatch):
    """Centered statistics: a mean of 1000 with deviations of 0.01 must not cancel to noise."""
    if use_looped:
        monkeypatch.setattr(_rows, "MAX_SINGLE_BLOCK_COLS", 32)
    x = random_input((3, 257), torch.float32, device, scale=0.01, offset=1000.0)
    expected = reference("layer_norm", [to_numpy(x), None, None], axis=-1, eps=1e-8)
    actual = layernorm.layer_norm(x, eps=1e-8)
    error = np.abs(actual.double().cpu().numpy() - expected).max()
    # x itself is rounded to float32 (spacing 6e-5 at 1000, 6e-3 of a deviation): allow 1e-2.
    assert error <= 1e-2, f"absolute error {error:.3g}"


def test_layer_norm_eps(device):
    x = random_input((4, 9), torch.float32, device, scale=0.1)
    expected = reference("layer_norm", [to_numpy(x), None, None], axis=-1, eps=0.5)
    assert_close(layernorm.layer_norm(x, eps=0.5), expected, torch.float32)


def test_layer_norm_float32_weight_with_half_input(device):
    x = random_input((5, 40), torch.float16, device)
    weight, bias = affine_params(40, torch.float32, device, True, True)
    expected = reference("layer_norm", [to_numpy(x).astype(np.float32), to_numpy(weight), to_numpy(bias)],
                         axis=-1, eps=1e-5)
    assert_close(layernorm.layer_norm(x, weight, bias), expected.astype(np.float16), torch.float16)


def test_layer_norm_errors(device):
    x = torch.ones(3, 8, device=device)
    with pytest.raises(ValueError, match="float16, bfloat16 and float32 inputs"):
        layernorm.layer_norm(torch.ones(3, 8, dtype=torch.float64, device=device))
    with pytest.raises(ValueError, match="contiguous input"):
        layernorm.layer_norm(torch.ones(8, 3, device=device).t())
    with pytest.raises(ValueError, match=r"weight must have shape \[8\]"):
        layernorm.layer_norm(x, torch.ones(3, device=device))
    with pytest.raises(ValueError, match="bias must be float16, bfloat16 or float32"):
        layernorm.layer_norm(x, None, torch.ones(8, dtype=torch.int64, device=device))
    with pytest.raises(ValueError, match="eps must be >= 0"):
        layernorm.layer_norm(x, eps=-1.0)
    with pytest.raises(ValueError, match="rank >= 1"):
        layernorm.layer_norm(torch.tensor(2.0, device=device))
    with pytest.raises(TypeError, match="weight must be a torch tensor"):
        layernorm.layer_norm(x, [1.0] * 8)
