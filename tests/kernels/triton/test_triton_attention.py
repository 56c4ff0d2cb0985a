"""Triton fused attention against the op table's numpy reference (`attention`).

Tolerance: max|actual - expected| / max|expected| <= 1e-5 for float32 inputs, 1e-2 for float16
and 2e-2 for bfloat16 (the probabilities are rounded to the input dtype before p @ v, as every
flash-attention kernel does). bfloat16 inputs reach the reference as float32 arrays holding the
same values (numpy has no bfloat16).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from nimbus.compiler.ops import get_op
from nimbus.kernels.triton.attention import attention
from triton_checks import close_within, to_numpy

TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}
DTYPES = list(TOLERANCE)
assert_close = close_within(TOLERANCE)


def reference(q, k, v, mask=None, scale=None) -> np.ndarray:
    entry = get_op("attention")
    arrays = [to_numpy(t) for t in (q, k, v, mask)]
    return entry.run_reference(arrays, entry.normalize_attrs({"scale": scale}), None)[0]


def make_inputs(batch, heads, length, keys, head_dim, value_dim, dtype, device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(shape, generator=generator).to(dtype).to(device) for shape in
               [(batch, heads, length, head_dim), (batch, heads, keys, head_dim),
                (batch, heads, keys, value_dim)])
    return q, k, v


def random_bool_mask(shape, device, seed=1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=generator) < 0.7).to(device)


# (B, H, L, S, D, E): odd lengths and head dims, one and several key tiles, D != E.
SHAPES = [(1, 1, 1, 1, 16, 16), (2, 3, 17, 65, 24, 24), (1, 2, 65, 17, 64, 40), (1, 1, 33, 70, 128, 128),
          (1, 2, 20, 64, 32, 32)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_attention_without_mask(shape, dtype, device):
    q, k, v = make_inputs(*shape, dtype, device)
    assert_close(attention(q, k, v), reference(q, k, v), dtype)


def mask_of_form(form: str, batch, heads, length, keys, dtype, device) -> torch.Tensor:
    if form == "bool [L, S]":
        return random_bool_mask((length, keys), device)
    if form == "bool [B, 1, L, S]":
        return random_bool_mask((batch, 1, length, keys), device)
    if form == "bool [B, 1, 1, S] key padding":
        kept = torch.tensor([keys, max(1, keys // 3)])[:batch]
        return (torch.arange(keys)[None, :] < kept[:, None])[:, None, None, :].to(device)
    generator = torch.Generator().manual_seed(2)
    if form == "float [B, H, L, S]":
        return (torch.randn((batch, heads, length, keys), generator=generator) * 2).to(dtype).to(device)
    if form == "float [L, S] with -inf":
        additive = torch.randn((length, keys), generator=generator)
        additive[torch.rand((length, keys), generator=generator) < 0.3] = float("-inf")
        return additive.to(dtype).to(device)
    raise AssertionError(form)


MASK_FORMS = ["bool [L, S]", "bool [B, 1, L, S]", "bool [B, 1, 1, S] key padding",
              "float [B, H, L, S]", "float [L, S] with -inf"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("form", MASK_FORMS)
@pytest.mark.parametrize("shape", [(2, 3, 17, 65, 24, 24), (2, 2, 40, 33, 64, 16), (2, 1, 16, 64, 32, 32)],
                         ids=str)
def test_attention_mask_forms(shape, form, dtype, device):
    batch, heads, length, keys = shape[:4]
    q, k, v = make_inputs(*shape, dtype, device)
    mask = mask_of_form(form, batch, heads, length, keys, dtype, device)
    assert_close(attention(q, k, v, mask), reference(q, k, v, mask), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_fully_masked_rows_give_zeros(kind, dtype, device):
    """Rows with every score masked give 0 (not NaN), also when their key tiles span the loop."""
    q, k, v = make_inputs(2, 2, 19, 70, 32, 32, dtype, device)
    keep = random_bool_mask((2, 1, 19, 70), device)
    keep[0, :, 3] = False
    keep[1, :, 18] = False
    keep[:, :, 5, :40] = False  # masked over the whole first key tile(s) only: must stay finite
    keep[:, :, 5, 41:] = False
    keep[:, :, 5, 40] = True
    mask = keep if kind == "bool" else torch.zeros(keep.shape, dtype=dtype, device=device).masked_fill(
        ~keep, float("-inf"))
    out = attention(q, k, v, mask)
    assert (out[0, :, 3] == 0).all() and (out[1, :, 18] == 0).all()
    assert_close(out, reference(q, k, v, mask), dtype)


def test_every_row_masked(device):
    q, k, v = make_inputs(1, 2, 5, 9, 16, 16, torch.float16, device)
    out = attention(q, k, v, torch.zeros(5, 9, dtype=torch.bool, device=device))
    assert (out == 0).all()


@pytest.mark.parametrize("scale", [0.05, 1.0, -0.3])
def test_attention_scale(scale, device):
    q, k, v = make_inputs(1, 2, 20, 37, 24, 24, torch.float32, device)
    assert_close(attention(q, k, v, scale=scale), reference(q, k, v, scale=scale), torch.float32)


def test_default_scale_is_inverse_sqrt_head_dim(device):
    q, k, v = make_inputs(1, 1, 9, 9, 48, 16, torch.float32, device)
    expected = attention(q, k, v, scale=1.0 / math.sqrt(48)).cpu().numpy()
    np.testing.assert_array_equal(attention(q, k, v).cpu().numpy(), expected)


def test_strided_inputs_and_shared_kv_heads(device):
    """[B, L, H, D] tensors viewed as [B, H, L, D]; k and v with one head shared by all (MQA)."""
    generator = torch.Generator().manual_seed(3)
    q = torch.randn(2, 21, 4, 24, generator=generator).to(device).transpose(1, 2)
    k = torch.randn(2, 1, 24, 37, generator=generator).to(device).transpose(2, 3)
    v = torch.randn(2, 37, 1, 16, generator=generator).to(device).transpose(1, 2)
    mask = random_bool_mask((2, 1, 1, 37), device)
    assert_close(attention(q, k, v, mask), reference(q, k, v, mask), torch.float32)


def test_attention_errors(device):
    q, k, v = make_inputs(1, 2, 8, 8, 16, 16, torch.float16, device)
    with pytest.raises(ValueError, match="q must be 4-D"):
        attention(q[0], k, v)
    with pytest.raises(ValueError, match="share a dtype"):
        attention(q, k.float(), v)
    with pytest.raises(ValueError, match="float16, bfloat16 and float32"):
        attention(q.to(torch.int16), k.to(torch.int16), v.to(torch.int16))
    with pytest.raises(ValueError, match="share the head dim"):
        attention(q, k[..., :8], v)
    with pytest.raises(ValueError, match="share the key length"):
        attention(q, k, v[:, :, :5])
    with pytest.raises(ValueError, match="batch and head axes do not broadcast"):
        attention(q, torch.cat([k, k], 1), torch.cat([v, v], 1))
    with pytest.raises(ValueError, match=r"mask \[8, 7\] does not broadcast"):
        attention(q, k, v, torch.ones(8, 7, dtype=torch.bool, device=device))
    with pytest.raises(ValueError, match="mask must be bool or float"):
        attention(q, k, v, torch.ones(8, 8, dtype=torch.int32, device=device))
    with pytest.raises(ValueError, match=r"head dim must be in 1\.\.256"):
        attention(q.new_zeros(1, 1, 2, 300), k.new_zeros(1, 1, 8, 300), v)
    with pytest.raises(TypeError, match="mask must be a torch tensor"):
        attention(q, k, v, [[True] * 8] * 8)
