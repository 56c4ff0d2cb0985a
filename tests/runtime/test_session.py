"""Compile -> artifact -> Session: every test model runs from its artifact as the reference
interpreter runs its graph, float within 1e-5 of torch, int8 bit for bit; one artifact serves
any batch; bad inputs and hostile plans get named errors; concurrent runs stay correct."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from checks import assert_matches, run_concurrently
from digits import digit_images, top1, trained_lenet
from models.cases import CASES, converted

import nimbus
from nimbus.compiler.interpreter import interpret
from nimbus.compiler.lowering import PreflightError, lower
from nimbus.runtime.artifact import ArtifactError, read_artifact, write_artifact
from nimbus.runtime.session import Session, SessionError


def feeds_of(graph, inputs) -> dict:
    return {value.name: tensor.numpy() for value, tensor in zip(graph.inputs, inputs)}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_model_runs_from_its_artifact_like_the_interpreter(name):
    model, graph = converted(name)
    compiled = nimbus.compile(graph)
    session = compiled.session()
    for batch in (1, 4):
        inputs = CASES[name].make_inputs(torch.Generator().manual_seed(batch), batch)
        feeds = feeds_of(graph, inputs)
        actual = session.run(feeds)
        expected = interpret(compiled.graph, feeds)
        assert list(actual) == list(expected)
        for key in expected:
            assert_matches(actual[key], expected[key], f"{name} {key} batch {batch}", rtol=1e-5)
        # The second run of a shape is one native call where the plan allows (native_plan.py).
        again = session.run(feeds)
        for key in expected:
            np.testing.assert_array_equal(again[key], actual[key], err_msg=f"{name} {key} again")
        with torch.no_grad():
            reference = model(*inputs)
        reference = list(reference) if isinstance(reference, tuple) else [reference]
        for key, torch_out in zip(actual, reference):
            assert_matches(actual[key], torch_out.numpy(), f"{name} vs torch", rtol=1e-4)


def test_int8_artifact_is_bit_exact_with_the_interpreter_and_accurate():
    train_x, _, test_x, test_y = digit_images()
    model = trained_lenet()
    compiled = nimbus.compile(model, (torch.from_numpy(test_x[:1]),),
                              calibration=[train_x[i:i + 64] for i in range(0, 512, 64)])
    assert any(n.op == "qconv2d" for n in compiled.graph.nodes)
    session = Session(compiled.data)
    actual = session.run({"x": test_x})["output"]
    np.testing.assert_array_equal(actual, interpret(compiled.graph, {"x": test_x})["output"])
    with torch.no_grad():
        float_top1 = top1(model(torch.from_numpy(test_x)).numpy(), test_y)
    print(f"\ndigits: float {float_top1:.2f}%, int8 artifact {top1(actual, test_y):.2f}%, "
          f"{len(compiled.data)} bytes")
    assert top1(actual, test_y) >= float_top1 - 1.0


def test_metadata_and_input_errors_name_the_problem(tmp_path):
    _, graph = converted("lenet")
    path = nimbus.compile(graph).save(tmp_path / "lenet.nimbus")
    session = nimbus.load(path)
    assert [(s.name, s.dtype, s.shape) for s in session.inputs] == [("x", "f32", ("N", 3, 32, 32))]
    assert [(s.name, s.shape) for s in session.outputs] == [("output", ("N", 10))]
    good = np.zeros((2, 3, 32, 32), np.float32)
    with pytest.raises(SessionError, match=r"missing \['x'\], unexpected \['y'\]"):
        session.run({"y": good})
    with pytest.raises(SessionError, match="input 'x' must be f32 .* got float64"):
        session.run({"x": good.astype(np.float64)})
    with pytest.raises(SessionError, match="input 'x' must have shape"):
        session.run({"x": good[0]})
    with pytest.raises(SessionError, match="axis 2 .*expected 32, got 31"):
        session.run({"x": np.zeros((2, 3, 31, 32), np.float32)})


def test_scalar_inputs_and_results_keep_their_shape():
    """0-d tensors stay 0-d through the executor and the native plan, quantized ones too
    (numpy's ascontiguousarray made them 1-d)."""
    graph = nimbus.parse_ir("""
graph @g(%x: f32[3], %y: f32[]) -> (total: f32[], code: u8[]{scale=0.5, zp=3}, back: f32[]) {
  %1 = sum(%x) {axes=[0]} : f32[]
  %2 = add(%1, %y) : f32[]
  %3 = quantize(%2) {dtype=u8, scale=[0.5], zero_point=[3]} : u8[]{scale=0.5, zp=3}
  %4 = dequantize(%3) : f32[]
  return %2, %3, %4
}""")
    session = nimbus.load(nimbus.compile(graph, pipeline="").data)
    feeds = {"x": np.array([0.3, 0.4, 1.0], np.float32), "y": np.array(0.25, np.float32)}
    expected = interpret(graph, feeds)
    for _ in range(2):  # the executor, then the native plan
        outputs = session.run(feeds)
        for name in ("total", "code", "back"):
            assert outputs[name].shape == () and outputs[name].dtype == expected[name].dtype
            np.testing.assert_allclose(outputs[name], expected[name], rtol=1e-6)


def test_concurrent_runs_from_several_threads_are_correct():
    _, graph = converted("resnet_basic_block")
    session = nimbus.compile(graph).session()
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((b, 16, 16, 16)).astype(np.float32) for b in (1, 2, 3, 5)]
    expected = [session.run({"x": x}) for x in batches]
    failures = []

    def worker(index: int):
        for _ in range(5):
            got = session.run({"x": batches[index]})
            if not all(np.array_equal(got[k], expected[index][k]) for k in got):
                failures.append(index)

    run_concurrently(worker, len(batches))
    assert not failures


