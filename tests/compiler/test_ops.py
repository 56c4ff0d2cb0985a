"""Every op's reference implementation against PyTorch (or, for integer ops, against the
documented arithmetic written out independently), on random inputs with odd shapes."""

from __future__ import annotations

import numpy as np
import pytest
import sympy
import torch
import torch.nn.functional as F

from checks import assert_matches
from nimbus.compiler.dims import floordiv, symbol
from nimbus.compiler.dtypes import DType
from nimbus.compiler.interpreter import interpret
from nimbus.compiler.ir import Builder, Graph, QuantParams, TensorType
from nimbus.compiler.ops import OP_TABLE, OpError
from nimbus.compiler.ops.quant import requant_multiplier

rng = np.random.default_rng(1234)


def randn(*shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def positive(*shape):
    return (rng.random(shape) + 0.1).astype(np.float32)


def run_op(op: str, inputs: list, attrs: dict | None = None, constants: tuple = ()):
    """Run one op through a graph; ``inputs`` become graph inputs, indices in ``constants``
    become named constants (so quantized weights can carry their parameters)."""
    graph = Graph(op)
    operands = []
    for i, item in enumerate(inputs):
        if item is None:
            operands.append(None)
            continue
        array, quant = item if isinstance(item, tuple) else (item, None)
        if i in constants:
            operands.append(graph.add_constant(f"c{i}", array, quant))
        else:
            operands.append(graph.add_input(f"x{i}", TensorType.of_array(array, quant)))
    node = graph.add_node(op, operands, attrs or {})
    graph.set_outputs(node.results)
    graph.verify()
    feeds = {v.name: (inputs[int(v.name[1:])] if not isinstance(inputs[int(v.name[1:])], tuple)
                      else inputs[int(v.name[1:])][0]) for v in graph.inputs}
    outputs = interpret(graph, feeds)
    return [outputs[name] for name in graph.output_names]


def torch_of(*arrays):
    return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]


