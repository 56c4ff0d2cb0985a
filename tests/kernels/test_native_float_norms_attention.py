"""The native float32 attention, layer norm and softmax against the float64 references of
runtime/cpu_ops: odd shapes, every mask form, NaN and fully masked rows, thread counts, the
CPU ops that call them, and the errors for bad arguments. These kernels take no isa= argument:
this process checks the selected path and test_every_isa_path reruns the file under
NIMBUS_ISA for the machine's other paths."""

import numpy as np
import pytest
from checks import assert_matches
from nimbus.runtime import _kernels
from nimbus.runtime.cpu_ops.fused import attention_kernel, attention_reference
from nimbus.runtime.cpu_ops.nn import (
    layer_norm_kernel,
    layer_norm_reference,
    softmax_kernel,
    softmax_reference,
)
from nimbus.runtime.cpu_ops.registry import NATIVE_THREADS
from other_isas import OTHER_ISAS, rerun_under

# (batch dims, L, S, D, Dv): L, S, D not multiples of 16, one query row, one key row.
ATTENTION_SHAPES = [((2, 3), 17, 33, 19, 21), ((), 37, 70, 23, 45), ((2, 3), 1, 130, 17, 80),
                    ((4,), 40, 1, 64, 64), ((), 1, 1, 5, 3), ((1, 12), 128, 128, 64, 64)]
MASKS = ["none", "bool", "additive_keys", "additive_rows"]


@pytest.mark.parametrize("isa", OTHER_ISAS)
def test_every_isa_path(isa):
    rerun_under(__file__, isa, "test_every_isa_path")


def attention_problem(batch, l, s, d, dv, mask_form, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal(batch + shape).astype(np.float32)
               for shape in ((l, d), (s, d), (s, dv)))
    if mask_form == "bool":
        mask = rng.random(batch + (l, s)) > 0.3
        mask[..., ::3, :] = False  # fully masked rows give zeros
    elif mask_form == "additive_keys":  # BERT's [N, 1, 1, S]
        mask = np.where(rng.random(batch[:1] + (1,) * len(batch[1:]) + (1, s)) > 0.3, 0.0, -1e4)
    elif mask_form == "additive_rows":  # [L, S], with -inf and a fully masked row
        mask = rng.standard_normal((l, s)) * 3
        mask[:, ::4] = -np.inf
        mask[::5] = -np.inf
    else:
        mask = None
    if mask is not None and mask.dtype != np.bool_:
        mask = mask.astype(np.float32)
    return q, k, v, mask


@pytest.mark.parametrize("mask_form", MASKS)
@pytest.mark.parametrize("shape", ATTENTION_SHAPES, ids=str)
def test_attention_matches_the_reference(shape, mask_form):
    q, k, v, mask = attention_problem(*shape, mask_form)
    expected = attention_reference([q, k, v, mask], {"scale": None})
    actual = _kernels.attention(q, k, v, mask, threads=1)
    assert_matches(actual, expected, name=f"{shape} {mask_form}", rtol=1e-5)
    assert actual.flags.c_contiguous
    if mask_form in ("bool", "additive_rows"):
        assert not np.any(actual[..., ::(3 if mask_form == "bool" else 5), :])
    assert np.array_equal(_kernels.attention(q, k, v, mask, threads=2), actual)
    scaled = _kernels.attention(q, k, v, mask, 0.3, threads=2)
    assert_matches(scaled, attention_reference([q, k, v, mask], {"scale": 0.3}), rtol=1e-5)


def test_attention_nan_propagates_as_in_numpy():
    q, k, v, mask = attention_problem((2,), 9, 20, 7, 5, "bool", seed=1)
    q[0, 4, 2] = np.nan  # a NaN score row
    v[1, 6, 3] = np.nan  # a NaN value column
    actual = _kernels.attention(q, k, v, mask, threads=2)
    expected = attention_reference([q, k, v, mask], {"scale": None})
    assert np.array_equal(np.isnan(actual), np.isnan(expected))
    assert_matches(actual, expected, rtol=1e-5)


def test_large_scores_saturate():
    q, k, v, _ = attention_problem((3,), 10, 50, 8, 8, "none", seed=2)
    for scale in (100.0, 1e-30):
        actual = _kernels.attention(q, k, v, None, scale, threads=2)
        assert_matches(actual, attention_reference([q, k, v, None], {"scale": scale}), rtol=1e-5)


