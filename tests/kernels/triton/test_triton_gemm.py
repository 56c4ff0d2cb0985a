"""The Triton GEMMs against the op table's qlinear / fused_linear references: the int8 kernel bit for
bit (every result type, activation and residual), the float one within fp16/fp32 rounding."""

import numpy as np
import pytest
import torch
from checks import assert_matches
from nimbus.compiler.dtypes import DType
from nimbus.compiler.interpreter import interpret
from nimbus.compiler.ir import Graph, QuantParams, TensorType
from nimbus.compiler.ops.quant import activation_bounds, requant_multiplier
from nimbus.kernels.triton.gemm import QuantEpilogue, gemm, pack_float_weights, pack_weights, qgemm

rng = np.random.default_rng(7)


def run_one_node(op: str, operands: list, attrs: dict) -> np.ndarray:
    """Run a one-node graph; each operand is None, an array, or (array, QuantParams)."""
    graph = Graph(op)
    values, feeds = [], {}
    for i, item in enumerate(operands):
        if item is None:
            values.append(None)
            continue
        array, quant = item if isinstance(item, tuple) else (item, None)
        values.append(graph.add_input(f"x{i}", TensorType.of_array(array, quant)))
        feeds[f"x{i}"] = array
    node = graph.add_node(op, values, attrs)
    graph.set_outputs(node.results)
    (result,) = interpret(graph, feeds).values()
    return result


def quantized_problem(m, k, n, signed, zero_point):
    if signed:
        x = rng.integers(-128, 128, size=(m, k)).astype(np.int8)
    else:
        x = rng.integers(0, 256, size=(m, k)).astype(np.uint8)
    w = rng.integers(-127, 128, size=(n, k)).astype(np.int8)
    xq = QuantParams([float(np.float32(0.02))], [zero_point])
    wq = QuantParams([float(s) for s in rng.uniform(0.001, 0.01, n).astype(np.float32)], [0], axis=0)
    bias = rng.integers(-4000, 4000, size=n).astype(np.int32)
    return x, xq, w, wq, bias


def launch(x, xq, w, bias, epilogue_kw, device):
    packed = pack_weights(torch.from_numpy(w).to(device))
    epilogue = QuantEpilogue(bias=None if bias is None else torch.from_numpy(bias).to(device),
                             **epilogue_kw)
    out = qgemm(torch.from_numpy(x).to(device), xq.zero_point[0], packed, epilogue)
    return out.cpu().numpy()


@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (7, 33, 5), (33, 70, 65), (65, 129, 40)])
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("activation", ["none", "relu", "relu6"])
def test_requantized_result_is_bit_exact(m, k, n, signed, activation, device):
    x, xq, w, wq, bias = quantized_problem(m, k, n, signed, -5 if signed else 131)
    out_dtype, out_scale, out_zero_point = ("i8", 0.05, -3) if signed else ("u8", 0.05, 100)
    attrs = {"dtype": out_dtype, "scale": out_scale, "zero_point": out_zero_point,
             "activation": activation}
    expected = run_one_node("qlinear", [(x, xq), (w, wq), bias], attrs)
    lo, hi = activation_bounds(activation, DType(out_dtype), out_scale, out_zero_point)
    multiplier = torch.from_numpy(requant_multiplier(xq.scale[0], wq.scale, out_scale))
    actual = launch(x, xq, w, bias, {"out_dtype": out_dtype, "scale": multiplier,
                                     "zero_point": out_zero_point, "lo": lo, "hi": hi}, device)
    assert_matches(actual, expected, f"qgemm {out_dtype} {activation}")


@pytest.mark.parametrize("activation", ["none", "relu6"])
def test_f32_result_is_bit_exact(activation, device):
    x, xq, w, wq, _ = quantized_problem(9, 45, 17, False, 7)
    expected = run_one_node("qlinear", [(x, xq), (w, wq)], {"dtype": "f32", "activation": activation})
    scale = torch.from_numpy(requant_multiplier(xq.scale[0], wq.scale))
    actual = launch(x, xq, w, None, {"out_dtype": "f32", "scale": scale,
                                     "activation": activation}, device)
    assert_matches(actual, expected, "qgemm f32", rtol=0)