# op -> list of (inputs, attrs, torch function over tensors)
FLOAT_CASES = {
    "relu": [([randn(3, 7)], {}, F.relu)],
    "relu6": [([randn(5, 3) * 5], {}, F.relu6)],
    "hardswish": [([randn(4, 9) * 4], {}, F.hardswish)],
    "hardsigmoid": [([randn(4, 9) * 4], {}, F.hardsigmoid)],
    "sigmoid": [([randn(2, 3, 5) * 10], {}, torch.sigmoid)],
    "tanh": [([randn(6)], {}, torch.tanh)],
    "silu": [([randn(3, 11)], {}, F.silu)],
    "gelu": [([randn(3, 13)], {}, F.gelu),
             ([randn(3, 13)], {"approximate": "tanh"}, lambda x: F.gelu(x, approximate="tanh"))],
    "exp": [([randn(5)], {}, torch.exp)],
    "log": [([positive(5, 2)], {}, torch.log)],
    "sqrt": [([positive(7)], {}, torch.sqrt)],
    "rsqrt": [([positive(7)], {}, torch.rsqrt)],
    "reciprocal": [([positive(7)], {}, torch.reciprocal)],
    "erf": [([randn(9)], {}, torch.erf)],
    "neg": [([randn(4)], {}, torch.neg)],
    "abs": [([randn(4)], {}, torch.abs)],
    "clamp": [([randn(20)], {"min": -0.5, "max": 0.75}, lambda x: torch.clamp(x, -0.5, 0.75)),
              ([randn(20)], {"max": 0.1}, lambda x: torch.clamp(x, max=0.1))],
    "add": [([randn(3, 1, 5), randn(4, 5)], {}, torch.add)],
    "sub": [([randn(3, 1, 5), randn(1, 4, 1)], {}, torch.sub)],
    "mul": [([randn(2, 3), randn(3)], {}, torch.mul)],
    "div": [([randn(2, 3), positive(2, 1)], {}, torch.div)],
    "pow": [([positive(3, 4), randn(4)], {}, torch.pow)],
    "maximum": [([randn(3, 4), randn(3, 4)], {}, torch.maximum)],
    "minimum": [([randn(3, 4), randn(4)], {}, torch.minimum)],
    "conv2d": [
        ([randn(2, 3, 9, 11), randn(4, 3, 3, 3), randn(4)], {}, F.conv2d),
        ([randn(1, 6, 10, 7), randn(6, 2, 3, 2), None],
         {"stride": [2, 1], "padding": [1, 0, 2, 1], "dilation": [1, 2], "groups": 3},
         lambda x, w: F.conv2d(F.pad(x, (0, 1, 1, 2)), w, stride=(2, 1), dilation=(1, 2), groups=3)),
        ([randn(2, 5, 8, 8), randn(5, 1, 3, 3), randn(5)],
         {"padding": [1, 1, 1, 1], "groups": 5, "stride": [2, 2]},
         lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1, groups=5)),
    ],
    "linear": [([randn(2, 3, 7), randn(5, 7), randn(5)], {}, F.linear),
               ([randn(4, 7), randn(5, 7)], {}, F.linear)],
    "matmul": [([randn(2, 1, 3, 7), randn(4, 7, 5)], {}, torch.matmul)],
    "batch_norm": [([randn(2, 3, 4, 5), randn(3), positive(3), randn(3), randn(3)], {"eps": 1e-3},
                    lambda x, m, v, w, b: F.batch_norm(x, m, v, w, b, eps=1e-3))],
    "layer_norm": [([randn(2, 3, 4, 5), randn(4, 5), randn(4, 5)], {"axis": -2},
                    lambda x, w, b: F.layer_norm(x, (4, 5), w, b)),
                   ([randn(3, 9), None, None], {"axis": 1}, lambda x: F.layer_norm(x, (9,)))],
    "softmax": [([randn(3, 4, 5) * 5], {"axis": 1}, lambda x: torch.softmax(x, 1))],
    "max_pool2d": [
        ([randn(2, 3, 9, 10)], {"kernel": [3, 3], "stride": [2, 2], "padding": [1, 1, 1, 1]},
         lambda x: F.max_pool2d(x, 3, 2, 1)),
        ([randn(1, 2, 7, 8)], {"kernel": [2, 3], "stride": [2, 2], "ceil_mode": True,
                               "dilation": [2, 1]},
         lambda x: F.max_pool2d(x, (2, 3), 2, dilation=(2, 1), ceil_mode=True)),
    ],
    "avg_pool2d": [
        ([randn(2, 3, 9, 10)], {"kernel": [3, 3], "stride": [2, 2], "padding": [1, 1, 1, 1]},
         lambda x: F.avg_pool2d(x, 3, 2, 1)),
        ([randn(1, 2, 7, 8)], {"kernel": [3, 3], "stride": [2, 2], "padding": [1, 1, 1, 1],
                               "ceil_mode": True, "count_include_pad": False},
         lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False)),
        ([randn(1, 2, 8, 8)], {"kernel": [3, 3], "stride": [2, 2], "padding": [1, 1, 1, 1],
                               "ceil_mode": True},
         lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True)),
    ],
    "adaptive_avg_pool2d": [([randn(2, 3, 7, 10)], {"output_size": [3, 4]},
                             lambda x: F.adaptive_avg_pool2d(x, (3, 4)))],
    "resize": [([randn(2, 3, 5, 4)], {"size": [9, 7]},
                lambda x: F.interpolate(x, size=(9, 7), mode="bilinear"))],
    "reshape": [([randn(2, 3, 4)], {"shape": [4, -1]}, lambda x: x.reshape(4, -1))],
    "permute": [([randn(2, 3, 4)], {"perm": [2, 0, 1]}, lambda x: x.permute(2, 0, 1))],
    "expand": [([randn(3, 1)], {"shape": [2, -1, 4]}, lambda x: x.expand(2, -1, 4))],
    "slice": [([randn(5, 9)], {"axis": 1, "start": -7, "end": 8, "step": 2},
               lambda x: x[:, -7:8:2]),
              ([randn(5, 9)], {"axis": 0, "start": 2}, lambda x: x[2:])],
    "pad": [([randn(2, 3)], {"pads": [1, 0, 2, 3], "value": 0.5},
             lambda x: F.pad(x, (0, 3, 1, 2), value=0.5))],
    "mean": [([randn(2, 3, 4)], {"axes": [0, 2], "keepdim": True},
              lambda x: x.mean(dim=(0, 2), keepdim=True))],
    "sum": [([randn(2, 3, 4)], {"axes": [-1]}, lambda x: x.sum(dim=-1)),
            ([randn(2, 3)], {}, lambda x: x.sum())],
    "reduce_max": [([randn(2, 3, 4)], {"axes": [1]}, lambda x: x.amax(dim=1))],
    "reduce_min": [([randn(2, 3, 4)], {"axes": [1, 2]}, lambda x: x.amin(dim=(1, 2)))],
    "fused_conv2d": [([randn(2, 4, 7, 9), randn(6, 2, 3, 3), randn(6), randn(2, 6, 4, 9)],
                      {"stride": [2, 1], "padding": [1, 1, 1, 1], "groups": 2, "activation": "relu"},
                      lambda x, w, b, r: F.relu(F.conv2d(x, w, b, stride=(2, 1), padding=1,
                                                         groups=2) + r))],
    "fused_linear": [([randn(3, 5, 7), randn(4, 7), randn(4), randn(5, 4)],
                      {"activation": "gelu_tanh"},
                      lambda x, w, b, r: F.gelu(F.linear(x, w, b) + r, approximate="tanh")),
                     ([randn(3, 7), randn(4, 7), None, None], {"activation": "hardswish"},
                      lambda x, w: F.hardswish(F.linear(x, w)))],
    "fused_matmul": [([randn(2, 3, 5), randn(5, 4), randn(2, 3, 4)], {"activation": "silu"},
                      lambda a, b, r: F.silu(a @ b + r))],
    "fused_elementwise": [([randn(3, 4), randn(4)], {"expr": "mul($0,sigmoid(add($1,$0)))"},
                           lambda a, b: a * torch.sigmoid(b + a)),
                          ([randn(5)], {"expr": "clamp[min=0.0,max=6.0](mul($0,$0))"},
                           lambda a: torch.clamp(a * a, 0, 6))],
    "attention": [([randn(2, 3, 5, 8), randn(2, 3, 7, 8), randn(2, 3, 7, 4), randn(2, 1, 1, 7)],
                   {}, lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m)),
                  ([randn(2, 5, 8), randn(2, 7, 8), randn(2, 7, 4), randn(5, 7) > -0.5],
                   {"scale": 0.3},
                   lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=0.3))],
}