def test_the_attention_op_takes_views_and_broadcast_batches():
    q, k, v, mask = attention_problem((2, 3), 17, 33, 19, 19, "additive_keys", seed=3)
    k_view = np.swapaxes(np.ascontiguousarray(np.swapaxes(k, 1, 2)), 1, 2)  # columns strided
    expected = attention_reference([q, k, v, mask], {"scale": None})
    token = NATIVE_THREADS.set(2)
    try:
        actual = attention_kernel([q, k_view, v, mask], {"scale": None})
        assert_matches(actual, expected, rtol=1e-5)
        assert actual.flags.c_contiguous and not any(np.shares_memory(actual, t) for t in (q, k, v))
        # k and v shared by every batch element: read through zero strides.
        broadcast = attention_kernel([q, k[:1], v[:1], None], {"scale": None})
        assert_matches(broadcast, attention_reference([q, k[:1], v[:1], None], {"scale": None}))
        # Heads split from [N, L, H, D] projections are read in place, and the result comes back
        # as [N, H, L, Dv] over [N, L, H, Dv] memory, so merging the heads is a free reshape.
        heads = [np.ascontiguousarray(np.swapaxes(t, 1, 2)).swapaxes(1, 2) for t in (q, k, v)]
        split = attention_kernel(heads + [mask], {"scale": None})
        assert_matches(split, expected, rtol=1e-5)
        assert np.swapaxes(split, 1, 2).flags.c_contiguous
        # A mask wider than the scores broadcasts them up: the numpy path, like the reference.
        wide_mask = np.stack([mask, mask * 2])
        wide = attention_kernel([q, k, v, wide_mask], {"scale": None})
        assert wide.shape == (2,) + expected.shape
        assert_matches(wide, attention_reference([q, k, v, wide_mask], {"scale": None}),
                       rtol=1e-5)
    finally:
        NATIVE_THREADS.reset(token)


def test_attention_reads_and_writes_strided_matrices():
    q, k, v, mask = attention_problem((2, 3), 9, 12, 8, 5, "bool", seed=4)
    expected = attention_reference([q, k, v, mask], {"scale": None})
    wide = np.zeros((3, 2, 9, 11), np.float32)  # rows 11 apart, batch dimensions swapped
    out = np.swapaxes(wide, 0, 1)[..., 2:7]
    result = _kernels.attention(np.swapaxes(np.ascontiguousarray(np.swapaxes(q, 0, 1)), 0, 1),
                                k, v, mask, threads=2, out=out)
    assert result is out and np.shares_memory(out, wide)
    assert_matches(out, expected, rtol=1e-5)
    assert not wide[..., :2].any() and not wide[..., 7:].any()
    shared = np.lib.stride_tricks.as_strided(np.zeros((3, 9, 5), np.float32), (2, 3, 9, 5),
                                             (0, 9 * 5 * 4, 5 * 4, 4))  # both images, one buffer
    with pytest.raises(ValueError, match="must not overlap itself"):
        _kernels.attention(q, k, v, mask, out=shared)
    with pytest.raises(ValueError, match="writable array of shape"):
        _kernels.attention(q, k, v, mask, out=np.zeros((2, 3, 9, 4), np.float32))
    with pytest.raises(ValueError, match="contiguous rows"):
        _kernels.attention(q[..., ::2], k[..., ::2], v, mask)


def test_program_steps_are_the_functions():
    """Program.attention (heads read in place, a mask), Program.layer_norm and Program.softmax
    give the bits of the functions, into the out arrays a plan allocated once, run after run."""
    q, k, v, mask = attention_problem((2, 3), 17, 33, 19, 19, "additive_keys", seed=5)
    heads = [np.ascontiguousarray(np.swapaxes(t, 1, 2)).swapaxes(1, 2) for t in (q, k, v)]
    x = np.random.default_rng(6).standard_normal((37, 77)).astype(np.float32)
    weight, bias = np.linspace(0.5, 2, 77, dtype=np.float32), np.linspace(-1, 1, 77, dtype=np.float32)
    program = _kernels.Program()
    attended, normalized = np.empty(q.shape, np.float32), np.empty(x.shape, np.float32)
    program.attention(*heads, mask, 0.3, attended)
    program.layer_norm(x, weight, bias, 1e-5, normalized)
    softmaxed = np.empty(x.shape, np.float32)
    program.softmax(x, -1, softmaxed)
    with pytest.raises(ValueError, match="needs its out array"):
        program.layer_norm(x, None, None, 1e-5, None)
    with pytest.raises(ValueError, match=r"out must have shape \(37, 77\)"):
        program.layer_norm(x, None, None, 1e-5, np.empty((37, 76), np.float32))
    with pytest.raises(ValueError, match="last axis only"):
        program.softmax(x, 0, softmaxed)
    assert len(program) == 3
    for _ in range(2):
        program.run(threads=2)
        np.testing.assert_array_equal(attended, _kernels.attention(*heads, mask, 0.3))
        np.testing.assert_array_equal(normalized, _kernels.layer_norm(x, weight, bias, 1e-5))
        np.testing.assert_array_equal(softmaxed, _kernels.softmax(x, -1))
        heads[0][...] *= 2  # the next run reads the arrays as they are then
        x[...] -= 1


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("shape", [(1, 5), (37, 77), (3, 4, 768), (2, 1), (6, 16)], ids=str)
def test_layer_norm_matches_the_reference(shape, affine):
    rng = np.random.default_rng(list(shape))
    x = (rng.standard_normal(shape) * 3 + 5).astype(np.float32)
    weight, bias = ((rng.standard_normal(shape[-1]).astype(np.float32) if affine else None)
                    for _ in range(2))
    expected = layer_norm_reference([x, weight, bias], {"axis": -1, "eps": 1e-5})
    actual = _kernels.layer_norm(x, weight, bias, 1e-5, threads=1)
    assert_matches(actual.astype(np.float64), expected, rtol=1e-5)
    assert np.array_equal(_kernels.layer_norm(x, weight, bias, 1e-5, threads=2), actual)