@pytest.mark.parametrize("activation", ["gelu", "silu"])
def test_f32_result_takes_float_activations(activation, device):
    """A qlinear with an f32 result may apply any float activation (the CPU computes it with
    its own vectorized functions, so the match is to float32 rounding)."""
    x, xq, w, wq, _ = quantized_problem(9, 45, 17, False, 7)
    expected = run_one_node("qlinear", [(x, xq), (w, wq)], {"dtype": "f32", "activation": activation})
    scale = torch.from_numpy(requant_multiplier(xq.scale[0], wq.scale))
    actual = launch(x, xq, w, None, {"out_dtype": "f32", "scale": scale,
                                     "activation": activation}, device)
    assert_matches(actual, expected, f"qgemm f32 {activation}", rtol=1e-5)


def test_s32_result_is_the_exact_accumulator(device):
    x, xq, w, _, bias = quantized_problem(20, 300, 36, False, 200)
    acc = (x.astype(np.int64) - 200) @ w.astype(np.int64).T + bias
    actual = launch(x, xq, w, bias, {"out_dtype": "s32"}, device)
    assert_matches(actual, acc.astype(np.int32), "qgemm s32")


@pytest.mark.parametrize("out_dtype", ["u8", "f32"])
def test_residual_is_added_before_rounding(out_dtype, device):
    x, xq, w, wq, bias = quantized_problem(13, 50, 21, False, 128)
    residual = rng.integers(0, 256, size=(13, 21)).astype(np.uint8)
    rq = QuantParams([float(np.float32(0.07))], [90])
    attrs = {"dtype": out_dtype, "activation": "relu"}
    if out_dtype == "u8":
        attrs |= {"scale": 0.05, "zero_point": 100}
    expected = run_one_node("qlinear", [(x, xq), (w, wq), bias, (residual, rq)], attrs)
    output_scale = 0.05 if out_dtype == "u8" else 1.0
    factor = float(np.float32(np.float64(np.float32(0.07)) / np.float64(np.float32(output_scale))))
    multiplier = requant_multiplier(xq.scale[0], wq.scale, output_scale)
    kw = {"out_dtype": out_dtype, "scale": torch.from_numpy(multiplier),
          "residual": torch.from_numpy(residual).to(device), "residual_zero_point": 90,
          "residual_scale": factor}
    kw |= {"zero_point": 100, "lo": 100} if out_dtype == "u8" else {"activation": "relu"}
    actual = launch(x, xq, w, bias, kw, device)
    assert_matches(actual, expected, f"qgemm residual {out_dtype}", rtol=0)


def test_leading_axes_are_flattened_into_rows(device):
    x = torch.from_numpy(rng.integers(0, 256, size=(2, 3, 10)).astype(np.uint8)).to(device)
    w = torch.from_numpy(rng.integers(-127, 128, size=(4, 10)).astype(np.int8)).to(device)
    out = qgemm(x, 0, pack_weights(w))
    assert out.shape == (2, 3, 4)
    expected = x.cpu().long().reshape(6, 10) @ w.cpu().long().T
    assert torch.equal(out.cpu().reshape(6, 4).long(), expected)


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-5), (torch.float16, 2e-3)])
@pytest.mark.parametrize("m, k, n", [(1, 3, 2), (37, 65, 33)])
@pytest.mark.parametrize("activation", ["none", "gelu", "silu"])
def test_float_gemm_matches_fused_linear(m, k, n, activation, dtype, rtol, device):
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    residual = rng.standard_normal((m, n)).astype(np.float32)
    cast = [a.astype(np.float16).astype(np.float32) if dtype == torch.float16 else a
            for a in (x, w, bias, residual)]
    expected = run_one_node("fused_linear", cast, {"activation": activation})
    tensors = [torch.from_numpy(a).to(device=device, dtype=dtype) for a in cast]
    actual = gemm(tensors[0], pack_float_weights(tensors[1]), bias=tensors[2], residual=tensors[3],
                  activation=activation)
    assert actual.dtype == dtype
    assert_matches(actual.float().cpu().numpy(), expected, f"gemm {dtype} {activation}", rtol=rtol)