@pytest.mark.parametrize("op,case", [(op, i) for op, cases in FLOAT_CASES.items()
                                      for i in range(len(cases))])
def test_float_reference_matches_torch(op, case):
    inputs, attrs, fn = FLOAT_CASES[op][case]
    (actual,) = run_op(op, inputs, attrs)
    expected = fn(*torch_of(*[a for a in inputs if a is not None])).numpy()
    assert_matches(actual, expected, op)


def test_half_precision_inputs_compute_in_float32():
    x = randn(4, 6).astype(np.float16)
    w = randn(3, 6).astype(np.float16)
    (actual,) = run_op("linear", [x, w], {})
    expected = (x.astype(np.float32) @ w.astype(np.float32).T).astype(np.float16)
    assert_matches(actual, expected, "linear f16", rtol=1e-3)
    bf16 = DType.bf16.numpy
    (actual,) = run_op("relu", [randn(5).astype(bf16)])
    assert actual.dtype == bf16


EXACT_CASES = {
    "eq": ([np.array([1, 2, 3]), np.array([1, 0, 3])], {}, np.equal),
    "ne": ([np.array([1, 2, 3]), np.array([1, 0, 3])], {}, np.not_equal),
    "lt": ([randn(3, 4), randn(4)], {}, np.less),
    "le": ([np.array([1.0, 2.0], np.float32), np.array([1.0, 1.0], np.float32)], {}, np.less_equal),
    "gt": ([randn(3, 4), randn(4)], {}, np.greater),
    "ge": ([np.array([1, 2]), np.array([2, 2])], {}, np.greater_equal),
    "logical_and": ([randn(6) > 0, randn(6) > 0], {}, np.logical_and),
    "logical_or": ([randn(6) > 0, randn(6) > 0], {}, np.logical_or),
    "logical_not": ([randn(6) > 0], {}, np.logical_not),
    "where": ([randn(3, 1) > 0, randn(3, 4), randn(4)], {}, np.where),
    "cast": ([np.array([-1.7, 0.5, 2.9], np.float32)], {"dtype": "i64"},
             lambda x: torch.tensor(x).to(torch.int64).numpy()),
    "gather": ([randn(10, 4), np.array([[1, 9], [0, 0]], np.int64)], {"axis": 0},
               lambda d, i: F.embedding(torch.tensor(i), torch.tensor(d)).numpy()),
    "concat": ([randn(2, 3), randn(2, 1), randn(2, 2)], {"axis": 1},
               lambda *xs: np.concatenate(xs, axis=1)),
    "full": ([], {"shape": [2, 3], "value": 1.5, "dtype": "f32"},
             lambda: np.full((2, 3), 1.5, np.float32)),
}