def test_preflight_lists_ops_without_a_kernel_for_the_target():
    _, graph = converted("transformer_post_norm")
    dynamic = nimbus.run_passes(graph, "canonicalize,fuse,quantize{mode=dynamic}")
    with pytest.raises(PreflightError, match=r"(?s)no cuda kernel for 1 op.*dynamic_qlinear: used at "
                                             r".*transformer.py"):
        lower(dynamic, "cuda")
    with pytest.raises(ValueError, match="unknown target 'tpu'"):
        lower(graph, "tpu")
    compiled = nimbus.compile(converted("lenet")[1], target="cuda")
    assert compiled.summary()["torch_ops"] == ["max_pool2d", "reshape"]
    assert read_artifact(compiled.data).plan["tuning"]["format"] == 1


def test_memory_plan_is_reported_in_the_manifest():
    _, graph = converted("small_resnet")
    manifest = read_artifact(nimbus.compile(graph).data).manifest
    memory = manifest["memory"]
    assert 0 < memory["peak_activation_bytes_batch_1"] < memory["unshared_activation_bytes_batch_1"]


def hostile_plan(edit) -> bytes:
    _, graph = converted("lenet")
    artifact = read_artifact(nimbus.compile(graph, compression="raw").data)
    plan = json.loads(json.dumps(artifact.plan))
    edit(plan)
    return write_artifact({k: v for k, v in artifact.manifest.items() if k != "format_version"},
                          plan, {k: np.asarray(v) for k, v in artifact.tensors.items()})


