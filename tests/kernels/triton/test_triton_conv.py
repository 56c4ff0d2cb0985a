"""The Triton NHWC convolutions against the op table: qconv2d bit for bit (every result type,
activation and zero point), conv2d/fused_conv2d within a stated relative error, on odd sizes."""

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from checks import assert_matches
from nimbus.compiler.dtypes import DType
from nimbus.compiler.ir import QuantParams
from nimbus.compiler.ops import get_op
from nimbus.compiler.ops.nn import conv2d_nchw
from nimbus.compiler.ops.quant import activation_bounds, requant_multiplier
from nimbus.kernels.triton._common import interpreting
from nimbus.kernels.triton.conv import (
    MAX_WINDOW_DEPTH,
    QuantizedResidual,
    conv2d,
    pack_conv_weights,
    qconv2d,
    qconv2d_f32,
    qconv2d_s32,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/kernels: qconv_reference
from nimbus.runtime.cpu_ops.quant import residual_factor
from qconv_reference import A_RANGES, ConvProblem, geometry_keywords, make_problem

# name: (N, C, H, W, O, (KH, KW), stride, padding [top, left, bottom, right], dilation, groups).
# No size is a multiple of a block; "aligned" rows have C / groups a multiple of BLOCK_K (one tap
# per K step); depthwise rows have groups == C == O.
GEOMETRIES = {
    "1x1": (2, 17, 7, 3, 33, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "3x3 padded": (2, 5, 7, 9, 7, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "3x3 stride 2 asymmetric": (1, 3, 9, 7, 33, (3, 3), (2, 2), (0, 1, 2, 0), (1, 1), 1),
    "5x5 dilation 2": (1, 5, 9, 9, 7, (5, 5), (1, 1), (4, 3, 2, 1), (2, 2), 1),
    "1x3 stride (2, 1)": (1, 17, 5, 7, 7, (1, 3), (2, 1), (0, 1, 0, 2), (1, 1), 1),
    "3x3 aligned": (1, 64, 5, 7, 67, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "window wider than image": (1, 7, 1, 3, 17, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "groups 2": (1, 10, 7, 5, 34, (3, 3), (1, 2), (1, 0, 1, 2), (1, 1), 2),
    "groups 2 aligned": (1, 128, 3, 5, 6, (3, 3), (2, 1), (1, 1, 0, 1), (1, 1), 2),
    "channel multiplier 2": (1, 5, 7, 7, 10, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 5),
    "depthwise 3x3": (2, 17, 7, 9, 17, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 17),
    "depthwise 5x5 stride 2 dilation 2": (1, 33, 9, 9, 33, (5, 5), (2, 2), (4, 3, 2, 1), (2, 2),
                                          33),
}


# a_type -> (op result dtype, kernel out_dtype, activation, out_zero_point) of the requantized
# results: together the two activation types cover every result dtype and activation.
REQUANTIZED = {
    "u8": [("u8", "u8", "none", 128), ("u8", "u8", "relu", 100), ("i8", "s8", "relu6", -128)],
    "s8": [("i8", "s8", "none", -5), ("u8", "u8", "relu6", 100), ("i8", "s8", "relu", 3)],
}
DEQUANTIZED_ACTIVATION = {"u8": "relu", "s8": "relu6"}


def exact_accumulators(problem: ConvProblem) -> np.ndarray:
    """The qconv2d reference's int32 accumulators (bias included), NHWC."""
    x = problem.x.transpose(0, 3, 1, 2).astype(np.float64) - problem.a_zero_point
    acc = conv2d_nchw(x, problem.w, problem.stride, problem.padding, problem.dilation,
                      problem.groups, accumulate=np.float64).astype(np.int64).astype(np.int32)
    if problem.bias is not None:
        acc = acc + problem.bias.reshape(1, -1, 1, 1)
    return np.ascontiguousarray(acc.transpose(0, 2, 3, 1))


def bits(array: np.ndarray) -> np.ndarray:
    """float32 results compared by their bit patterns, so that they are held to exactness."""
    return array.view(np.int32) if array.dtype == np.float32 else array


@pytest.mark.parametrize("a_type", A_RANGES)
@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_integer_results_match_the_reference(geometry, a_type, device):
    problem = make_problem(geometry, a_type, [len(GEOMETRIES), *geometry[:5]])
    packed = pack_conv_weights(torch.from_numpy(problem.w).to(device), problem.groups)
    assert packed.depthwise == (problem.groups == geometry[1] == geometry[4])
    x = torch.from_numpy(problem.x).to(device)
    keywords = geometry_keywords(problem)
    name = f"{a_type} a_zp={problem.a_zero_point}"

    activation = DEQUANTIZED_ACTIVATION[a_type]
    dequantized = problem.reference("f32", activation=activation)
    actual = qconv2d_f32(x, packed, problem.a_zero_point, problem.bias,
                         requant_multiplier(problem.a_scale, problem.w_scales),
                         activation=activation, **keywords)
    assert_matches(bits(actual.cpu().numpy()), bits(dequantized), name=f"{name} f32 {activation}")

    # A result scale that spreads the values over about twice the output range before clamping.
    out_scale = float(np.abs(problem.reference("f32")).max() / 250 + 1e-6)
    multiplier = requant_multiplier(problem.a_scale, problem.w_scales, out_scale)
    for dtype, out_dtype, activation, zero_point in REQUANTIZED[a_type]:
        expected = problem.reference(dtype, out_scale, zero_point, activation)
        lo, hi = activation_bounds(activation, DType(dtype), out_scale, zero_point)
        actual = qconv2d(x, packed, problem.a_zero_point, problem.bias, multiplier, zero_point,
                         lo, hi, out_dtype, **keywords)
        assert_matches(actual.cpu().numpy(), expected, name=f"{name} {out_dtype} {activation}")


RESIDUAL_GEOMETRIES = ("1x1", "3x3 stride 2 asymmetric", "groups 2", "depthwise 3x3")


@pytest.mark.parametrize("residual_type", A_RANGES)
@pytest.mark.parametrize("geometry", RESIDUAL_GEOMETRIES)
def test_quantized_residual_in_the_epilogue_matches_the_reference(geometry, residual_type, device):
    """The epilogue adds f32(r - r_zp) * f32(s_r / s_out) before rounding, bit for bit as the
    reference's qconv2d with a residual operand, for every result type (depthwise included)."""
    geometry = GEOMETRIES[geometry]
    problem = make_problem(geometry, "u8", [12, *geometry[:5]])
    packed = pack_conv_weights(torch.from_numpy(problem.w).to(device), problem.groups)
    x = torch.from_numpy(problem.x).to(device)
    keywords = geometry_keywords(problem)
    shape = tuple(qconv2d_s32(x, packed, problem.a_zero_point, **keywords).shape)
    rng = np.random.default_rng([6, *shape])
    dtype, low, high = A_RANGES[residual_type]
    values = rng.integers(low, high, size=shape, dtype=dtype, endpoint=True)
    residual = (values, 0.07, int(rng.integers(low, high, endpoint=True)))
    quant = QuantParams([residual[1]], [residual[2]])
    on_device = torch.from_numpy(values).to(device)

    def quantized(output_scale):
        return QuantizedResidual(on_device, residual[2], float(residual_factor(quant, output_scale)))

    expected = problem.reference("f32", activation="relu", residual=residual)
    actual = qconv2d_f32(x, packed, problem.a_zero_point, problem.bias,
                         requant_multiplier(problem.a_scale, problem.w_scales), activation="relu",
                         residual=quantized(1.0), **keywords)
    assert_matches(bits(actual.cpu().numpy()), bits(expected), name=f"{residual_type} f32 relu")

    out_scale = float(np.abs(expected).max() / 250 + 1e-6)
    multiplier = requant_multiplier(problem.a_scale, problem.w_scales, out_scale)
    for dtype, out_dtype, activation, zero_point in REQUANTIZED["u8"]:
        expected = problem.reference(dtype, out_scale, zero_point, activation, residual)
        lo, hi = activation_bounds(activation, DType(dtype), out_scale, zero_point)
        actual = qconv2d(x, packed, problem.a_zero_point, problem.bias, multiplier, zero_point,
                         lo, hi, out_dtype, residual=quantized(out_scale), **keywords)
        assert_matches(actual.cpu().numpy(), expected,
                       name=f"{residual_type} residual {out_dtype} {activation}")


def test_a_residual_must_be_integer_with_the_results_shape(device):
    problem = make_problem(GEOMETRIES["1x1"], "u8", [13])
    packed = pack_conv_weights(torch.from_numpy(problem.w).to(device), problem.groups)
    x = torch.from_numpy(problem.x).to(device)
    keywords = geometry_keywords(problem)
    shape = tuple(qconv2d_s32(x, packed, problem.a_zero_point, **keywords).shape)
    scale = requant_multiplier(problem.a_scale, problem.w_scales)
    for tensor, message in [(torch.zeros(shape, dtype=torch.float32), "uint8 or int8"),
                            (torch.zeros((1, *shape[1:]), dtype=torch.uint8), "result's shape")]:
        with pytest.raises(ValueError, match=message):
            qconv2d_f32(x, packed, problem.a_zero_point, problem.bias, scale,
                        residual=QuantizedResidual(tensor.to(device), 0, 0.5), **keywords)
    with pytest.raises(ValueError, match="residual zero point"):
        qconv2d_f32(x, packed, problem.a_zero_point, problem.bias, scale,
                    residual=QuantizedResidual(torch.zeros(shape, dtype=torch.uint8).to(device),
                                               300, 0.5), **keywords)


@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_accumulators_and_results_without_bias(geometry, device):
    problem = make_problem(geometry, "u8", [3, *geometry[:5]], with_bias=False)
    packed = pack_conv_weights(torch.from_numpy(problem.w).to(device), problem.groups)
    x = torch.from_numpy(problem.x).to(device)
    keywords = geometry_keywords(problem)
    actual = qconv2d_s32(x, packed, problem.a_zero_point, **keywords)
    assert actual.dtype == torch.int32
    assert_matches(actual.cpu().numpy(), exact_accumulators(problem), name="s32")
    scale = requant_multiplier(problem.a_scale, problem.w_scales)
    actual = qconv2d_f32(x, packed, problem.a_zero_point, None, scale, **keywords)
    assert_matches(bits(actual.cpu().numpy()), bits(problem.reference("f32")), name="f32 no bias")


def test_extreme_values_stay_exact(device):
    # 255 * -128 on every tap of a deep window, with the zero point at the far end (0): padding
    # must cancel exactly against the folded zero point.
    x = torch.full((1, 5, 5, 64), 255, dtype=torch.uint8, device=device)
    for groups, channels_in in [(1, 64), (64, 1)]:
        w = torch.full((64, channels_in, 5, 5), -128, dtype=torch.int8, device=device)
        actual = qconv2d_s32(x, pack_conv_weights(w, groups), 0, padding=(2, 2, 2, 2))
        assert actual[0, 2, 2, 0].item() == 255 * -128 * channels_in * 25, f"groups={groups}"
        assert actual[0, 0, 0, 0].item() == 255 * -128 * channels_in * 9, f"groups={groups}"


# ---- float ---------------------------------------------------------------------------------------
# dtype -> [(has bias, has residual, activation)]: every combination in float32, one fused
# epilogue in each half-precision dtype (the interpreter is slow).
FLOAT_EPILOGUES = {
    torch.float32: [(False, False, "none"), (True, True, "relu"), (True, False, "gelu"),
                    (False, True, "silu"), (True, True, "relu6")],
    torch.float16: [(True, True, "gelu_tanh")],
    torch.bfloat16: [(True, True, "hardswish")],
}
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}


def fused_reference(x, w, bias, residual, geometry, activation) -> np.ndarray:
    """fused_conv2d of the op table on float32 copies of the (rounded) inputs, as NHWC."""
    op = get_op("fused_conv2d")
    *_, stride, padding, dilation, groups = geometry
    attrs = op.normalize_attrs({"stride": list(stride), "padding": list(padding),
                                "dilation": list(dilation), "groups": groups,
                                "activation": activation})

    def as_f32(tensor):
        return None if tensor is None else tensor.float().cpu().numpy()

    residual_nchw = None if residual is None else as_f32(residual).transpose(0, 3, 1, 2)
    (out,) = op.run_reference([as_f32(x).transpose(0, 3, 1, 2), as_f32(w), as_f32(bias),
                               residual_nchw], attrs, [None] * 4)
    return np.ascontiguousarray(out.transpose(0, 2, 3, 1))


@pytest.mark.parametrize("dtype", TOLERANCE, ids=str)
@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_float_conv_matches_fused_conv2d(geometry, dtype, device):
    n, c, h, w, o, kernel, stride, padding, dilation, groups = geometry
    if dtype == torch.bfloat16 and interpreting() and not groups == c == o:
        pytest.skip("Triton's interpreter multiplies bfloat16 tl.dot operands as raw bits")
    generator = torch.Generator().manual_seed(sum(geometry[:5]))
    x = torch.randn(n, h, w, c, generator=generator).to(dtype).to(device)
    weights = (torch.randn(o, c // groups, *kernel, generator=generator)
               / (kernel[0] * kernel[1] * c // groups) ** 0.5).to(dtype).to(device)
    packed = pack_conv_weights(weights, groups)
    assert packed.depthwise == (groups == c == o)
    keywords = {"stride": stride, "padding": padding, "dilation": dilation}
    out_shape = conv2d(x, packed, **keywords).shape
    for has_bias, has_residual, activation in FLOAT_EPILOGUES[dtype]:
        bias = torch.randn(o, generator=generator).to(dtype).to(device) if has_bias else None
        residual = torch.randn(out_shape, generator=generator).to(dtype).to(device) \
            if has_residual else None
        actual = conv2d(x, packed, bias, residual, activation=activation, **keywords)
        assert actual.dtype == dtype
        expected = fused_reference(x, weights, bias, residual, geometry, activation)
        assert_matches(actual.float().cpu().numpy(), expected, rtol=TOLERANCE[dtype],
                       name=f"{dtype} bias={has_bias} residual={has_residual} {activation}")


# ---- bad input -----------------------------------------------------------------------------------
X = torch.zeros((1, 5, 5, 4), dtype=torch.uint8)
W = torch.zeros((6, 2, 3, 3), dtype=torch.int8)
PACKED = pack_conv_weights(W, groups=2)
BIAS = torch.zeros(6, dtype=torch.int32)
SCALE = torch.ones(6, dtype=torch.float32)
FLOAT_X = torch.zeros((1, 5, 5, 4), dtype=torch.float32)
FLOAT_PACKED = pack_conv_weights(W.float(), groups=2)

BAD_WEIGHTS = {
    "w not a tensor": (lambda: pack_conv_weights(np.zeros((1, 1, 1, 1), np.int8)), TypeError,
                       "w must be a torch.Tensor, got ndarray"),
    "w wrong dtype": (lambda: pack_conv_weights(W.to(torch.int16)), ValueError,
                      "w must be int8, float16, bfloat16 or float32, got torch.int16"),
    "w 2-D": (lambda: pack_conv_weights(W[0, 0]), ValueError,
              "w must be 4-D [O, C / groups, KH, KW], got shape (3, 3)"),
    "empty kernel": (lambda: pack_conv_weights(torch.zeros((6, 2, 0, 3), dtype=torch.int8)),
                     ValueError, "got shape (6, 2, 0, 3)"),
    "groups not a divisor": (lambda: pack_conv_weights(W, groups=4), ValueError,
                             "groups must be a positive divisor of the 6 output channels, got 4"),
    "window too deep": (lambda: pack_conv_weights(
        torch.zeros((1, MAX_WINDOW_DEPTH // 9 + 1, 3, 3), dtype=torch.int8)), ValueError,
        f"is larger than {MAX_WINDOW_DEPTH}"),
}


def requantize_with(**changes):
    arguments = {"x": X, "packed": PACKED, "a_zero_point": 0, "bias": BIAS, "multiplier": SCALE,
                 "out_zero_point": 0, "lo": 0, "hi": 255, "out_dtype": "u8"}
    arguments.update(changes)
    return lambda: qconv2d(**arguments)


def float_with(**changes):
    arguments = {"x": FLOAT_X, "packed": FLOAT_PACKED, "bias": None, "residual": None}
    arguments.update(changes)
    return lambda: conv2d(**arguments)


BAD_CALLS = {
    "x not a tensor": (requantize_with(x=X.numpy()), TypeError, "x must be a torch.Tensor"),
    "x float for qconv2d": (requantize_with(x=FLOAT_X), ValueError,
                            "x of the integer convolution must be uint8, int8, got torch.float32"),
    "x 3-D": (requantize_with(x=X[0]), ValueError, "x must be 4-D NHWC [N, H, W, C]"),
    "x not contiguous": (requantize_with(x=X.permute(0, 2, 1, 3)), ValueError,
                         "x must be contiguous NHWC"),
    "x channels": (requantize_with(x=X[..., :3].contiguous()), ValueError,
                   "x has 3 channels; the weights expect 4"),
    "zero point out of range": (requantize_with(a_zero_point=256), ValueError,
                                "a_zero_point must be an integer in [0, 255], got 256"),
    "out_dtype": (requantize_with(out_dtype="i32"), ValueError,
                  "out_dtype must be 'u8' or 's8', got 'i32'"),
    "out zero point": (requantize_with(out_dtype="s8", lo=-128, hi=127, out_zero_point=200),
                       ValueError, "out_zero_point must be an integer in [-128, 127], got 200"),
    "lo above hi": (requantize_with(lo=10, hi=5), ValueError,
                    "hi must be an integer in [10, 255], got 5"),
    "bias dtype": (requantize_with(bias=BIAS.long()), ValueError,
                   "bias must be torch.int32, got torch.int64"),
    "bias length": (requantize_with(bias=BIAS[:5]), ValueError,
                    "bias must have shape (6,), got (5,)"),
    "multiplier float64": (requantize_with(multiplier=np.ones(6)), ValueError,
                           "scale must be torch.float32, got torch.float64"),
    "multiplier a list": (requantize_with(multiplier=[1.0] * 6), TypeError,
                          "scale must be a torch.Tensor or numpy array, got list"),
    "stride zero": (requantize_with(stride=(0, 1)), ValueError,
                    "stride must be 2 integers >= 1, got [0, 1]"),
    "padding length": (requantize_with(padding=(1, 1)), ValueError,
                       "padding must be 4 integers >= 0, got [1, 1]"),
    "window too large": (requantize_with(dilation=(3, 1)), ValueError,
                         "the dilated window (7) is larger than the padded input (5) along height"),
    "float weights for qconv2d": (requantize_with(packed=FLOAT_PACKED), ValueError,
                                  "needs int8 packed weights, got torch.float32"),
    "f32 activation": (lambda: qconv2d_f32(X, PACKED, 0, BIAS, SCALE, activation="swish"),
                       ValueError, "unknown activation 'swish'; expected one of none, relu"),
    "packed not packed": (lambda: qconv2d_s32(X, W), TypeError,
                          "packed must come from pack_conv_weights, got Tensor"),
    "float dtype mismatch": (float_with(x=FLOAT_X.half()), ValueError,
                             "packed weights are torch.float32 but x is torch.float16"),
    "unknown activation": (lambda: conv2d(FLOAT_X, FLOAT_PACKED, activation="swish"),
                           ValueError, "unknown activation 'swish'"),
    "float bias dtype": (float_with(bias=torch.zeros(6, dtype=torch.float16)), ValueError,
                         "bias must be torch.float32, got torch.float16"),
    "residual shape": (float_with(residual=torch.zeros((1, 5, 5, 6))), ValueError,
                       "residual must be contiguous with the result's shape (1, 3, 3, 6)"),
    "residual dtype": (float_with(residual=torch.zeros((1, 3, 3, 6), dtype=torch.float16)),
                       ValueError, "residual must be a torch.float32 tensor"),
}


BAD_INPUT = {**BAD_WEIGHTS, **BAD_CALLS}
assert len(BAD_INPUT) == len(BAD_WEIGHTS) + len(BAD_CALLS)


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_raises_named_errors(case):
    call, exception, message = BAD_INPUT[case]
    with pytest.raises(exception, match=re.escape(message)):
        call()