@pytest.mark.parametrize("op", sorted(EXACT_CASES))
def test_exact_reference(op):
    inputs, attrs, fn = EXACT_CASES[op]
    (actual,) = run_op(op, inputs, attrs)
    assert_matches(actual, fn(*inputs), op)


def test_split_returns_one_result_per_piece():
    x = randn(2, 7)
    parts = run_op("split", [x], {"axis": 1, "sizes": [3, 4]})
    for actual, expected in zip(parts, torch.split(torch.tensor(x), [3, 4], dim=1)):
        assert_matches(actual, expected.numpy(), "split")


# ---- quantization ---------------------------------------------------------------------------
def test_quantize_rounds_half_to_even_and_clamps():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 1000.0, -1000.0], np.float32) * 0.25
    (q,) = run_op("quantize", [x], {"dtype": "i8", "scale": [0.25]})
    assert q.tolist() == [0, 2, 2, 0, -2, 127, -128]
    (q,) = run_op("quantize", [x], {"dtype": "u8", "scale": [0.25], "zero_point": [10]})
    assert q.tolist() == [10, 12, 12, 10, 8, 255, 0]


def test_dequantize_per_axis():
    q = rng.integers(-128, 128, size=(3, 4)).astype(np.int8)
    quant = QuantParams([0.1, 0.2, 0.3], [0, 1, -1], axis=0)
    (x,) = run_op("dequantize", [(q, quant)])
    expected = (q.astype(np.float32) - np.array([[0], [1], [-1]])) * np.float32([[0.1], [0.2], [0.3]])
    assert_matches(x, expected.astype(np.float32), "dequantize", rtol=1e-7)


def requantize_by_hand(acc, multiplier, zero_point, lo, hi):
    """The documented epilogue, written out element by element in float32."""
    out = np.empty(acc.shape, np.int64)
    for index in np.ndindex(acc.shape):
        product = np.float32(acc[index]) * np.float32(multiplier[index[-1]])
        out[index] = min(max(int(np.rint(product)) + zero_point, lo), hi)
    return out


def quantized_operands(m, k, n, x_zero_point=7):
    x = rng.integers(0, 256, size=(m, k)).astype(np.uint8)
    w = rng.integers(-127, 128, size=(n, k)).astype(np.int8)
    x_quant = QuantParams([0.02], [x_zero_point])
    w_quant = QuantParams(rng.uniform(0.001, 0.01, n), [0], axis=0)
    return x, x_quant, w, w_quant


