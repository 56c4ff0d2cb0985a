"""Convolutions fused with the max pooling of their results, which run in bands of rows: the
int8 one (qconv2d_max_pool2d) bit-exact with the op table's qconv2d and max pooling, the float
one (sconv2d_max_pool2d) with the native convolution and pooling within float rounding (the
float GEMM rounds a pixel by the rows it shares a register block with, which a band, like
another batch size, changes), on every ISA path, with band edges, padding, ceil mode, strides
and dilations; and their errors."""


def assert_float_close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)

import numpy as np
import pytest
from checks import assert_matches
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from nimbus.compiler.dtypes import DType
from nimbus.compiler.ops.quant import activation_bounds, requant_multiplier
from nimbus.runtime import _kernels, pack_conv_weights
from nimbus.runtime.cpu_ops.nn import max_pool_reference, output_hw
from other_isas import OTHER_ISAS, rerun_under
from qconv_reference import A_RANGES, geometry_keywords, make_problem
from qgemm_reference import INT8_ISAS as ISAS

# name: (convolution as in test_qconv.py, pooling (kernel, stride, padding, dilation, ceil)).
CASES = {
    "ResNet stem": ((2, 3, 37, 29, 64, (7, 7), (2, 2), (3, 3, 3, 3), (1, 1), 1),
                    ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), False)),
    "stem, ceil mode": ((1, 3, 36, 30, 17, (7, 7), (2, 2), (3, 3, 2, 2), (1, 1), 1),
                        ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), True)),
    # 150 pooled rows: several bands per image, whose edges fall anywhere in a window.
    "tall image": ((1, 5, 301, 9, 7, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
                   ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), False)),
    "tall image, 5x3 kernel": ((2, 3, 203, 11, 16, (5, 3), (1, 1), (2, 1, 2, 1), (1, 1), 1),
                               ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), True)),
    "pooling 2x2 stride 2 ceil": ((3, 16, 15, 17, 24, (3, 3), (1, 1), (1, 0, 1, 2), (1, 1), 1),
                                  ((2, 2), (2, 2), (0, 0, 0, 0), (1, 1), True)),
    "pooling stride 3 skips rows": ((1, 8, 23, 11, 9, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
                                    ((2, 2), (3, 3), (0, 0, 0, 0), (1, 1), False)),
    "dilated pooling and convolution": ((2, 4, 19, 13, 6, (3, 3), (1, 1), (2, 1, 2, 1), (2, 1), 1),
                                        ((3, 2), (2, 1), (2, 0, 2, 1), (2, 1), False)),
    "depthwise": ((1, 17, 13, 13, 17, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 17),
                  ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), False)),
    "grouped, one pooled row": ((2, 6, 5, 7, 9, (3, 3), (1, 1), (0, 1, 0, 1), (1, 1), 3),
                                ((3, 3), (1, 1), (0, 0, 0, 0), (1, 1), False)),
}


def fused_and_expected(case, isa, a_type, out, threads):
    """The fused call's result and the reference's, for one case and one result type."""
    geometry, (kernel, stride, padding, dilation, ceil_mode) = CASES[case]
    problem = make_problem(geometry, a_type, [len(case), *geometry[:5]])
    packed = pack_conv_weights(problem.w, problem.groups, isa)
    dtype, out_dtype, activation, zero_point = out
    out_scale = float(np.abs(problem.reference("f32")).max() / 250 + 1e-6)
    multiplier = requant_multiplier(problem.a_scale, problem.w_scales, out_scale)
    lo, hi = activation_bounds(activation, DType(dtype), out_scale, zero_point)
    conv = problem.reference(dtype, out_scale, zero_point, activation).transpose(0, 3, 1, 2)
    pool = {"kernel": kernel, "stride": stride, "padding": padding, "dilation": dilation,
            "ceil_mode": ceil_mode}
    expected = max_pool_reference([conv], pool).transpose(0, 2, 3, 1)
    pool_hw = output_hw(conv.shape, kernel, stride, padding, dilation, ceil_mode)
    fused = _kernels.qconv2d_max_pool2d(
        problem.x, packed, problem.a_zero_point, problem.bias, multiplier, zero_point, lo, hi,
        out_dtype, *geometry_keywords(problem).values(), kernel, stride, padding, dilation,
        pool_hw, threads)
    return fused, expected


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("out", [("u8", "u8", "relu", 3), ("i8", "s8", "none", -7)],
                         ids=["u8 relu", "s8"])
