"""Static int8 quantization: where integer ops and boundaries go, every observer, every form of
calibration data, flat memory, and accuracy on a real data set and the test models."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from digits import digit_images, top1, trained_lenet
from models.cases import CASES, converted
import nimbus
from nimbus.compiler.dtypes import DType
from nimbus.compiler.frontend import from_torch
from nimbus.compiler.interpreter import interpret
from nimbus.passes import DEFAULT_OPTIMIZATION, PassError, PassManager, run_passes
from nimbus.passes.calibration import ImageFolder, Observer, calibration_batches, observe
from nimbus.runtime.cpu_ops.registry import KERNELS


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def digits_graph():
    train_x, _, _, _ = digit_images()
    model = trained_lenet()
    graph = from_torch(model, (torch.from_numpy(train_x[:2]),))
    return run_passes(graph, DEFAULT_OPTIMIZATION)


def optimized_case(name: str, batch: int, count: int):
    """A model case's graph, the graph after the default optimization, and `count` input
    batches for calibration."""
    _, graph = converted(name)
    optimized = run_passes(graph, DEFAULT_OPTIMIZATION)
    names = [value.name for value in graph.inputs]
    batches = [dict(zip(names, (t.numpy() for t in CASES[name].make_inputs(
        torch.Generator().manual_seed(seed), batch)))) for seed in range(count)]
    return graph, optimized, batches


def calibration_set(count: int = 8, batch: int = 64):
    train_x, _, _, _ = digit_images()
    return [train_x[i * batch:(i + 1) * batch] for i in range(count)]


def test_cnn_becomes_one_integer_chain(digits_graph):
    manager = PassManager("quantize", data={"calibration": calibration_set()})
    graph = manager.run(digits_graph.copy())
    ops = [node.op for node in graph.nodes]
    assert ops == ["quantize", "qconv2d", "max_pool2d", "qconv2d", "max_pool2d", "reshape",
                   "qlinear", "qlinear", "qlinear"]
    assert [n.result.type.dtype for n in graph.nodes[:-1]] == [DType.u8] * 8
    assert graph.nodes[-1].attrs["dtype"] == DType.f32  # dequantized only at the graph output
    weights = [n.operands[1] for n in graph.nodes if n.op in ("qconv2d", "qlinear")]
    assert all(w.type.dtype == DType.i8 and w.type.quant.axis == 0 for w in weights)
    assert all(np.abs(w.data).max() <= 127 for w in weights)
    assert all(n.operands[2].type.dtype == DType.i32 for n in graph.nodes if n.op == "qconv2d")
    assert manager.report.records[0].stats["layers-quantized"] == 5


@pytest.mark.parametrize("observer", ["minmax", "percentile", "entropy", "mse"])
def test_int8_digits_accuracy_within_one_point_of_float(digits_graph, observer):
    _, _, test_x, test_y = digit_images()
    float_top1 = top1(interpret(digits_graph, {"x": test_x})["output"], test_y)
    quantized = run_passes(digits_graph, f"quantize{{calibration={observer}}}",
                           calibration=calibration_set())
    int8_top1 = top1(interpret(quantized, {"x": test_x})["output"], test_y)
    print(f"\ndigits top-1 with {observer}: float {float_top1:.2f}%, int8 {int8_top1:.2f}%")
    assert float_top1 > 95.0
    assert int8_top1 >= float_top1 - 1.0


@pytest.mark.parametrize("name", CASES)
def test_test_models_quantize_with_high_cosine(name):
    graph, optimized, batches = optimized_case(name, batch=4, count=6)
    quantized = run_passes(optimized, "quantize", calibration=batches)
    assert any(node.op in ("qconv2d", "qlinear") for node in quantized.nodes)
    expected, actual = interpret(optimized, batches[0]), interpret(quantized, batches[0])
    for output_name in graph.output_names:
        if expected[output_name].dtype.kind == "f":
            similarity = cosine(actual[output_name], expected[output_name])
            assert similarity >= 0.99, f"{name} {output_name}: cosine {similarity:.5f}"


@pytest.mark.parametrize("name", ["bert_encoder", "transformer_post_norm", "transformer_pre_norm"])
@pytest.mark.parametrize("mode", ["dynamic", "weight-only"])
def test_dynamic_and_weight_only_modes_need_no_calibration(name, mode):
    model, graph = converted(name)
    optimized = run_passes(graph, DEFAULT_OPTIMIZATION)
    quantized = run_passes(optimized, f"quantize{{mode={mode}}}")
    linears = sum(n.op in ("linear", "fused_linear") for n in optimized.nodes)
    if mode == "dynamic":
        assert sum(n.op == "dynamic_qlinear" for n in quantized.nodes) == linears
    else:
        dequantized = [n for n in quantized.nodes if n.op == "dequantize"]
        assert len(dequantized) == linears
        assert all(n.operands[0].is_constant and n.operands[0].type.dtype == DType.i8
                   for n in dequantized)
    names = [value.name for value in graph.inputs]
    feed = dict(zip(names, (t.numpy() for t in CASES[name].make_inputs(
        torch.Generator().manual_seed(3), 4))))
    similarity = cosine(interpret(quantized, feed)["output"], interpret(optimized, feed)["output"])
    assert similarity >= 0.99, f"{name} {mode}: cosine {similarity:.5f}"


def test_i8_activations_and_exclusions(digits_graph):
    manager = PassManager('quantize{activations=i8 exclude="fc3.*"}',
                          data={"calibration": calibration_set(2)})
    graph = manager.run(digits_graph.copy())
    quantize_nodes = [n for n in graph.nodes if n.op == "quantize"]
    assert quantize_nodes[0].result.type.dtype == DType.i8
    assert all(z == 0 for n in quantize_nodes for z in n.result.type.quant.zero_point)
    assert graph.nodes[-1].op == "linear"  # fc3 stays in float, as asked
    assert manager.report.records[0].stats["kept-float: excluded by name"] == 1


def test_calibration_data_forms(tmp_path, digits_graph):
    images = calibration_set(2, 8)
    labels = [np.zeros(8, np.int64)] * 2
    np.save(tmp_path / "x.npy", np.concatenate(images))
    np.savez(tmp_path / "batches.npz", *images)
    np.savez(tmp_path / "named.npz", x=images[0])
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(np.concatenate(images)),
                                       torch.zeros(16, dtype=torch.int64)), batch_size=8)
    forms = {
        "arrays": images,
        "dicts": [{"x": image} for image in images],
        "tensors": [torch.from_numpy(image) for image in images],
        "pairs": list(zip(images, labels)),
        "dataloader": loader,
        "npy": tmp_path / "x.npy",
        "npz": str(tmp_path / "batches.npz"),
        "named npz": tmp_path / "named.npz",
    }
    for form, data in forms.items():
        feeds = list(calibration_batches(data, digits_graph))
        assert feeds and all(set(feed) == {"x"} for feed in feeds), form
        assert all(feed["x"].dtype == np.float32 and feed["x"].shape[1:] == (3, 32, 32)
                   for feed in feeds), form


def test_calibration_from_a_folder_of_images(tmp_path, digits_graph):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(5):
        pixels = rng.integers(0, 256, size=(20 + i, 30, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"image{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    folder = ImageFolder(tmp_path, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), batch=2)
    feeds = list(calibration_batches(folder, digits_graph))
    assert [feed["x"].shape for feed in feeds] == [(2, 3, 32, 32), (2, 3, 32, 32), (1, 3, 32, 32)]
    assert all(-1.0 <= feed["x"].min() and feed["x"].max() <= 1.0 for feed in feeds)
    quantized = run_passes(digits_graph, "quantize", calibration=tmp_path)  # a plain folder path
    assert quantized.nodes[0].op == "quantize"


def test_missing_calibration_is_an_error_and_random_data_warns(digits_graph):
    with pytest.raises(PassError, match="quantize needs calibration data"):
        run_passes(digits_graph, "quantize")
    with pytest.warns(UserWarning, match="calibrating on random data"):
        quantized = run_passes(digits_graph, "quantize{random-data=true}")
    assert any(node.op == "qconv2d" for node in quantized.nodes)


def test_observers_on_known_distributions():
    rng = np.random.default_rng(0)
    observer = Observer()
    samples = np.concatenate([rng.standard_normal(200_000), [40.0, -35.0]])  # two outliers
    for chunk in np.array_split(samples, 7):  # the histogram widens as batches arrive
        observer.update(chunk)
    assert observer.counts.sum() == samples.size
    assert observer.range("minmax") == (-35.0, 40.0)
    low, high = observer.range("percentile", 99.9)
    assert -4.0 < low < -2.5 and 2.5 < high < 4.0
    for method in ("entropy", "mse"):
        low, high = observer.range(method)
        assert -35.0 < low < 0.0 < high < 40.0, method  # outliers clipped, the mode kept
    relu_like = Observer()
    relu_like.update(np.maximum(rng.standard_normal(10_000), 0))
    assert relu_like.range("percentile")[0] == 0.0


def test_calibration_memory_stays_flat(digits_graph):
    """Peak memory with 40 batches is no more than with 4: observers keep statistics only."""
    def peak(batches: int) -> int:
        data = (np.full((16, 3, 32, 32), i / batches, np.float32) for i in range(batches))
        values = [n.result for n in digits_graph.nodes]
        tracemalloc.start()
        observe(digits_graph, values, calibration_batches(data, digits_graph), progress=False)
        _, highest = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return highest

    few, many = peak(4), peak(40)
    assert many < few * 1.25, f"peak {many} bytes for 40 batches vs {few} for 4"


def test_sqnr_floor_sends_sensitive_layers_back_to_float(digits_graph):
    manager = PassManager("quantize{min-sqnr=45}", data={"calibration": calibration_set(2)})
    graph = manager.run(digits_graph.copy())
    stats = manager.report.records[0].stats
    assert stats["layers-over-budget"] >= 1
    assert stats["layers-quantized"] + stats["kept-float: over the accuracy budget"] == 5
    assert any(node.op in ("fused_conv2d", "fused_linear", "linear") for node in graph.nodes)


def test_metric_budget_holds_after_fallback(digits_graph):
    _, _, test_x, _ = digit_images()
    evaluation = [test_x[:120]]
    reference = interpret(digits_graph, {"x": test_x[:120]})["output"]

    def agreement(outputs):  # a strict metric: 100 * cosine with the float logits
        return 100.0 * cosine(outputs["output"], reference)

    manager = PassManager("quantize{max-drop=0.0005}",
                          data={"calibration": calibration_set(2), "evaluation": evaluation,
                                "metric": agreement})
    graph = manager.run(digits_graph.copy())
    stats = manager.report.records[0].stats
    assert stats["layers-over-budget"] >= 1
    assert 100.0 - agreement(interpret(graph, {"x": test_x[:120]})) <= 0.0005
    with pytest.raises(PassError, match="max-drop needs a metric"):
        run_passes(digits_graph, "quantize{max-drop=1.0}", calibration=calibration_set(1))


@pytest.mark.parametrize("name", ["resnet_basic_block", "mobilenet_v2_block"])
def test_residual_blocks_stay_integer(name):
    """A fused residual of the result's shape is added in the integer epilogue: no float add,
    and the block's output feeds the next integer layer without a quantize."""
    graph, optimized, batches = optimized_case(name, batch=4, count=6)
    assert any(n.op == "fused_conv2d" and n.operands[3] is not None for n in optimized.nodes)
    quantized = run_passes(optimized, "quantize", calibration=batches)
    with_residual = [n for n in quantized.nodes if n.op == "qconv2d" and len(n.operands) > 3
                     and n.operands[3] is not None]
    assert with_residual and not any(n.op == "add" for n in quantized.nodes)
    assert all(n.operands[3].type.dtype == DType.u8 and not n.operands[3].type.quant.per_axis
               for n in with_residual)
    expected, actual = interpret(optimized, batches[0]), interpret(quantized, batches[0])
    for output_name in graph.output_names:
        assert cosine(actual[output_name], expected[output_name]) >= 0.99