@pytest.mark.parametrize("activation", ["none", "relu", "relu6"])
def test_qlinear_matches_the_documented_arithmetic(activation):
    x, xq, w, wq = quantized_operands(5, 33, 7)
    bias = rng.integers(-5000, 5000, size=7).astype(np.int32)
    attrs = {"dtype": "u8", "scale": 0.05, "zero_point": 100, "activation": activation}
    (actual,) = run_op("qlinear", [(x, xq), (w, wq), bias], attrs, constants=(1, 2))
    acc = (x.astype(np.int64) - 7) @ w.astype(np.int64).T + bias
    multiplier = requant_multiplier(0.02, wq.scale, 0.05)
    lo = 100 if activation != "none" else 0
    hi = min(255, 100 + int(np.rint(np.float32(6) / np.float32(0.05)))) if activation == "relu6" else 255
    expected = requantize_by_hand(acc, multiplier, 100, lo, hi).astype(np.uint8)
    assert_matches(actual, expected, f"qlinear {activation}")


@pytest.mark.parametrize("dtype", ["u8", "f32"])
def test_qlinear_adds_a_quantized_residual_before_rounding(dtype):
    x, xq, w, wq = quantized_operands(6, 19, 5)
    residual = rng.integers(0, 256, size=(6, 5)).astype(np.uint8)
    rq = QuantParams([0.07], [90])
    attrs = {"dtype": dtype, "activation": "relu"}
    if dtype == "u8":
        attrs |= {"scale": 0.05, "zero_point": 100}
    (actual,) = run_op("qlinear", [(x, xq), (w, wq), None, (residual, rq)], attrs, constants=(1,))
    acc = ((x.astype(np.int64) - 7) @ w.astype(np.int64).T).astype(np.float32)
    centered = (residual.astype(np.int64) - 90).astype(np.float32)
    if dtype == "f32":
        expected = acc * requant_multiplier(0.02, wq.scale) + centered * np.float32(0.07)
        assert_matches(actual, np.maximum(expected, 0), "qlinear residual f32", rtol=0)
        return
    out = np.empty(acc.shape, np.int64)
    factor = np.float32(np.float64(np.float32(0.07)) / np.float64(np.float32(0.05)))
    for index in np.ndindex(acc.shape):
        product = acc[index] * requant_multiplier(0.02, wq.scale, 0.05)[index[-1]]
        out[index] = min(max(int(np.rint(product + centered[index] * factor)) + 100, 100), 255)
    assert_matches(actual, out.astype(np.uint8), "qlinear residual u8")


def test_integer_ops_refuse_a_residual_of_another_shape():
    x, xq, w, wq = quantized_operands(3, 4, 2)
    residual = np.zeros((3, 3), np.uint8)
    with pytest.raises(Exception, match="residual must have the result's shape"):
        run_op("qlinear", [(x, xq), (w, wq), None, (residual, QuantParams([0.1], [0]))],
               {"dtype": "f32"}, constants=(1,))


def test_qlinear_f32_output_is_the_dequantized_accumulator():
    x, xq, w, wq = quantized_operands(3, 10, 4)
    (actual,) = run_op("qlinear", [(x, xq), (w, wq)], {"dtype": "f32"}, constants=(1,))
    acc = (x.astype(np.int64) - 7) @ w.astype(np.int64).T
    expected = acc.astype(np.float32) * requant_multiplier(0.02, wq.scale)
    assert_matches(actual, expected, "qlinear f32", rtol=0)


def test_qlinear_takes_a_float_activation_before_quantizing():
    x, xq, w, wq = quantized_operands(3, 10, 4)
    (plain,) = run_op("qlinear", [(x, xq), (w, wq)], {"dtype": "f32"}, constants=(1,))
    (actual,) = run_op("qlinear", [(x, xq), (w, wq)], {"dtype": "f32", "activation": "gelu"},
                       constants=(1,))
    expected = F.gelu(torch.from_numpy(plain.astype(np.float64))).numpy().astype(np.float32)
    assert_matches(actual, expected, "qlinear f32 gelu", rtol=1e-6)
    # A quantized result is the activation's f32 values quantized, as a quantize op would.
    (quantized,) = run_op("qlinear", [(x, xq), (w, wq)],
                          {"dtype": "u8", "scale": 0.05, "zero_point": 9, "activation": "gelu"},
                          constants=(1,))
    (requantized,) = run_op("quantize", [actual], {"scale": [0.05], "zero_point": [9],
                                                   "dtype": "u8"})
    assert_matches(quantized, requantized, "qlinear u8 gelu")
    residual = (np.zeros((3, 4), np.uint8), QuantParams([0.1], [0]))
    with pytest.raises(Exception, match="after activation gelu takes no residual"):
        run_op("qlinear", [(x, xq), (w, wq), None, residual],
               {"dtype": "u8", "scale": 0.1, "activation": "gelu"}, constants=(1,))
    with pytest.raises(Exception, match="activation must be one of none, relu, relu6, "):
        run_op("qlinear", [(x, xq), (w, wq)], {"dtype": "f32", "activation": "swish"},
               constants=(1,))