def test_the_layer_norm_op_spans_several_axes():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 3, 7, 9)).astype(np.float32).transpose(0, 2, 1, 3)
    weight = rng.standard_normal((3, 9)).astype(np.float32)
    bias = rng.standard_normal(9).astype(np.float32)  # broadcasts over the axis: numpy path
    for w, b in ((weight, None), (weight, np.resize(bias, (3, 9))), (None, bias)):
        attrs = {"axis": -2, "eps": 1e-5}
        actual = layer_norm_kernel([x, w, b], attrs)
        assert actual.flags.c_contiguous and actual.dtype == np.float32
        assert_matches(actual.astype(np.float64), layer_norm_reference([x, w, b], attrs))


@pytest.mark.parametrize("shape", [(1, 1), (1, 17), (37, 77), (3, 5, 130), (1536, 128)], ids=str)
def test_softmax_matches_the_reference(shape):
    rng = np.random.default_rng(list(shape))
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    x[..., ::3, 1:2] = -np.inf
    expected = softmax_reference([x], {"axis": -1})
    actual = _kernels.softmax(x, threads=1)
    assert_matches(actual.astype(np.float64), expected, rtol=1e-5)
    assert np.array_equal(_kernels.softmax(x, threads=2), actual)
    assert np.array_equal(softmax_kernel([x], {"axis": x.ndim - 1}), actual)


def test_softmax_non_finite_rows_are_nan_as_in_numpy():
    x = np.array([[1, np.nan, 2], [-np.inf] * 3, [np.inf, 0, 1], [0, -np.inf, 1]], np.float32)
    with np.errstate(invalid="ignore"):
        expected = softmax_reference([x], {"axis": -1})
    actual = _kernels.softmax(x)
    assert np.array_equal(np.isnan(actual), np.isnan(expected))
    assert_matches(actual.astype(np.float64), expected, rtol=1e-5)


def test_the_softmax_op_keeps_numpy_for_other_axes():
    x = np.random.default_rng(5).standard_normal((4, 6, 5)).astype(np.float32)
    assert_matches(softmax_kernel([x], {"axis": 1}).astype(np.float64),
                   softmax_reference([x], {"axis": 1}))


def test_bad_arguments_are_clear_errors():
    q, k, v, _ = attention_problem((2,), 4, 6, 8, 3, "none")
    with pytest.raises(TypeError, match="float32"):
        _kernels.attention(q.astype(np.float64), k, v)
    with pytest.raises(ValueError, match="share their batch dimensions"):
        _kernels.attention(q, k[:, :, :5].copy(), v)
    with pytest.raises(ValueError, match="share their batch dimensions"):
        _kernels.attention(q, k[:1], v[:1])
    with pytest.raises(ValueError, match="-D"):
        _kernels.attention(q, k[0], v)
    with pytest.raises(ValueError, match="does not broadcast"):
        _kernels.attention(q, k, v, np.zeros((3, 4, 6), np.float32))
    with pytest.raises(ValueError, match="does not broadcast"):
        _kernels.attention(q, k, v, np.zeros((1, 2, 4, 6), np.float32))
    with pytest.raises(TypeError, match="bool or float32"):
        _kernels.attention(q, k, v, np.zeros((4, 6), np.int32))
    with pytest.raises(ValueError, match="mask must be C-contiguous"):
        _kernels.attention(q, k, v, np.zeros((6, 4), np.float32).T)
    with pytest.raises(ValueError, match="S >= 1"):
        _kernels.attention(q, k[:, :0], v[:, :0])
    with pytest.raises(ValueError, match="threads"):
        _kernels.attention(q, k, v, threads=0)
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(TypeError, match="float32"):
        _kernels.layer_norm(x.astype(np.float16))
    with pytest.raises(ValueError, match=r"weight must have shape \(4,\)"):
        _kernels.layer_norm(x, np.ones(5, np.float32))
    with pytest.raises(TypeError, match="float32"):
        _kernels.layer_norm(x, None, np.ones(4))
    with pytest.raises(ValueError, match="C-contiguous"):
        _kernels.softmax(np.zeros((4, 6), np.float32)[:, ::2])
    with pytest.raises(ValueError, match="last axis"):
        _kernels.softmax(x, 0)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        _kernels.softmax([1.0, 2.0])