def test_a_linear_layers_gelu_runs_in_the_qlinear():
    """A linear layer's GELU (the BERT FFN) runs in its qlinear: on the f32 values, quantized
    there for the next integer layer, or left f32 where float ops read the result."""
    graph, optimized, batches = optimized_case("bert_encoder", batch=2, count=4)
    quantized = run_passes(optimized, "quantize", calibration=batches)
    fused = [n for n in quantized.nodes if n.op == "qlinear" and n.attrs["activation"] == "gelu"]
    assert fused and all(n.attrs["dtype"] == DType.u8 for n in fused)
    uses = quantized.uses()
    assert all(user.op == "qlinear" for n in fused for user in uses[n.result])
    assert not any(n.op == "gelu" for n in quantized.nodes)
    expected, actual = interpret(optimized, batches[0]), interpret(quantized, batches[0])
    for output_name in graph.output_names:
        assert cosine(actual[output_name], expected[output_name]) >= 0.99

    head = from_torch(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU()).eval(),
                      (torch.randn(2, 8),))
    data = [{head.inputs[0].name: np.random.default_rng(seed).standard_normal((4, 8)).astype(
        np.float32)} for seed in range(4)]
    head_quantized = run_passes(run_passes(head, DEFAULT_OPTIMIZATION), "quantize",
                                calibration=data)
    (layer,) = [n for n in head_quantized.nodes if n.op == "qlinear"]
    assert layer.attrs["activation"] == "gelu" and layer.attrs["dtype"] == DType.f32