def test_qconv2d_takes_a_float_activation_before_quantizing():
    """An EfficientNet convolution's SiLU, as qlinear takes GELU."""
    x = rng.integers(0, 256, size=(2, 4, 6, 5)).astype(np.uint8)
    w = rng.integers(-127, 128, size=(6, 4, 3, 3)).astype(np.int8)
    operands = [(x, QuantParams([0.03], [128])), (w, QuantParams(rng.uniform(0.001, 0.01, 6), [0],
                                                                 axis=0))]
    attrs = {"padding": [1, 1, 1, 1], "dtype": "f32"}
    (plain,) = run_op("qconv2d", operands, attrs, constants=(1,))
    (actual,) = run_op("qconv2d", operands, {**attrs, "activation": "silu"}, constants=(1,))
    expected = F.silu(torch.from_numpy(plain.astype(np.float64))).numpy().astype(np.float32)
    assert_matches(actual, expected, "qconv2d f32 silu", rtol=1e-6)
    (quantized,) = run_op("qconv2d", operands, {**attrs, "dtype": "i8", "scale": 0.02,
                                                "zero_point": -4, "activation": "silu"},
                          constants=(1,))
    (requantized,) = run_op("quantize", [actual], {"scale": [0.02], "zero_point": [-4],
                                                   "dtype": "i8"})
    assert_matches(quantized, requantized, "qconv2d i8 silu")
    residual = (np.zeros((2, 6, 6, 5), np.uint8), QuantParams([0.1], [0]))
    with pytest.raises(Exception, match="after activation silu takes no residual"):
        run_op("qconv2d", [*operands, None, residual],
               {**attrs, "dtype": "u8", "scale": 0.1, "activation": "silu"}, constants=(1,))


def test_qconv2d_matches_integer_convolution():
    x = rng.integers(0, 256, size=(2, 4, 7, 6)).astype(np.uint8)
    w = rng.integers(-127, 128, size=(6, 2, 3, 3)).astype(np.int8)
    xq, wq = QuantParams([0.03], [128]), QuantParams(rng.uniform(0.001, 0.01, 6), [0], axis=0)
    bias = rng.integers(-3000, 3000, size=6).astype(np.int32)
    attrs = {"groups": 2, "padding": [1, 0, 1, 2], "stride": [2, 1], "dtype": "i8",
             "scale": 0.1, "zero_point": -3}
    (actual,) = run_op("qconv2d", [(x, xq), (w, wq), bias], attrs, constants=(1, 2))
    # Integer convolution through torch in float64 (exact for these magnitudes).
    padded = F.pad(torch.tensor(x.astype(np.float64) - 128), (0, 2, 1, 1))
    acc = F.conv2d(padded, torch.tensor(w.astype(np.float64)), stride=(2, 1), groups=2).numpy()
    acc = acc.astype(np.int64) + bias.reshape(1, -1, 1, 1)
    multiplier = requant_multiplier(0.03, wq.scale, 0.1)
    expected = requantize_by_hand(np.moveaxis(acc, 1, -1), multiplier, -3, -128, 127)
    assert_matches(actual, np.moveaxis(expected, -1, 1).astype(np.int8), "qconv2d")


