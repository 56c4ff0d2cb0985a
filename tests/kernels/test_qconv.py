"""The NHWC int8 convolutions on every ISA path of this machine, bit-exact against the op
table's qconv2d (run through the interpreter on NCHW)."""

import ctypes
import mmap
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from checks import assert_matches
from nimbus.compiler.dtypes import DType
from nimbus.compiler.ir import QuantParams
from nimbus.compiler.ops.quant import activation_bounds, requant_multiplier
from nimbus.runtime import (
    pack_conv_weights,
    qconv2d,
    qconv2d_f32,
    qconv2d_s32,
)
from nimbus.runtime._kernels import activation, quantize
from nimbus.runtime.cpu_ops.quant import residual_factor
from qconv_reference import A_RANGES, ConvProblem, geometry_keywords, make_problem
from qgemm_reference import INT8_ISAS as ISAS

# name: (N, C, H, W, O, (KH, KW), stride, padding [top, left, bottom, right], dilation, groups).
# Sizes are odd and no multiple of any block; depthwise rows have groups == C == O.
GEOMETRIES = {
    "1x1": (2, 17, 7, 3, 33, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "1x1 stride 2": (1, 33, 17, 7, 17, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1),
    "1x1 padded": (1, 3, 3, 7, 7, (1, 1), (1, 1), (1, 0, 0, 2), (1, 1), 1),
    "3x3": (2, 17, 7, 17, 33, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "3x3 stride 2 asymmetric": (1, 7, 17, 33, 17, (3, 3), (2, 2), (0, 1, 1, 0), (1, 1), 1),
    "3x1 stride (2, 1)": (1, 7, 17, 7, 3, (3, 1), (2, 1), (2, 0, 1, 0), (1, 1), 1),
    "5x5 dilation 2": (1, 3, 17, 17, 7, (5, 5), (1, 1), (4, 3, 2, 1), (2, 2), 1),
    "7x7 stride 2": (2, 3, 33, 17, 17, (7, 7), (2, 2), (3, 3, 2, 2), (1, 1), 1),
    # Kernel rows gathered as runs of 15 and of exactly 16 bytes.
    "5x5 over 3 channels": (2, 3, 12, 11, 6, (5, 5), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "1x1 stride 2 over 16 channels": (1, 16, 9, 9, 5, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1),
    "window wider than image": (1, 7, 1, 3, 17, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "single pixel": (1, 1, 1, 1, 1, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "groups 2": (1, 14, 7, 17, 34, (3, 3), (1, 2), (1, 0, 1, 2), (1, 1), 2),
    "groups 3 1x1": (2, 9, 7, 3, 21, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 3),
    "depthwise 3x3": (2, 17, 7, 17, 17, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 17),
    "depthwise 3x3 stride 2": (1, 33, 17, 33, 33, (3, 3), (2, 2), (0, 1, 1, 0), (1, 1), 33),
    "depthwise 5x5 dilation 2": (1, 7, 17, 17, 7, (5, 5), (1, 1), (4, 3, 2, 1), (2, 2), 7),
    "depthwise 7x7 stride 2": (1, 3, 33, 7, 3, (7, 7), (2, 2), (3, 2, 3, 1), (1, 1), 3),
    "depthwise 48 channels": (1, 48, 3, 7, 48, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 48),
    "depthwise 145 channels": (1, 145, 5, 3, 145, (3, 3), (2, 1), (1, 0, 1, 2), (1, 1), 145),
    "depthwise window wider than image": (1, 17, 1, 3, 17, (3, 3), (1, 1), (1, 1, 1, 1),
                                          (1, 1), 17),
    # The AVX-512 VNNI path passes over 64 channels (full or masked) or over the last 32 or
    # fewer, in strips of up to 4 output pixels, and groups the taps in fours.
    "depthwise 2 channels 1x1": (1, 2, 5, 6, 2, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 2),
    "depthwise 15 channels 5x5": (1, 15, 9, 14, 15, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 15),
    "depthwise 32 channels": (2, 32, 5, 13, 32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 32),
    "depthwise 64 channels stride 2": (1, 64, 9, 18, 64, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1),
                                       64),
    "depthwise 65 channels 2x2": (1, 65, 4, 11, 65, (2, 2), (1, 1), (0, 1, 1, 0), (1, 1), 65),
    "depthwise 96 channels 7x7 dilation": (1, 96, 11, 16, 96, (7, 7), (1, 2), (3, 6, 3, 6),
                                           (1, 2), 96),
    "depthwise 200 channels": (1, 200, 3, 9, 200, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 200),
    # The AVX-512 VNNI direct path for few output channels (qconv_direct.h), with s32, f32 and
    # residual epilogues that it leaves to the GEMM.
    "LeNet 5x5 over 3 channels to 6": (2, 3, 32, 32, 6, (5, 5), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "1x2 over 4 channels to 8": (1, 4, 3, 21, 8, (1, 2), (1, 1), (0, 1, 0, 0), (1, 1), 1),
    # The AVX-512 VNNI implicit GEMM over u8 windows read in place (kernel rows of 21 bytes
    # padded to 24, of 64 bytes, 192 bytes; rows of the window spaced by a dilation), with the
    # windows that overlap the padding gathered, over 1 to 3 panels of outputs.
    "stem 7x7 stride 2 over 3 channels to 64": (1, 3, 23, 21, 64, (7, 7), (2, 2), (3, 3, 2, 3),
                                                (1, 1), 1),
    "3x3 over 64 channels to 70": (2, 64, 6, 9, 70, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "3x3 dilation (2, 1) over 8 channels": (1, 8, 9, 10, 19, (3, 3), (1, 1), (2, 1, 2, 1),
                                            (2, 1), 1),
    "2x2 stride 2 over 32 channels to 130": (1, 32, 7, 9, 130, (2, 2), (2, 2), (0, 0, 1, 1),
                                             (1, 1), 1),
}

# Convolutions with few output channels over rows wide enough for the AVX-512 VNNI direct path
# (qconv_direct.h), which takes 1 to 8 output channels from 1 to 4 input channels: output widths
# in whole and partial chunks of 16 pixels, kernel rows of whole and partial groups of 4 taps,
# the last taps of a row grouped by channels (qconv_direct_layout) or not, and horizontal
# dilations up to 5; then the shapes just past its bounds, which the GEMM takes.
DIRECT_GEOMETRIES = {
    "1 output, out_w 5": (1, 3, 7, 9, 1, (3, 5), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "2 outputs, out_w 9, asymmetric padding": (2, 1, 6, 7, 2, (3, 3), (1, 1), (1, 2, 0, 2),
                                               (1, 1), 1),
    "3 outputs, out_w 16": (1, 2, 5, 16, 3, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "4 outputs, out_w 17, stride (2, 1)": (2, 4, 9, 19, 4, (3, 3), (2, 1), (0, 0, 1, 0), (1, 1),
                                          1),
    "4 outputs 3x1": (1, 3, 9, 20, 4, (3, 1), (1, 1), (1, 0, 1, 0), (1, 1), 1),
    "5 outputs, out_w 33, dilation 2": (1, 3, 9, 33, 5, (3, 3), (1, 1), (2, 1, 0, 3), (2, 2), 1),
    "6 outputs LeNet": (3, 3, 32, 32, 6, (5, 5), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "7 outputs 3x8, dilation 5": (1, 4, 13, 52, 7, (3, 8), (1, 1), (2, 0, 1, 3), (2, 5), 1),
    "8 outputs 4x4, stride (3, 1)": (1, 3, 11, 20, 8, (4, 4), (3, 1), (1, 1, 1, 1), (1, 1), 1),
    "8 outputs, window wider than image": (1, 2, 2, 30, 8, (5, 3), (1, 1), (2, 1, 2, 0),
                                           (1, 1), 1),
    "3 outputs 2x5, dilation (1, 5)": (1, 3, 4, 40, 3, (2, 5), (1, 1), (0, 3, 1, 0), (1, 5), 1),
    "4 outputs 3x2 over 4 channels, dilation (2, 5)": (1, 4, 9, 30, 4, (3, 2), (1, 1),
                                                       (2, 0, 2, 4), (2, 5), 1),
    # Just past the bounds of the direct path, and a row too narrow for it: the GEMM.
    "9 outputs": (1, 3, 8, 20, 9, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "6 outputs 5x5 over 5 channels": (1, 5, 7, 30, 6, (5, 5), (1, 1), (1, 2, 1, 2), (1, 1), 1),
    "6 outputs 7x7 over 5 channels": (1, 5, 9, 24, 6, (7, 7), (1, 1), (3, 3, 3, 3), (1, 1), 1),
    "7 outputs 2x6, dilation (1, 6)": (1, 2, 6, 50, 7, (2, 6), (1, 1), (0, 0, 0, 0), (1, 6), 1),
    "6 outputs, out_w 6": (1, 3, 8, 10, 6, (5, 5), (1, 1), (0, 0, 0, 0), (1, 1), 1),
}


# (op result dtype, kernel out_dtype, activation, out_zero_point) of the requantized results.
REQUANTIZED = [
    ("u8", "u8", "none", 128),
    ("i8", "s8", "none", -5),
    ("u8", "u8", "relu", 100),
    ("u8", "u8", "relu6", 100),
    ("i8", "s8", "relu", 3),
    ("i8", "s8", "relu6", -128),
]


def bits(array: np.ndarray) -> np.ndarray:
    """float32 results compared by their bit patterns, so that they are held to exactness."""
    return array.view(np.int32) if array.dtype == np.float32 else array


@pytest.mark.parametrize("a_type", A_RANGES)
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_all_epilogues_match_the_reference(geometry, isa, a_type):
    problem = make_problem(geometry, a_type, [len(GEOMETRIES), *geometry[:5]])
    packed = pack_conv_weights(problem.w, problem.groups, isa)
    assert packed.depthwise == (problem.groups > 1 and problem.groups == problem.w.shape[0]
                                and problem.w.shape[1] == 1)
    keywords = geometry_keywords(problem)
    name = f"{isa} {a_type} a_zp={problem.a_zero_point}"

    scale = requant_multiplier(problem.a_scale, problem.w_scales)
    dequantized = problem.reference("f32")
    actual = qconv2d_f32(problem.x, packed, problem.a_zero_point, problem.bias, scale, **keywords)
    assert_matches(bits(actual), bits(dequantized), name=f"{name} f32 bits")
    # Clamps in the f32 epilogue (every path, the depthwise one after its kernel) are exact.
    for activation, clamped in (("relu", np.maximum(dequantized, 0)),
                                ("relu6", np.clip(dequantized, 0, 6))):
        actual = qconv2d_f32(problem.x, packed, problem.a_zero_point, problem.bias, scale,
                             **keywords, activation=activation)
        assert_matches(bits(actual), bits(clamped.astype(np.float32)),
                       name=f"{name} f32 {activation}")

    # A result scale that spreads the values over about twice the output range before clamping.
    out_scale = float(np.abs(dequantized).max() / 250 + 1e-6)
    multiplier = requant_multiplier(problem.a_scale, problem.w_scales, out_scale)
    for dtype, out_dtype, activation, zero_point in REQUANTIZED:
        expected = problem.reference(dtype, out_scale, zero_point, activation)
        lo, hi = activation_bounds(activation, DType(dtype), out_scale, zero_point)
        actual = qconv2d(problem.x, packed, problem.a_zero_point, problem.bias, multiplier,
                         zero_point, lo, hi, out_dtype, **keywords)
        assert_matches(actual, expected, name=f"{name} {out_dtype} {activation}")


@pytest.mark.parametrize("a_type", A_RANGES)
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_float_activations_match_the_unfused_kernels(geometry, isa, a_type):
    """A float activation (an EfficientNet's SiLU) in the epilogue, on every path (the
    depthwise one in a pass after its kernel): the f32 result through the activation kernel,
    and a u8/s8 result that value quantized by the quantize kernel, bit for bit."""
    problem = make_problem(geometry, a_type, [len(GEOMETRIES), 1, *geometry[:5]])
    packed = pack_conv_weights(problem.w, problem.groups, isa)
    keywords = geometry_keywords(problem)
    scale = requant_multiplier(problem.a_scale, problem.w_scales)
    plain = qconv2d_f32(problem.x, packed, problem.a_zero_point, problem.bias, scale, **keywords)
    out_scale = float(np.abs(plain).max() / 200 + 1e-6)
    for name in ("silu", "gelu", "hardswish", "sigmoid"):
        values = activation(plain, name)
        fused = qconv2d_f32(problem.x, packed, problem.a_zero_point, problem.bias, scale,
                            **keywords, activation=name, threads=2)
        assert_matches(bits(fused), bits(values), name=f"{isa} {a_type} f32 {name}")
        for out_dtype, lo, hi, zero_point in (("u8", 0, 255, 37), ("s8", -128, 127, -3)):
            fused = qconv2d(problem.x, packed, problem.a_zero_point, problem.bias, scale,
                            zero_point, lo, hi, out_dtype, **keywords, threads=2,
                            activation=name, output_scale=out_scale)
            expected = quantize(values, out_scale, zero_point, out_dtype)
            assert_matches(fused, expected, name=f"{isa} {a_type} {out_dtype} {name}")


def test_a_float_activation_needs_the_whole_range_and_an_output_scale():
    problem = make_problem(GEOMETRIES["3x3"], "u8", [0])
    packed = pack_conv_weights(problem.w, problem.groups)
    arguments = (problem.x, packed, problem.a_zero_point, problem.bias,
                 requant_multiplier(problem.a_scale, problem.w_scales), 0)
    with pytest.raises(ValueError, match="needs output_scale"):
        qconv2d(*arguments, 0, 255, "u8", activation="silu")
    with pytest.raises(ValueError, match="lo and hi must be its bounds"):
        qconv2d(*arguments, 3, 255, "u8", activation="silu", output_scale=0.1)
    with pytest.raises(ValueError, match="relu and relu6 as its bounds"):
        qconv2d(*arguments, 0, 255, "u8", activation="relu", output_scale=0.1)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("zero_point", ["random", "lowest", "highest"])
@pytest.mark.parametrize("a_type", A_RANGES)
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("geometry", DIRECT_GEOMETRIES.values(), ids=DIRECT_GEOMETRIES.keys())
def test_few_output_channels_match_the_reference(geometry, isa, a_type, zero_point, threads):
    problem = make_problem(geometry, a_type, [len(DIRECT_GEOMETRIES), *geometry[:5]])
    if zero_point != "random":
        _, low, high = A_RANGES[a_type]
        problem = ConvProblem(**{**problem.__dict__,
                                 "a_zero_point": low if zero_point == "lowest" else high})
    packed = pack_conv_weights(problem.w, problem.groups, isa)
    keywords = geometry_keywords(problem)
    name = f"{isa} {a_type} a_zp={problem.a_zero_point} threads={threads}"

    dequantized = problem.reference("f32")
    out_scale = float(np.abs(dequantized).max() / 250 + 1e-6)
    multiplier = requant_multiplier(problem.a_scale, problem.w_scales, out_scale)
    for dtype, out_dtype, activation, out_zero_point in REQUANTIZED:
        expected = problem.reference(dtype, out_scale, out_zero_point, activation)
        lo, hi = activation_bounds(activation, DType(dtype), out_scale, out_zero_point)
        actual = qconv2d(problem.x, packed, problem.a_zero_point, problem.bias, multiplier,
                         out_zero_point, lo, hi, out_dtype, threads=threads, **keywords)
        assert_matches(actual, expected, name=f"{name} {out_dtype} {activation}")
    # Without a bias, and with the extreme output zero points.
    no_bias = ConvProblem(**{**problem.__dict__, "bias": None})
    for dtype, out_dtype, out_zero_point in [("u8", "u8", 0), ("u8", "u8", 255),
                                             ("i8", "s8", -128), ("i8", "s8", 127)]:
        expected = no_bias.reference(dtype, out_scale, out_zero_point)
        lo, hi = activation_bounds("none", DType(dtype), out_scale, out_zero_point)
        actual = qconv2d(no_bias.x, packed, no_bias.a_zero_point, None, multiplier,
                         out_zero_point, lo, hi, out_dtype, threads=threads, **keywords)
        assert_matches(actual, expected, name=f"{name} no bias {out_dtype} zp={out_zero_point}")


# Few pixels under more than 1 MiB of packed weights (ResNet-18's last layers at batch 1): the
# AVX-512 VNNI path runs one GEMM over every pixel, whose threads split the weights' panels,
# instead of a pixel tile per thread; padded inputs are copied out, unpadded edge windows
# gathered.
LARGE_WEIGHT_GEOMETRIES = {
    "3x3 over 512 channels at 7x7": (1, 512, 7, 7, 512, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "3x3 stride 2 over 256 channels to 520, unpadded": (1, 256, 9, 5, 520, (3, 3), (2, 2),
                                                        (0, 0, 0, 0), (1, 1), 1),
}


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("geometry", LARGE_WEIGHT_GEOMETRIES.values(),
                         ids=LARGE_WEIGHT_GEOMETRIES.keys())
def test_few_pixels_under_large_weights_match_the_reference(geometry, isa):
    problem = make_problem(geometry, "u8", [len(LARGE_WEIGHT_GEOMETRIES), *geometry[:5]])
    packed = pack_conv_weights(problem.w, problem.groups, isa)
    keywords = geometry_keywords(problem)
    out_scale = float(np.abs(problem.reference("f32")).max() / 250 + 1e-6)
    multiplier = requant_multiplier(problem.a_scale, problem.w_scales, out_scale)
    expected = problem.reference("u8", out_scale, 7, "relu")
    lo, hi = activation_bounds("relu", DType("u8"), out_scale, 7)
    for threads in (1, 2, 3):
        actual = qconv2d(problem.x, packed, problem.a_zero_point, problem.bias, multiplier, 7,
                         lo, hi, "u8", threads=threads, **keywords)
        assert_matches(actual, expected, name=f"{isa} threads={threads}")


def test_few_output_channels_with_extreme_values_stay_exact():
    # Every activation and weight at its extreme, with a zero point at the other end, so that
    # each of the 75 taps adds (x - x_zp) * -128 in full. A multiplier of 100 / acc of a whole
    # window gives 100 in the window's middle and rint(100 * 27 / 75) = 36 at a corner, where
    # 48 of the taps are padding, which adds nothing.
    for a_type, a_value, a_zero_point in [("u8", 255, 0), ("s8", -128, 127), ("s8", 127, -128)]:
        x = np.full((1, 8, 40, 3), a_value, dtype=A_RANGES[a_type][0])
        w = np.full((6, 3, 5, 5), -128, dtype=np.int8)
        multiplier = np.full(6, 100 / ((int(a_value) - a_zero_point) * -128 * 75), np.float32)
        for isa in ISAS:
            packed = pack_conv_weights(w, 1, isa)
            for out_dtype, lo, hi in [("s8", -128, 127), ("u8", 0, 255)]:
                actual = qconv2d(x, packed, a_zero_point, None, multiplier, 0, lo, hi,
                                 out_dtype, padding=(2, 2, 2, 2))
                name = f"{isa} {a_type} {out_dtype}"
                assert (actual[0, 4, 20] == 100).all(), name
                assert (actual[0, 0, 0] == 36).all(), name


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_int32_accumulators_without_bias(geometry, isa):
    # With unit scales the f32 result of the reference is f32(acc) itself.
    problem = make_problem(geometry, "u8", [7, *geometry[:5]])
    problem = ConvProblem(**{**problem.__dict__, "a_scale": 1.0, "bias": None,
                             "w_scales": np.ones(problem.w.shape[0], dtype=np.float32)})
    packed = pack_conv_weights(problem.w, problem.groups, isa)
    actual = qconv2d_s32(problem.x, packed, problem.a_zero_point, **geometry_keywords(problem))
    assert actual.dtype == np.int32
    assert_matches(actual.astype(np.float32), problem.reference("f32"), name=f"{isa} s32",
                   rtol=0)


@pytest.mark.parametrize("a_type", A_RANGES)
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", ["3x3", "groups 2", "depthwise 3x3 stride 2", "1x1",
                                  "3x3 over 64 channels to 70"])
@pytest.mark.parametrize("threads", [2, 3, 16])
def test_threads_give_the_single_thread_result(isa, name, threads, a_type):
    problem = make_problem(GEOMETRIES[name], a_type, [threads, 3])
    packed = pack_conv_weights(problem.w, problem.groups, isa)
    keywords = geometry_keywords(problem)
    expected = qconv2d_s32(problem.x, packed, problem.a_zero_point, problem.bias, **keywords)
    actual = qconv2d_s32(problem.x, packed, problem.a_zero_point, problem.bias,
                         threads=threads, **keywords)
    assert_matches(actual, expected, name=f"{isa} {name} threads={threads}")


@pytest.mark.skipif(sys.platform != "linux", reason="places a guard page with mprotect")
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("geometry", [
    # Kernel rows of 15 bytes read as 16 and of 21 as 24: the last windows of the image would
    # read past its end, so they are gathered instead.
    (2, 3, 6, 7, 9, (5, 5), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    (1, 3, 9, 11, 64, (7, 7), (2, 2), (3, 3, 0, 0), (1, 1), 1),
    (1, 64, 4, 5, 16, (3, 3), (1, 1), (1, 1, 0, 0), (1, 1), 1),
])
def test_windows_never_read_past_the_activations(isa, geometry):
    problem = make_problem(geometry, "u8", [11, *geometry[:5]])
    page = mmap.PAGESIZE
    size = -(-problem.x.nbytes // page) * page
    region = mmap.mmap(-1, size + page)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    start = ctypes.addressof(ctypes.c_char.from_buffer(region))
    x = np.frombuffer(region, dtype=np.uint8, count=problem.x.nbytes,
                      offset=size - problem.x.nbytes).reshape(problem.x.shape)
    x[...] = problem.x
    no_access = 0  # PROT_NONE
    assert libc.mprotect(start + size, page, no_access) == 0, ctypes.get_errno()
    try:
        packed = pack_conv_weights(problem.w, problem.groups, isa)
        actual = qconv2d_s32(x, packed, problem.a_zero_point, problem.bias,
                             **geometry_keywords(problem))
    finally:
        libc.mprotect(start + size, page, mmap.PROT_READ | mmap.PROT_WRITE)
    expected = qconv2d_s32(problem.x, packed, problem.a_zero_point, problem.bias,
                           **geometry_keywords(problem))
    assert_matches(actual, expected, name=isa)
    del x
    region.close()


def test_extreme_values_stay_exact():
    # 255 * -128 on every tap of a deep window: sums far past 2**24 in every path.
    x = np.full((1, 5, 5, 64), 255, dtype=np.uint8)
    for isa in ISAS:
        for groups, channels_in in [(1, 64), (64, 1)]:
            w = np.full((64, channels_in, 5, 5), -128, dtype=np.int8)
            packed = pack_conv_weights(w, groups, isa)
            actual = qconv2d_s32(x, packed, 0, padding=(2, 2, 2, 2))
            expected = 255 * -128 * channels_in * 25
            assert actual[0, 2, 2, 0] == expected, f"{isa} groups={groups}"
    # Depthwise over s8 with a far zero point, at the centre and at a corner (9 of 25 taps).
    x = np.full((1, 5, 5, 65), -128, dtype=np.int8)
    w = np.full((65, 1, 5, 5), 127, dtype=np.int8)
    for isa in ISAS:
        packed = pack_conv_weights(w, 65, isa)
        actual = qconv2d_s32(x, packed, 127, padding=(2, 2, 2, 2))
        assert actual[0, 2, 2, 64] == -255 * 127 * 25, isa
        assert actual[0, 0, 0, 64] == -255 * 127 * 9, isa


def test_concurrent_calls_share_the_worker_pool_safely():
    problem = make_problem(GEOMETRIES["3x3"], "u8", 5)
    packed = pack_conv_weights(problem.w)
    keywords = geometry_keywords(problem)
    expected = qconv2d_s32(problem.x, packed, problem.a_zero_point, **keywords)
    with ThreadPoolExecutor(max_workers=4) as executor:
        results = list(executor.map(
            lambda _: qconv2d_s32(problem.x, packed, problem.a_zero_point, threads=2, **keywords),
            range(32)))
    for index, result in enumerate(results):
        assert_matches(result, expected, name=f"concurrent call {index}")


@pytest.mark.parametrize("isa", ISAS)
def test_results_go_into_a_given_out_array(isa):
    problem = make_problem(GEOMETRIES["depthwise 3x3"], "u8", 9)
    keywords = geometry_keywords(problem)
    packed = pack_conv_weights(problem.w, problem.groups, isa)
    expected = qconv2d_s32(problem.x, packed, problem.a_zero_point, problem.bias, **keywords)
    out = np.full(expected.shape, 7, dtype=np.int32)
    assert qconv2d_s32(problem.x, packed, problem.a_zero_point, problem.bias, out=out,
                       **keywords) is out
    assert_matches(out, expected, name=f"{isa} out=")


def test_packed_weights_describe_themselves():
    packed = pack_conv_weights(np.zeros((6, 2, 3, 5), dtype=np.int8), groups=3, isa="portable")
    assert (packed.out_channels, packed.in_channels, packed.kernel, packed.groups) == \
        (6, 6, (3, 5), 3)
    assert not packed.depthwise
    assert repr(packed) == ("PackedConvWeights(out_channels=6, in_channels=6, kernel=(3, 5), "
                            "groups=3, isa='portable')")
    assert pack_conv_weights(np.zeros((4, 1, 3, 3), dtype=np.int8), groups=4).depthwise


ONE_GROUP = {name: g for name, g in GEOMETRIES.items() if g[-1] == 1}


@pytest.mark.parametrize("residual_type", A_RANGES)
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("geometry", ONE_GROUP.values(), ids=ONE_GROUP.keys())
def test_residual_epilogue_matches_the_reference(geometry, isa, residual_type):
    problem = make_problem(geometry, "u8", [11, *geometry[:5]])
    packed = pack_conv_weights(problem.w, problem.groups, isa)
    keywords = geometry_keywords(problem)
    shape = qconv2d_s32(problem.x, packed, problem.a_zero_point, **keywords).shape
    rng = np.random.default_rng([5, *shape])
    dtype, low, high = A_RANGES[residual_type]
    values = rng.integers(low, high, size=shape, dtype=dtype, endpoint=True)
    residual = (values, 0.07, int(rng.integers(low, high, endpoint=True)))
    quant = QuantParams([residual[1]], [residual[2]])
    name = f"{isa} residual {residual_type}"

    scale = requant_multiplier(problem.a_scale, problem.w_scales)
    expected = problem.reference("f32", residual=residual)
    actual = qconv2d_f32(problem.x, packed, problem.a_zero_point, problem.bias, scale, **keywords,
                         residual=values, residual_zero_point=residual[2],
                         residual_scale=float(residual_factor(quant, 1.0)))
    assert_matches(bits(actual), bits(expected), name=f"{name} f32 bits")

    out_scale = float(np.abs(expected).max() / 250 + 1e-6)
    multiplier = requant_multiplier(problem.a_scale, problem.w_scales, out_scale)
    for dtype, out_dtype, activation, zero_point in REQUANTIZED:
        expected = problem.reference(dtype, out_scale, zero_point, activation, residual)
        lo, hi = activation_bounds(activation, DType(dtype), out_scale, zero_point)
        actual = qconv2d(problem.x, packed, problem.a_zero_point, problem.bias, multiplier,
                         zero_point, lo, hi, out_dtype, **keywords, residual=values,
                         residual_zero_point=residual[2], threads=2,
                         residual_scale=float(residual_factor(quant, out_scale)))
        assert_matches(actual, expected, name=f"{name} {out_dtype} {activation}")


def test_a_residual_needs_one_group_and_its_shape():
    problem = make_problem(GEOMETRIES["groups 2"], "u8", [1])
    packed = pack_conv_weights(problem.w, problem.groups)
    keywords = geometry_keywords(problem)
    shape = qconv2d_s32(problem.x, packed, problem.a_zero_point, **keywords).shape
    scale = np.ones(problem.w.shape[0], np.float32)
    with pytest.raises(ValueError, match="one group"):
        qconv2d_f32(problem.x, packed, problem.a_zero_point, None, scale, **keywords,
                    residual=np.zeros(shape, np.uint8), residual_scale=1.0)
    problem = make_problem(GEOMETRIES["3x3"], "u8", [1])
    packed = pack_conv_weights(problem.w, problem.groups)
    scale = np.ones(problem.w.shape[0], np.float32)
    with pytest.raises(ValueError, match="residual must have the result's shape"):
        qconv2d_f32(problem.x, packed, problem.a_zero_point, None, scale,
                    **geometry_keywords(problem), residual=np.zeros((1, 2, 3, 4), np.uint8))
    with pytest.raises(TypeError, match="residual must have dtype"):
        qconv2d_f32(problem.x, packed, problem.a_zero_point, None, scale,
                    **geometry_keywords(problem), residual=np.zeros((1, 2, 3, 4), np.float32))