def test_a_convolutions_float_activation_runs_in_the_qconv2d():
    """MobileNetV3's hardswish (an EfficientNet's SiLU) runs in the qconv2d of its expand and
    depthwise layers, on the f32 values, which it quantizes there where an integer layer reads
    them: no float pass between them. The CPU session matches the interpreter bit for bit."""
    graph, optimized, batches = optimized_case("mobilenet_v3_block", batch=2, count=4)
    quantized = run_passes(optimized, "quantize", calibration=batches)
    fused = [n for n in quantized.nodes
             if n.op == "qconv2d" and n.attrs["activation"] == "hardswish"]
    # The expand layer's result is u8 for the depthwise one, whose own result stays f32 for
    # the squeeze-and-excitation's float pooling and gating.
    assert {n.attrs["groups"] > 1: n.attrs["dtype"] for n in fused} == {False: DType.u8,
                                                                        True: DType.f32}
    assert not any(n.op == "hardswish" for n in quantized.nodes)
    expected, actual = interpret(optimized, batches[0]), interpret(quantized, batches[0])
    for output_name in graph.output_names:
        assert cosine(actual[output_name], expected[output_name]) >= 0.99
    session = nimbus.compile(quantized, pipeline="").session()
    for _ in range(2):  # the executor, then the native plan
        outputs = session.run(batches[0])
        for output_name in graph.output_names:
            np.testing.assert_array_equal(outputs[output_name], actual[output_name])