def test_qmatmul_with_asymmetric_operands():
    a = rng.integers(0, 256, size=(2, 3, 9)).astype(np.uint8)
    b = rng.integers(0, 256, size=(2, 9, 5)).astype(np.uint8)
    aq, bq = QuantParams([0.05], [120]), QuantParams([0.04], [130])
    (actual,) = run_op("qmatmul", [(a, aq), (b, bq)], {"dtype": "f32"})
    acc = (a.astype(np.int64) - 120) @ (b.astype(np.int64) - 130)
    expected = acc.astype(np.float32) * requant_multiplier(0.05, [0.04])
    assert_matches(actual, expected, "qmatmul", rtol=0)


def test_dynamic_qlinear_quantizes_each_batch_from_its_range():
    x = (randn(4, 9) * 3).astype(np.float32)
    w = rng.integers(-127, 128, size=(5, 9)).astype(np.int8)
    wq = QuantParams(rng.uniform(0.001, 0.01, 5), [0], axis=0)
    bias = randn(5)
    (actual,) = run_op("dynamic_qlinear", [x, (w, wq), bias], constants=(1,))
    low, high = min(x.min(), 0.0), max(x.max(), 0.0)
    scale = np.float32((high - low) / 255.0)
    zero_point = int(np.rint(-low / scale))
    q = np.clip(np.rint(x / scale) + zero_point, 0, 255).astype(np.int64)
    acc = (q - zero_point) @ w.astype(np.int64).T
    expected = acc.astype(np.float32) * requant_multiplier(scale, wq.scale) + bias
    assert_matches(actual, expected.astype(np.float32), "dynamic_qlinear", rtol=1e-6)
    assert_matches(actual, x @ (w * np.float32(wq.scale)[:, None]).T + bias, "vs float",
                   rtol=2e-2)


def test_quantized_op_rejects_float_input():
    graph = Graph("bad")
    x = graph.add_input("x", TensorType(DType.f32, (2, 3)))
    w = graph.add_constant("w", np.zeros((4, 3), np.int8), QuantParams([0.1] * 4, [0], axis=0))
    with pytest.raises(OpError, match="input must be quantized"):
        Builder(graph).qlinear(x, w, dtype="f32")


# ---- coverage and schema ----------------------------------------------------------------------
QUANT_OPS = {"quantize", "dequantize", "qlinear", "qconv2d", "qmatmul", "qattention",
             "dynamic_qlinear"}


def test_every_op_in_the_table_has_a_reference_test():
    tested = set(FLOAT_CASES) | set(EXACT_CASES) | {"split"} | QUANT_OPS
    assert set(OP_TABLE) - tested == set()


def test_symbolic_shapes_flow_through_inference():
    graph = Graph("sym")
    n = symbol("N")
    x = graph.add_input("x", TensorType(DType.f32, (n, 12, 16)))
    b = Builder(graph)
    heads = b.reshape(x, shape=[n, 12, 4, 4])
    folded = b.reshape(b.permute(heads, perm=[0, 2, 1, 3]), shape=[n * 4, 12, 4])
    assert str(folded.type) == "f32[4*N,12,4]"
    graph.set_outputs([folded])
    out = interpret(graph, {"x": randn(3, 12, 16)})["output"]
    assert out.shape == (12, 12, 4)


def test_reshape_infers_a_symbolic_dim_whatever_the_expression_form():
    # H + 1 from padding: N * (4*H + 4) equals 4*N*(H + 1) once expanded.
    graph = Graph("sym")
    n, h = symbol("N"), symbol("H")
    x = graph.add_input("x", TensorType(DType.f32, (n, 1, h + 1, 4)))
    flat = Builder(graph).reshape(x, shape=[n, -1])
    assert flat.type.shape == (n, 4 * h + 4)
    with pytest.raises(OpError, match="cannot reshape"):
        Builder(graph).reshape(x, shape=[n, 4 * h])