@pytest.mark.parametrize("activation", ["relu", "relu6"])
def test_float_gemm_keeps_nan_through_relu(activation, device):
    """A NaN in a row of x makes that row NaN, as numpy's maximum does (Triton's default
    maximum is fmax, which gave 0)."""
    x = rng.standard_normal((5, 7)).astype(np.float32)
    x[2, 3] = np.nan
    w = rng.standard_normal((6, 7)).astype(np.float32)
    expected = run_one_node("fused_linear", [x, w, None, None], {"activation": activation})
    actual = gemm(torch.from_numpy(x).to(device), pack_float_weights(torch.from_numpy(w).to(device)),
                  activation=activation).cpu().numpy()
    assert np.isnan(actual[2]).all()
    assert_matches(actual, expected, f"gemm {activation}", rtol=1e-5)


@pytest.mark.parametrize("split", [2, 4])
@pytest.mark.parametrize("m, k, n", [(1, 3, 2), (37, 200, 33)])
def test_float_gemm_split_along_k_matches_fused_linear(m, k, n, split, device, monkeypatch):
    """The split configs (partial sums of runs of K steps, added by a second kernel) are what
    the tuner picks for few rows on a GPU; here each is made the config the interpreter runs.
    K = 200 in steps of 32 splits into runs of unequal length, K = 3 leaves programs no step."""
    from nimbus.kernels.triton import autotune

    small = autotune.config(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, GROUP_M=8, SPLIT_K=split,
                            num_warps=4, num_stages=2)
    monkeypatch.setitem(autotune.SPACES, "gemm", [small, *autotune.SPACES["gemm"]])
    x, w = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((n, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    residual = rng.standard_normal((m, n)).astype(np.float32)
    expected = run_one_node("fused_linear", [x, w, bias, residual], {"activation": "gelu"})
    tensors = [torch.from_numpy(a).to(device) for a in (x, w, bias, residual)]
    actual = gemm(tensors[0], pack_float_weights(tensors[1]), bias=tensors[2], residual=tensors[3],
                  activation="gelu")
    assert_matches(actual.cpu().numpy(), expected, f"gemm split {split}", rtol=1e-5)


def test_bad_inputs_are_named(device):
    packed = pack_weights(torch.zeros((4, 8), dtype=torch.int8, device=device))
    with pytest.raises(ValueError, match="must end in K=8"):
        qgemm(torch.zeros((2, 7), dtype=torch.uint8, device=device), 0, packed)
    with pytest.raises(ValueError, match="uint8 or int8"):
        qgemm(torch.zeros((2, 8), dtype=torch.float32, device=device), 0, packed)
    with pytest.raises(ValueError, match="zero point 300"):
        qgemm(torch.zeros((2, 8), dtype=torch.uint8, device=device), 300, packed)
    with pytest.raises(ValueError, match="scale is required"):
        qgemm(torch.zeros((2, 8), dtype=torch.uint8, device=device), 0, packed, QuantEpilogue("u8"))
    with pytest.raises(ValueError, match="1 or 4 values"):
        qgemm(torch.zeros((2, 8), dtype=torch.uint8, device=device), 0, packed,
              QuantEpilogue("u8", scale=torch.ones(3)))
    with pytest.raises(ValueError, match="clamp bounds"):
        qgemm(torch.zeros((2, 8), dtype=torch.uint8, device=device), 0, packed,
              QuantEpilogue("i8", scale=torch.ones(4), lo=-200))
    with pytest.raises(ValueError, match="result's shape"):
        qgemm(torch.zeros((2, 8), dtype=torch.uint8, device=device), 0, packed,
              QuantEpilogue("u8", scale=torch.ones(4), residual=torch.zeros((2, 3), dtype=torch.uint8)))
    with pytest.raises(ValueError, match="2-D int8"):
        pack_weights(torch.zeros((4, 8)))
    with pytest.raises(ValueError, match="unknown activation"):
        gemm(torch.zeros((2, 8)), torch.zeros((8, 3)), activation="swish")
    with pytest.raises(ValueError, match="must end in K=8"):
        gemm(torch.zeros((2, 5)), torch.zeros((8, 3)))