@pytest.mark.parametrize("edit, message", [
    (lambda p: p.update(format=9), "plan format 1"),
    (lambda p: p["steps"][0].update(op="system"), "no kernel for op 'system'"),
    (lambda p: p["steps"][0].update(operands=[10 ** 6]), "outside"),
    (lambda p: p["steps"][1].update(operands=[p["values"] - 1]), "no earlier step writes"),
    (lambda p: p["constants"][0].update(tensor="nope"), "not among the artifact's tensors"),
    (lambda p: p["steps"][0]["types"][0].update(dtype="object"), "unknown dtype"),
    (lambda p: p["steps"][0]["types"][0].update(shape=["__import__('os')"]), "not a symbolic dim"),
    (lambda p: p.pop("steps"), "invalid plan"),
    (lambda p: p["outputs"][0].update(value=p["inputs"][0]["value"] + 10 ** 3), "outside"),
])
def test_hostile_plans_are_refused_when_loading(edit, message):
    with pytest.raises(ArtifactError, match=message):
        Session(hostile_plan(edit))


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
def test_hostile_attributes_of_prepared_int8_steps_are_refused_when_loading():
    _, graph = converted("lenet")
    calibration = [{"x": np.random.default_rng(i).standard_normal((4, 3, 32, 32), np.float32)}
                   for i in range(2)]
    artifact = read_artifact(nimbus.compile(graph, calibration=calibration).data)
    tensors = {k: np.asarray(v) for k, v in artifact.tensors.items()}
    manifest = {k: v for k, v in artifact.manifest.items() if k != "format_version"}
    for edit in ({"activation": "relu6", "scale": 0.0}, {"groups": 0}, {"stride": "x"},
                 {"zero_point": 10 ** 30}):
        plan = json.loads(json.dumps(artifact.plan))
        step = next(s for s in plan["steps"] if s["op"] == "qconv2d")
        step["attrs"].update(edit)
        try:
            Session(write_artifact(manifest, plan, tensors)).run(
                {"x": np.zeros((1, 3, 32, 32), np.float32)})
        except ArtifactError as err:
            assert "invalid plan" in str(err) or "qconv2d" in str(err), edit
        except RuntimeError as err:  # refused when the step runs, naming it
            assert "qconv2d failed" in str(err), edit


def test_int8_advice_names_why_int8_may_not_pay_off():
    from nimbus.compiler.lowering import int8_advice

    train_x, _, test_x, _ = digit_images()
    compiled = nimbus.compile(trained_lenet(), (torch.from_numpy(test_x[:1]),),
                              calibration=[train_x[:64]])
    rows = {row["layer"]: row for row in int8_advice(compiled.graph, isas=["avx2", "portable"])}
    assert all("no VNNI/AMX on this CPU" in row["reasons"] for row in rows.values())
    conv = next(row for row in rows.values() if row["op"] == "qconv2d")
    assert "layout change NCHW <-> NHWC around the int8 kernel" in conv["reasons"]
    fc3 = next(row for name, row in rows.items() if name.startswith("fc3"))
    assert any(reason.startswith("tiny layer") for reason in fc3["reasons"])
    torch.manual_seed(0)
    wide = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
    rng = np.random.default_rng(0)
    calibration = [rng.standard_normal((16, 512)).astype(np.float32) for _ in range(2)]
    wide_int8 = nimbus.compile(wide.eval(), (torch.zeros(1, 512),), calibration=calibration)
    verdicts = [row["int8_expected_faster"]
                for row in int8_advice(wide_int8.graph, isas=["avx512_vnni", "avx2", "portable"])]
    assert verdicts == [True, False]  # 262k MACs pay off; the 5k-MAC classifier does not


def test_thread_count_reaches_the_native_kernels_and_results_do_not_depend_on_it(monkeypatch):
    from nimbus.runtime.cpu_ops import quant

    train_x, _, test_x, _ = digit_images()
    compiled = nimbus.compile(trained_lenet(), (torch.from_numpy(test_x[:1]),),
                              calibration=[train_x[:64]])
    seen = []

    def spy_on(name, threads_at):
        original = getattr(quant._kernels, name)

        def spy(*args):  # the runtime passes every argument by position
            seen.append(args[threads_at])
            return original(*args)

        monkeypatch.setattr(quant._kernels, name, spy)

    # x, packed, zero point, bias, 5 of the epilogue, 3 of geometry (and 5 of the pooling's):
    # LeNet's convolutions run fused with the poolings after them.
    spy_on("qconv2d", 12)
    spy_on("qconv2d_max_pool2d", 17)
    one = Session(compiled.data, threads=1).run({"x": test_x[:16]})["output"]
    two = Session(compiled.data, threads=2).run({"x": test_x[:16]})["output"]
    np.testing.assert_array_equal(one, two)
    assert seen == [1, 1, 2, 2]
    assert Session(compiled.data).threads >= 1
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        Session(compiled.data, threads=0)