def test_reshape_divides_out_a_strided_size():
    """A strided window over H gives a floor; the -1 of [that size, -1] over [that size, 2, N, 4]
    is 8*N, which sympy's floor kept undivided (found by random graphs)."""
    graph = Graph("sym")
    n, h = symbol("N"), symbol("H")
    rows = Builder(graph).max_pool2d(graph.add_input("x", TensorType(DType.f32, (n, 4, h, 2))),
                                     kernel=[1, 1], stride=[2, 1]).type.shape[2]
    x = graph.add_input("y", TensorType(DType.f32, (rows, 2, n, 4)))
    assert Builder(graph).reshape(x, shape=[rows, -1]).type.shape == (rows, 8 * n)
    assert floordiv(n + 1, 2) == sympy.floor((n + 1) / 2)  # what does not divide keeps its floor


def test_attribute_errors_name_the_attribute_and_suggest():
    graph = Graph("bad")
    x = graph.add_input("x", TensorType(DType.f32, (1, 3, 8, 8)))
    with pytest.raises(OpError, match=r"unknown attribute 'kernal' \(did you mean 'kernel'\?\)"):
        graph.add_node("max_pool2d", [x], {"kernal": [2, 2]})
    with pytest.raises(OpError, match="attribute 'kernel' .* is required"):
        graph.add_node("max_pool2d", [x], {})
    with pytest.raises(OpError, match="unknown op.*did you mean 'relu'"):
        graph.add_node("relux", [x], {})
    with pytest.raises(OpError, match="attribute 'groups' \\(int\\): expected an integer"):
        graph.add_node("conv2d", [x, x], {"groups": 1.5})


@pytest.mark.parametrize("expr, error", [
    ("mul($0,conv2d($1,$1))", "not elementwise"),
    ("mul($0,$0)", "uses inputs \\[0\\], has 2"),
    ("mul( $0,$1 )", "not canonical"),
    ("clamp[mni=0.0]($0,$1)", "unknown attribute 'mni'"),
    ("relu($0", "expected ',' or '\\)'"),
])
def test_fused_expressions_are_validated(expr, error):
    graph = Graph("bad")
    a = graph.add_input("a", TensorType(DType.f32, (3,)))
    b = graph.add_input("b", TensorType(DType.f32, (3,)))
    with pytest.raises(OpError, match=error):
        graph.add_node("fused_elementwise", [a, b], {"expr": expr})


@pytest.mark.parametrize("mode, align_corners", [("bilinear", False), ("bilinear", True),
                                                 ("nearest", False)])
@pytest.mark.parametrize("resize", [{"size": (7, 5)}, {"size": (2, 9)}, {"size": (1, 1)},
                                    {"scale_factor": (1.7, 0.6)}, {"scale_factor": 2.0},
                                    {"scale_factor": (0.75, 3.0)}])
def test_resize_matches_torch(mode, align_corners, resize):
    """F.interpolate's mappings, up and down, odd sizes: the size alone sets the ratio; given
    scale factors set it as 1 / scale, as torch does."""
    x = rng.standard_normal((2, 3, 4, 6)).astype(np.float32)
    options = {"align_corners": align_corners} if mode == "bilinear" else {}
    expected = F.interpolate(torch.from_numpy(x), mode=mode, **options, **resize).numpy()
    scale = resize.get("scale_factor")
    attrs = {"size": list(expected.shape[2:]), "mode": mode, "align_corners": align_corners,
             "scale": None if scale is None else list(np.broadcast_to(scale, 2))}
    (actual,) = run_op("resize", [x], attrs)
    assert_matches(actual, expected, f"resize {mode} {align_corners} {resize}", rtol=1e-6)


def test_resize_names_what_it_takes():
    x = np.zeros((1, 2, 3, 3), np.float32)
    with pytest.raises(OpError, match="mode must be 'bilinear' or 'nearest'"):
        run_op("resize", [x], {"size": [4, 4], "mode": "bicubic"})
    with pytest.raises(OpError, match="align_corners is for bilinear"):
        run_op("resize", [x], {"size": [4, 4], "mode": "nearest", "align_corners": True})
    with pytest.raises(OpError, match="input must be float"):
        run_op("resize", [x.astype(np.int64)], {"size": [4, 4]})
