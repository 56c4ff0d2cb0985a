"""The CUDA backend (nimbus.runtime.cuda) against the CPU backend: the same artifact run by
`Session(data)` and `Session(data, target="cuda")` gives the same outputs, integer paths bit for
bit and float within 1e-4. Without a GPU the Triton kernels run on the CPU through Triton's
interpreter (TRITON_INTERPRET=1, set below before anything imports triton)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest
from models.cases import CASES, converted
from nimbus.runtime.artifact import ArtifactError, read_artifact
from nimbus.runtime.cuda import CudaSession, CudaUnsupportedError
from nimbus.runtime.session import Session
from torch import nn

import nimbus

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def feeds_for(name: str, graph, batch: int, seed: int = 0) -> dict:
    inputs = CASES[name].make_inputs(torch.Generator().manual_seed(seed), batch)
    return {value.name: tensor.numpy() for value, tensor in zip(graph.inputs, inputs)}


def random_calibration(name: str, graph, batches: int = 2) -> list[dict]:
    return [feeds_for(name, graph, 4, seed=100 + i) for i in range(batches)]


def assert_same(data: bytes, feeds: dict, exact: bool) -> CudaSession:
    cpu, cuda = Session(data), Session(data, target="cuda")
    assert isinstance(cuda, CudaSession) and isinstance(cuda, Session)
    expected, actual = cpu.run(feeds), cuda.run(feeds)
    assert list(actual) == list(expected)
    for key in expected:
        assert actual[key].dtype == expected[key].dtype and actual[key].shape == expected[key].shape
        if exact:
            np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)
        else:
            np.testing.assert_allclose(actual[key], expected[key], rtol=1e-4, atol=1e-6, err_msg=key)
    return cuda


@pytest.mark.parametrize("name", ["lenet", "resnet_basic_block", "bert_encoder",
                                  "segmentation_head"])
def test_float_models_match_the_cpu_backend(name):
    _, graph = converted(name)
    data = nimbus.compile(graph).data
    session = assert_same(data, feeds_for(name, graph, 2), exact=False)
    assert any(v.startswith("triton:") for v in session.kernel_table().values())


@pytest.mark.parametrize("name", ["lenet", "resnet_basic_block"])
def test_int8_models_are_bit_exact_with_the_cpu_backend(name):
    _, graph = converted(name)
    compiled = nimbus.compile(graph, calibration=random_calibration(name, graph))
    assert any(n.op == "qconv2d" for n in compiled.graph.nodes)
    for batch in (1, 2):  # one artifact, any batch (symbolic N)
        session = assert_same(compiled.data, feeds_for(name, graph, batch, seed=batch), exact=True)
    table = session.kernel_table()
    assert table["quantize"] == "triton:quantize.quantize"
    assert table["qconv2d"].startswith("triton:conv.qconv2d")
    if name == "lenet":
        assert table["qlinear"] == "triton:gemm.qgemm"
        assert table["max_pool2d"] == "torch"
        assert session.torch_ops() == {"layout": ["reshape"], "fallback": ["max_pool2d"]}


def test_kernel_table_and_load_through_the_public_api(tmp_path):
    _, graph = converted("lenet")
    path = nimbus.compile(graph).save(tmp_path / "lenet.nimbus")
    session = nimbus.load(path, target="cuda")
    assert isinstance(session, CudaSession)
    assert session.kernel_table() == {
        "fused_conv2d": "triton:conv.conv2d", "max_pool2d": "torch", "reshape": "torch",
        "fused_linear": "triton:gemm.gemm", "linear": "triton:gemm.gemm"}
    assert [(s.name, s.shape) for s in session.inputs] == [("x", ("N", 3, 32, 32))]
    with pytest.raises(ValueError, match="not available"):
        Session(path, target="tpu")


def test_run_device_keeps_tensors_on_the_device_and_checks_them():
    from nimbus.runtime.session import SessionError

    _, graph = converted("lenet")
    session = Session(nimbus.compile(graph).data, target="cuda")
    x = torch.randn(2, 3, 32, 32)
    expected = session.run({"x": x.numpy()})
    outputs = session.run_device({"x": x})
    assert list(outputs) == list(expected)
    for name, tensor in outputs.items():
        assert isinstance(tensor, torch.Tensor) and tensor.device == session.device
        np.testing.assert_array_equal(tensor.numpy(), expected[name])
    for feeds, message in [({"x": x.numpy()}, "must be a torch.Tensor"),
                           ({"x": x.double()}, "must be f32"),
                           ({"x": x[:, :2]}, "axis 1"),
                           ({"y": x}, "missing")]:
        with pytest.raises(SessionError, match=message):
            session.run_device(feeds)


def test_profile_reports_every_step_in_plan_order():
    from nimbus.runtime.session import SessionError

    _, graph = converted("lenet")
    session = Session(nimbus.compile(graph).data, target="cuda")
    rows = session.profile({"x": torch.randn(2, 3, 32, 32)}, repeats=2)
    assert [row["op"] for row in rows] == [step.op for step in session._steps]
    table = session.kernel_table()
    for row in rows:
        assert row["launcher"] in table[row["op"]].split(" | ")
        assert row["ms"] >= 0 and row["source"] is not None
    with pytest.raises(ValueError, match="repeats"):
        session.profile({"x": torch.randn(2, 3, 32, 32)}, repeats=0)
    with pytest.raises(SessionError, match="must be a torch.Tensor"):
        session.profile({"x": np.zeros((2, 3, 32, 32), np.float32)})


def test_run_device_results_never_alias_inputs_or_session_constants():
    class Passthrough(nn.Module):
        def forward(self, x):
            return x.reshape(x.shape[0], -1), x

    compiled = nimbus.compile(Passthrough().eval(), (torch.randn(2, 3, 4),))
    session = Session(compiled.data, target="cuda")
    x = torch.randn(2, 3, 4)
    for tensor in session.run_device({"x": x}).values():
        tensor.zero_()
    assert torch.count_nonzero(x) == x.numel()


def test_gather_indices_are_checked_before_the_run_naming_the_input():
    """Token ids feed the embedding gather: their range is checked on the input (where a CUDA
    graph replay needs it), and the error names the input."""
    _, graph = converted("bert_encoder")
    session = Session(nimbus.compile(graph).data, target="cuda")
    feeds = feeds_for("bert_encoder", graph, 2)
    ids = next(name for name, array in feeds.items() if array.max() > 1)
    position = [spec.name for spec in session.inputs].index(ids)
    vocabulary = session._index_bounds[position]
    assert vocabulary > feeds[ids].max()
    feeds[ids] = feeds[ids].copy()
    feeds[ids][1, 0] = vocabulary
    with pytest.raises(IndexError, match=f"input '{ids}' holds a gather index out of range"):
        session.run(feeds)
    feeds[ids][1, 0] = -vocabulary  # negative indices count from the end, as in numpy
    np.testing.assert_allclose(session.run(feeds)[session.outputs[0].name],
                               Session(nimbus.compile(graph).data).run(feeds)[session.outputs[0].name],
                               rtol=1e-4, atol=1e-5)


def test_computed_gather_indices_keep_the_session_eager():
    class ComputedIndices(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Embedding(10, 4)

        def forward(self, ids):
            return self.table(ids * 2)

    compiled = nimbus.compile(ComputedIndices().eval(), (torch.tensor([[1, 2]]),))
    session = Session(compiled.data, target="cuda")
    assert session._index_bounds is None
    with pytest.raises(RuntimeError, match="gather index out of range"):
        session.run({session.inputs[0].name: np.array([[1, 7]], np.int64)})


def test_a_plan_with_ops_without_kernels_is_refused_listing_them():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    compiled = nimbus.compile(model, (torch.randn(2, 8),), pipeline="canonicalize,quantize{mode=dynamic}")
    assert any(n.op == "dynamic_qlinear" for n in compiled.graph.nodes)
    Session(compiled.data).run({"input": np.zeros((2, 8), np.float32)})  # the CPU runs it
    with pytest.raises(CudaUnsupportedError, match="dynamic_qlinear") as refused:
        Session(compiled.data, target="cuda")
    assert set(refused.value.missing) == {"dynamic_qlinear"}
    assert "no Triton kernel and no torch fallback" in str(refused.value)


def test_single_elementwise_ops_render_canonical_one_op_regions():
    from nimbus.compiler.ops.fused import parse_expr
    from nimbus.runtime.cuda.launchers import single_op_expr

    cases = {
        ("add", (), 2): "add($0,$1)",
        ("clamp", (("min", 0.0), ("max", None)), 1): "clamp[min=0.0]($0)",
        ("clamp", (("min", -1), ("max", 6.5)), 1): "clamp[min=-1.0,max=6.5]($0)",
        ("gelu", (("approximate", "tanh"),), 1): "gelu[approximate=tanh]($0)",
        ("gelu", (("approximate", "none"),), 1): "gelu($0)",
        ("cast", (("dtype", "f32"),), 1): "cast[dtype=f32]($0)",
        ("where", (), 3): "where($0,$1,$2)",
    }
    for (op, attrs, count), text in cases.items():
        rendered = single_op_expr(op, dict(attrs), count)
        assert rendered == text
        assert str(parse_expr(rendered, count)) == rendered  # the compiler's canonical form


def test_tuning_data_in_the_artifact_is_merged_and_validated():
    from nimbus.kernels.triton import autotune
    from nimbus.kernels.triton.gemm import QGEMM_SPACE

    _, graph = converted("resnet_basic_block")
    artifact = read_artifact(nimbus.compile(graph).data)
    best = QGEMM_SPACE[2]
    tuning = {"format": 1, "devices": {"Test GPU": {"qgemm": {"7x8x9-test": best.to_json()}}}}
    CudaSession(dataclasses.replace(artifact, manifest={**artifact.manifest, "tuning": tuning}))
    assert autotune.cache().get("Test GPU", "qgemm", "7x8x9-test") == best
    bad = {"format": 1, "devices": {"Test GPU": {"qgemm": {"k": {"BLOCK_M": 3, "num_warps": 1,
                                                                  "num_stages": 1}}}}}
    with pytest.raises(ArtifactError, match="invalid tuning data"):
        CudaSession(dataclasses.replace(artifact, manifest={**artifact.manifest, "tuning": bad}))


def test_importing_the_runtime_and_the_cuda_backend_imports_neither_torch_nor_triton():
    code = ("import sys, nimbus, nimbus.runtime, nimbus.runtime.session, nimbus.runtime.cuda\n"
            "heavy = sorted(m for m in ('torch', 'triton', 'nimbus.compiler') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_int8_gelu_layer_quantizes_after_its_activation():
    """A qlinear that applies GELU and then quantizes (the BERT FFN) runs as the Triton qgemm's
    f32 epilogue with the activation, then the quantize kernel. GELU's float rounding differs
    between the backends, so a value may land one quantization step apart."""
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8)).eval()
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((4, 16)).astype(np.float32) for _ in range(2)]
    compiled = nimbus.compile(model, (torch.from_numpy(batches[0]),), calibration=batches)
    assert any(n.op == "qlinear" and n.attrs["activation"] == "gelu"
               and str(n.attrs["dtype"]) == "u8" for n in compiled.graph.nodes)
    cpu, cuda = Session(compiled.data), Session(compiled.data, target="cuda")
    feeds = {cpu.inputs[0].name: rng.standard_normal((3, 16)).astype(np.float32)}
    (expected,), (actual,) = cpu.run(feeds).values(), cuda.run(feeds).values()
    np.testing.assert_allclose(actual, expected, atol=0.02 * np.abs(expected).max())
    assert cuda.kernel_table()["qlinear"] == "triton:gemm.qgemm"


def test_int8_silu_convolution_quantizes_after_its_activation():
    """A qconv2d that applies SiLU and then quantizes (EfficientNet's convolutions, a depthwise
    one too) runs as the Triton convolution's f32 epilogue with the activation, then the
    quantize kernel; a value may land one quantization step from the CPU's."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.SiLU(),
                          nn.Conv2d(8, 4, 1)).eval()
    rng = np.random.default_rng(1)
    batches = [rng.standard_normal((2, 3, 6, 7)).astype(np.float32) for _ in range(2)]
    compiled = nimbus.compile(model, (torch.from_numpy(batches[0]),), calibration=batches)
    assert [str(n.attrs["dtype"]) for n in compiled.graph.nodes
            if n.op == "qconv2d" and n.attrs["activation"] == "silu"] == ["u8", "u8"]
    cpu, cuda = Session(compiled.data), Session(compiled.data, target="cuda")
    feeds = {cpu.inputs[0].name: rng.standard_normal((3, 3, 6, 7)).astype(np.float32)}
    (expected,), (actual,) = cpu.run(feeds).values(), cuda.run(feeds).values()
    np.testing.assert_allclose(actual, expected, atol=0.05 * np.abs(expected).max())
    assert cuda.kernel_table()["qconv2d"] == "triton:conv.qconv2d_f32"