@pytest.mark.parametrize("a_type", A_RANGES)
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case", CASES)
def test_matches_the_convolution_then_the_pooling(case, isa, a_type, out, threads):
    fused, expected = fused_and_expected(case, isa, a_type, out, threads)
    assert_matches(fused, expected, name=f"{case} {isa} {a_type} {out[1]} threads={threads}")


# The float convolution refuses 3x3 stride-1 weights packed in the Winograd form.
FLOAT_CASES = [name for name, (geometry, _) in CASES.items()
               if not (geometry[5] == (3, 3) and geometry[6] == (1, 1))]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("activation", ["none", "relu"])
@pytest.mark.parametrize("case", FLOAT_CASES)
def test_float_matches_the_native_convolution_then_the_pooling(case, activation, threads):
    (n, c, h, w, o, kernel, stride, padding, dilation, groups), pool = CASES[case]
    rng = np.random.default_rng(len(case))
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    weights = rng.standard_normal((o, c // groups, *kernel)).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    packed = _kernels.pack_sconv_weights(weights, groups)
    geometry = (stride, padding, dilation)
    conv = _kernels.sconv2d(x, packed, bias, None, activation, *geometry, threads)
    pool_geometry = pool[:4]
    pool_hw = output_hw(conv.transpose(0, 3, 1, 2).shape, *pool)
    expected = _kernels.max_pool2d(conv, *pool_geometry, pool_hw, threads)
    fused = _kernels.sconv2d_max_pool2d(x, packed, bias, activation, *geometry, *pool_geometry,
                                        pool_hw, threads)
    assert_float_close(fused, expected)


def test_float_weights_in_the_winograd_form_are_refused():
    # 3x3 stride-1 weights with many channels: Winograd on the AVX-512 path, the GEMM on others.
    rng = np.random.default_rng(0)
    packed = _kernels.pack_sconv_weights(
        rng.standard_normal((64, 64, 3, 3)).astype(np.float32), 1, None, True)
    x = rng.standard_normal((1, 8, 8, 64)).astype(np.float32)
    geometry, pool = ((1, 1), (1, 1, 1, 1), (1, 1)), ((2, 2), (2, 2), (0, 0, 0, 0), (1, 1))
    if packed.winograd:
        with pytest.raises(ValueError, match="Winograd"):
            _kernels.sconv2d_max_pool2d(x, packed, None, "none", *geometry, *pool, (4, 4))
    else:
        conv = _kernels.sconv2d(x, packed, None, None, "none", *geometry)
        assert_float_close(
            _kernels.sconv2d_max_pool2d(x, packed, None, "none", *geometry, *pool, (4, 4)),
            _kernels.max_pool2d(conv, *pool, (4, 4)))


@st.composite
def banded_problems(draw):
    """A convolution and a pooling of its result that bands take: odd sizes, strides,
    dilations, padding below the kernel's reach, floor or ceil mode."""
    n, c, o = draw(st.integers(1, 3)), draw(st.integers(1, 9)), draw(st.integers(1, 20))
    kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    spans = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
    padding = tuple(draw(st.integers(0, spans[i % 2] - 1)) for i in range(4))
    h, w = (draw(st.integers(max(1, spans[i] - padding[i] - padding[i + 2]), 40)) for i in (0, 1))
    pool_kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pool_padding = tuple(draw(st.integers(0, pool_kernel[i % 2] // 2)) for i in range(4))
    pool = (pool_kernel, (draw(st.integers(1, 3)), draw(st.integers(1, 3))), pool_padding,
            (1, 1), draw(st.booleans()))
    return (n, c, h, w, o, kernel, stride, padding, dilation, 1), pool, draw(st.integers(1, 2))


@settings(max_examples=60, deadline=None)
@given(problem=banded_problems(), seed=st.integers(0, 2 ** 16))
def test_random_geometries_match_the_unfused_calls(problem, seed):
    (n, c, h, w, o, kernel, stride, padding, dilation, _), pool, threads = problem
    rng = np.random.default_rng(seed)
    try:  # ValueError where a window does not fit
        conv_hw = output_hw((n, c, h, w), kernel, stride, padding, dilation)
        pool_hw = output_hw((n, o, *conv_hw), *pool)
    except ValueError:
        assume(False)
    geometry = (stride, padding, dilation)
    # int8: u8 activations, a requantized u8 result with ReLU bounds.
    x = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
    packed = pack_conv_weights(rng.integers(-128, 128, (o, c, *kernel), dtype=np.int8))
    requantized = (5, None, np.full(o, 3e-4, np.float32), 9, 9, 255, "u8")
    conv = _kernels.qconv2d(x, packed, *requantized, *geometry, threads)
    expected = _kernels.max_pool2d(conv, *pool[:4], pool_hw, threads)
    np.testing.assert_array_equal(_kernels.qconv2d_max_pool2d(
        x, packed, *requantized, *geometry, *pool[:4], pool_hw, threads), expected)
    # float, with a bias and ReLU.
    xf = rng.standard_normal((n, h, w, c)).astype(np.float32)
    packed_f = _kernels.pack_sconv_weights(
        rng.standard_normal((o, c, *kernel)).astype(np.float32))
    bias = rng.standard_normal(o).astype(np.float32)
    assume(not packed_f.winograd)
    conv_f = _kernels.sconv2d(xf, packed_f, bias, None, "relu", *geometry, threads)
    expected_f = _kernels.max_pool2d(conv_f, *pool[:4], pool_hw, threads)
    fused_f = _kernels.sconv2d_max_pool2d(xf, packed_f, bias, "relu", *geometry, *pool[:4],
                                          pool_hw, threads)
    assert_float_close(fused_f, expected_f)


def test_program_step_writes_the_same_result_into_out():
    geometry, (kernel, stride, padding, dilation, _) = CASES["ResNet stem"]
    problem = make_problem(geometry, "u8", 7)
    packed = pack_conv_weights(problem.w, 1)
    multiplier = np.full(64, 1e-4, np.float32)
    arguments = (packed, problem.a_zero_point, problem.bias, multiplier, 0, 0, 255, "u8",
                 *geometry_keywords(problem).values(), kernel, stride, padding, dilation)
    expected = _kernels.qconv2d_max_pool2d(problem.x, *arguments, (10, 8), 2)
    out = np.full(expected.shape, 7, np.uint8)
    program = _kernels.Program()
    program.qconv2d_max_pool2d(problem.x, *arguments, (10, 8), out)
    program.run(2)
    np.testing.assert_array_equal(out, expected)


def stem_call(**changes):
    """qconv2d_max_pool2d of a small stem, with keyword arguments replaced by ``changes``."""
    rng = np.random.default_rng(0)
    w = rng.integers(-128, 128, (8, 3, 3, 3), dtype=np.int8)
    arguments = {
        "x": rng.integers(0, 256, (1, 9, 9, 3), dtype=np.uint8), "packed": pack_conv_weights(w),
        "a_zero_point": 3, "bias": None, "multiplier": np.full(8, 1e-3, np.float32),
        "out_zero_point": 0, "lo": 0, "hi": 255, "out_dtype": "u8", "stride": (1, 1),
        "padding": (1, 1, 1, 1), "dilation": (1, 1), "pool_kernel": (3, 3), "pool_stride": (2, 2),
        "pool_padding": (1, 1, 1, 1), "pool_dilation": (1, 1), "pool_out_hw": (5, 5)}
    return _kernels.qconv2d_max_pool2d(**{**arguments, **changes})


@pytest.mark.parametrize("changes, message", [
    ({"padding": (3, 1, 1, 1)}, "padding rows must be fewer than the kernel's rows"),
    ({"padding": (1, 1, 3, 1)}, "padding rows must be fewer than the kernel's rows"),
    ({"pool_out_hw": (6, 5)}, "the last pooling window starts below"),
    ({"x": np.zeros((1, 9, 9, 4), np.uint8)}, "C = 3"),
    ({"out_dtype": "f32"}, "out_dtype"),
    ({"pool_kernel": (0, 3)}, "kernel"),
    ({"out": np.zeros((1, 5, 5, 8), np.int8)}, "out"),
    ({"out": np.zeros((1, 4, 5, 8), np.uint8)}, "out must have shape"),
])
def test_bad_arguments_raise_clear_errors(changes, message):
    assert stem_call().shape == (1, 5, 5, 8)
    with pytest.raises((ValueError, TypeError), match=message):
        stem_call(**changes)


@pytest.mark.parametrize("isa", OTHER_ISAS)
def test_every_isa_path(isa):
    # The pooling follows the process-wide path (the convolution takes the packed weights').
    rerun_under(__file__, isa, "test_every_isa_path")