@pytest.mark.parametrize("name", ["bert_encoder", "transformer_pre_norm"])
def test_attention_runs_on_int8_q_k_v(name):
    """Static quantization turns attention into qattention: BERT's q, k and v projections give
    u8 results that reach it through reshapes and permutes; the CPU session matches the
    reference interpreter bit for bit; attention=false keeps the float attention."""
    graph, optimized, batches = optimized_case(name, batch=3, count=4)
    manager = PassManager("quantize", data={"calibration": batches})
    quantized = manager.run(optimized.copy())
    attentions = [n for n in quantized.nodes if n.op == "qattention"]
    assert attentions and not any(n.op == "attention" for n in quantized.nodes)
    assert manager.report.records[0].stats["attentions-quantized"] == len(attentions)
    if name == "bert_encoder":
        for q in attentions[0].operands[:3]:
            while q.producer.op in ("reshape", "permute"):
                q = q.producer.operands[0]
            assert q.producer.op == "qlinear" and q.type.dtype == DType.u8
    expected, actual = interpret(optimized, batches[0]), interpret(quantized, batches[0])
    for output_name in graph.output_names:
        assert cosine(actual[output_name], expected[output_name]) >= 0.99
    # the native kernel on the interpreter's own operands gives the reference's values exactly
    values = interpret(quantized, batches[1], keep_intermediates=True)["values"]
    for node in attentions:
        operands = [None if x is None else values[x] for x in node.operands]
        native = KERNELS["qattention"](operands, {"scale": node.attrs["scale"]},
                                       [None if x is None else x.type for x in node.operands])
        np.testing.assert_array_equal(native, values[node.result])
    session = nimbus.compile(quantized).session()
    outputs = session.run(batches[1])
    for output_name, value in zip(quantized.output_names, quantized.outputs):
        np.testing.assert_allclose(outputs[output_name], values[value], rtol=1e-4, atol=1e-5)
    kept = run_passes(optimized, "quantize{attention=false}", calibration=batches)
    assert any(n.op == "attention" for n in kept.nodes)
    assert not any(n.op == "qattention" for n in kept.nodes)
    from nimbus.compiler.lowering import int8_advice

    advice = [row for row in int8_advice(quantized, isas=["avx2", "portable"])
              if row["op"] == "qattention"]
    assert len(advice) == len(attentions) and advice[0]["layer"].startswith("attention at ")
    assert "no VNNI/AMX on this CPU" in advice[0]["reasons"] and advice[0]["int8"]
    # CUDA has no integer attention: its default pipeline keeps attention in float
    for_cuda = nimbus.compile(graph, calibration=batches, target="cuda").graph
    assert not any(n.op == "qattention" for n in for_cuda.nodes)
    assert any(n.op == "qlinear" for n in for_cuda.nodes)


