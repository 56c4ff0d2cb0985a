"""The native integer attention against qattention_reference, bit for bit: u8 and i8 operands
with any zero points, odd shapes (depths that are not whole 4-byte groups, rows that are not
whole strips), every mask form, fully masked and NaN rows, strided heads, thread counts, the
softmax codes against exp, and the errors for bad arguments. The kernel follows the process's
path: test_every_isa_path reruns this file under NIMBUS_ISA for the machine's other paths."""

from types import SimpleNamespace

import numpy as np
import pytest
from nimbus.runtime import _kernels
from nimbus.runtime.cpu_ops.quant import (qattention_reference, qattention_score_scale,
                                          softmax_codes)
from other_isas import OTHER_ISAS, rerun_under
from test_native_float_norms_attention import ATTENTION_SHAPES, MASKS, attention_problem


@pytest.mark.parametrize("isa", OTHER_ISAS)
def test_every_isa_path(isa):
    rerun_under(__file__, isa, "test_every_isa_path")


def quantized(x: np.ndarray, rng, dtype):
    """x as u8/i8 with a random scale and zero point, and its type for the reference."""
    low = -128 if dtype == np.int8 else 0
    zero_point = int(rng.integers(low, low + 256))
    scale = float(np.float32(rng.uniform(0.005, 0.05)))
    q = np.clip(np.rint(x / scale) + zero_point, low, low + 255).astype(dtype)
    return q, SimpleNamespace(quant=SimpleNamespace(scale=[scale], zero_point=[zero_point]))


def problem(shape, mask_form, dtypes=(np.uint8, np.uint8, np.uint8), seed=0):
    rng = np.random.default_rng(seed)
    q, k, v, mask = attention_problem(*shape, mask_form, seed=seed)
    operands, types = zip(*(quantized(x * 2, rng, dtype) for x, dtype in zip((q, k, v), dtypes)))
    return list(operands) + [mask], list(types) + [None]


def native(xs, types, scale=None, threads=1, out=None):
    q, k, v, mask = xs
    qq, kq, vq = (t.quant for t in types[:3])
    score_scale = qattention_score_scale(qq.scale[0], kq.scale[0],
                                         scale if scale is not None else q.shape[-1] ** -0.5)
    return _kernels.qattention(q, k, v, mask, (qq.zero_point[0], kq.zero_point[0],
                                               vq.zero_point[0]),
                               float(score_scale), float(np.float32(vq.scale[0])), threads, out)


@pytest.mark.parametrize("mask_form", MASKS)
@pytest.mark.parametrize("shape", ATTENTION_SHAPES, ids=str)
def test_qattention_matches_the_reference_bit_for_bit(shape, mask_form):
    xs, types = problem(shape, mask_form)
    expected = qattention_reference(xs, {"scale": None}, types)
    for threads in (1, 3):
        actual = native(xs, types, threads=threads)
        np.testing.assert_array_equal(actual, expected, err_msg=f"{shape} {mask_form} {threads}")
    if mask_form in ("bool", "additive_rows"):
        assert (expected == 0).all(axis=-1).any()  # the fully masked rows give zeros


@pytest.mark.parametrize("dtypes", [(np.int8, np.int8, np.int8), (np.uint8, np.int8, np.int8),
                                    (np.int8, np.uint8, np.uint8)], ids=str)
@pytest.mark.parametrize("shape", [((3,), 19, 45, 64, 33), ((2,), 7, 9, 6, 70)], ids=str)
def test_signed_and_mixed_operands(shape, dtypes):
    xs, types = problem(shape, "additive_keys", dtypes, seed=2)
    expected = qattention_reference(xs, {"scale": 0.3}, types)
    np.testing.assert_array_equal(native(xs, types, scale=0.3, threads=2), expected)


def test_strided_heads_and_out():
    """q, k and v as heads of [N, L, H, D] projections (read in place), out into a wider
    buffer; NaN and +inf scores give NaN rows."""
    rng = np.random.default_rng(3)
    n, length, heads, depth = 2, 37, 3, 20
    projections = [rng.integers(0, 256, (n, length, heads, depth)).astype(np.uint8)
                   for _ in range(3)]
    xs = [np.swapaxes(p, 1, 2) for p in projections] + [None]
    types = [SimpleNamespace(quant=SimpleNamespace(scale=[0.02], zero_point=[z])) for z in
             (120, 3, 250)] + [None]
    expected = qattention_reference(xs, {"scale": None}, types)
    wide = np.zeros((n, heads, length, depth + 4), np.float32)
    out = wide[..., 1:depth + 1]
    assert native(xs, types, threads=2, out=out) is out
    np.testing.assert_array_equal(out, expected)
    assert not wide[..., 0].any() and not wide[..., depth + 1:].any()
    mask = np.zeros((length, length), np.float32)
    mask[4, 2], mask[6, 1] = np.nan, np.inf
    xs[3] = mask
    expected = qattention_reference(xs, {"scale": None}, types)
    actual = native(xs, types)
    assert np.isnan(actual[:, :, [4, 6]]).all() and not np.isnan(np.delete(actual, [4, 6], 2)).any()
    np.testing.assert_array_equal(actual, expected)


def test_softmax_codes_round_255_exp():
    """The codes are rint(255 exp(t)) but where 255 exp(t) lies within 0.01 of a half."""
    t = -np.linspace(0, 20, 400001, dtype=np.float32)
    codes = softmax_codes(t)
    ideal = 255 * np.exp(t.astype(np.float64))
    near_half = np.abs(ideal - np.floor(ideal) - 0.5) < 0.01
    assert codes.dtype == np.uint8 and codes[0] == 255 and codes[-1] == 0
    np.testing.assert_array_equal(codes[~near_half], np.rint(ideal[~near_half]))
    assert np.abs(codes.astype(np.float64) - ideal).max() <= 0.51
    assert softmax_codes(np.array([-np.inf], np.float32))[0] == 0


def test_bad_arguments_name_what_is_wrong():
    xs, types = problem(((2,), 5, 6, 8, 4), "none")
    q, k, v, _ = xs
    with pytest.raises(TypeError, match="q must have dtype uint8 or int8, got float32"):
        _kernels.qattention(q.astype(np.float32), k, v, None, (0, 0, 0), 1.0, 1.0)
    with pytest.raises(ValueError, match="k's zero point 300 is outside its dtype uint8"):
        _kernels.qattention(q, k, v, None, (0, 300, 0), 1.0, 1.0)
    with pytest.raises(ValueError, match="must share their batch dimensions, D and S"):
        _kernels.qattention(q, k[..., :5], v, None, (0, 0, 0), 1.0, 1.0)
    with pytest.raises(ValueError, match="contiguous rows"):
        _kernels.qattention(q[..., ::2], k[..., ::2], v, None, (0, 0, 0), 1.0, 1.0)