def test_subnormal_weights_quantize_to_zeros_with_a_valid_scale():
    from nimbus.passes.quantize import weight_params

    weight = np.zeros((3, 4), np.float32)
    weight[0, 1] = np.float32(1e-45)   # peak / 127 rounds to 0 in float32
    weight[1, 2] = np.float32(-2.5)
    quant = weight_params(weight)
    assert quant.scale[0] == 1.0 and quant.scale[2] == 1.0
    assert quant.scale[1] == pytest.approx(2.5 / 127)


def test_layers_whose_scales_overflow_float32_stay_float():
    """Huge weights behind huge activations give integer multipliers (s_in * s_w) past float32's
    range, which the integer kernels refuse: such a layer stays float, and the model compiles
    and runs as the interpreter does (found by running random graphs through the runtime)."""
    graph = nimbus.parse_ir("""
graph @0(%x: f32[N,1,3,4]) -> (output: f32[N,1,3,5]) {
  const @a: f32[1,4] = [0.0, 0.0, 0.0, 3.2265205e+16]
  const @b: f32[1,1,1,1] = [3.4951243e+16]
  const @c: f32[5,2] = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.4854013e+09]
  %1 = linear(%x, @a) : f32[N,1,3,1]
  %2 = conv2d(%1, @b) {padding=[0, 0, 0, 1]} : f32[N,1,3,2]
  %3 = linear(%2, @c) : f32[N,1,3,5]
  return %3
}""")
    rng = np.random.default_rng(0)
    batches = [{"x": rng.standard_normal((2, 1, 3, 4)).astype(np.float32)} for _ in range(2)]
    manager = PassManager("quantize", data={"calibration": batches})
    quantized = manager.run(graph.copy())
    assert manager.report.records[0].stats["kept-float: its scales overflow float32"] == 1
    assert [n.op for n in quantized.nodes].count("linear") == 1
    session = nimbus.load(nimbus.compile(quantized).data)
    expected = interpret(quantized, batches[0])["output"]
    np.testing.assert_array_equal(session.run(batches[0])["output"], expected)


def test_layers_whose_bias_overflows_int32_stay_float():
    """A bias far beyond s_in * s_w * 2^31 (GoogLeNet's classifier with random weights, fed
    inputs near 1e-13) was clipped to int32: the int8 model lost its answer (cosine 0.0 against
    float). Such a layer stays float; the others still quantize."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    with torch.no_grad():
        model[0].weight.mul_(1e-12)
        model[0].bias.zero_()
        model[2].bias.copy_(torch.tensor([0.5, -0.25, 0.125, 1.0]))
    graph = from_torch(model.eval(), (torch.randn(2, 8),))
    rng = np.random.default_rng(0)
    batches = [{graph.inputs[0].name: rng.standard_normal((4, 8)).astype(np.float32)}
               for _ in range(3)]
    manager = PassManager("quantize", data={"calibration": batches})
    quantized = manager.run(run_passes(graph, DEFAULT_OPTIMIZATION))
    stats = manager.report.records[0].stats
    assert stats["kept-float: its bias overflows int32 at the input's scale"] == 1
    assert [n.op for n in quantized.nodes if n.op in ("linear", "qlinear")] == ["qlinear",
                                                                                "linear"]
    expected = model(torch.from_numpy(batches[0][graph.inputs[0].name])).detach().numpy()
    actual = interpret(quantized, batches[0])[graph.output_names[0]]
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("activations", ["u8", "i8"])
def test_attention_and_a_later_layer_on_one_input_share_its_quantize(activations):
    """The layers are rewritten before the attentions, so x's quantize went in before the linear
    layer, after the attention that reads it too: the graph used a value before defining it
    (found by running random graphs through the runtime)."""
    graph = nimbus.parse_ir("""
graph @g(%x: f32[N,1,3,4]) -> (y: f32[N,1,3,4], z: f32[N,1,3,5]) {
  const @w: f32[5,4] = external
  %1 = attention(%x, %x, %x) : f32[N,1,3,4]
  %2 = linear(%x, @w) : f32[N,1,3,5]
  return %1, %2
}""", {"w": np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)})
    rng = np.random.default_rng(1)
    batches = [{"x": rng.standard_normal((2, 1, 3, 4)).astype(np.float32)} for _ in range(2)]
    quantized = run_passes(graph, f"quantize{{activations={activations}}}",
                           calibration=batches)
    assert [n.op for n in quantized.nodes] == ["quantize", "qattention", "qlinear"]
    expected = interpret(graph, batches[0])
    actual = interpret(quantized, batches[0])
    for name in ("y", "z"):
        assert cosine(actual[name], expected[name]) > 0.99
