"""Kernels prepared once per plan step when a Session loads (registry.PREPARERS): they give
the very results of the kernels run from scratch, float and int8, with residuals and fused
activations; they decline what they do not handle, and the step then runs its kernel. Float
inverted residual blocks, convolutions with the max pooling of their results, channel
concatenations with the per-channel expression that reads them (DenseNet), and channel shuffles
of concatenations (ShuffleNet) become one step (cpu_ops.blocks) with the results of their
layers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from checks import assert_matches
from models.cases import CASES, converted, randomize_batch_norm
from models.mobilenet import InvertedResidual
from torch import nn

import nimbus
from nimbus.runtime.cpu_ops import KERNELS, blocks
from nimbus.runtime.cpu_ops.info import TensorInfo
from nimbus.runtime.cpu_ops import quant as runtime_quant
from nimbus.runtime.cpu_ops.quant import qlinear_reference
from nimbus.runtime.cpu_ops.registry import PREPARERS, RUNTIME
from nimbus.runtime.session import Session


def feeds_for(name: str, graph, batch: int, seed: int) -> dict:
    inputs = CASES[name].make_inputs(torch.Generator().manual_seed(seed), batch)
    return {value.name: tensor.numpy() for value, tensor in zip(graph.inputs, inputs)}


def run_unprepared(session: Session, feeds: dict) -> dict:
    """The session's plan with every step's kernel run from scratch, on the executor."""
    saved = session._steps, session._native_plans, session._native_plan_limit
    session._steps = [dataclasses.replace(step, prepared=None) for step in saved[0]]
    session._native_plans, session._native_plan_limit = {}, 0
    try:
        return session.run(feeds)
    finally:
        session._steps, session._native_plans, session._native_plan_limit = saved


@pytest.mark.parametrize("int8", [False, True])
@pytest.mark.parametrize("name", ["lenet", "small_resnet", "mobilenet_v2_block", "bert_encoder"])
def test_prepared_steps_give_the_results_of_the_kernels(name, int8):
    _, graph = converted(name)
    calibration = [feeds_for(name, graph, 4, seed) for seed in (100, 101)] if int8 else None
    session = nimbus.compile(graph, calibration=calibration).session()
    prepared = {step.op for step in session._steps if step.prepared is not None}
    layers = {"qconv2d", "qlinear"} if int8 else {"fused_conv2d", "fused_linear", "linear",
                                                   "inverted_residual"}
    assert prepared & layers, f"no layer of {name} was prepared: {prepared}"
    assert prepared <= set(PREPARERS) | {"inverted_residual", "qconv2d_max_pool2d",
                                         "conv2d_max_pool2d", "concat_elementwise",
                                         "channel_shuffle"}
    for batch in (1, 3):
        feeds = feeds_for(name, graph, batch, seed=batch)
        actual, expected = session.run(feeds), run_unprepared(session, feeds)
        for key in expected:
            np.testing.assert_array_equal(actual[key], expected[key], err_msg=f"{name} {key}")


def quant_info(dtype: str, shape, scale, zero_point, axis=None) -> TensorInfo:
    scale = tuple(float(s) for s in np.atleast_1d(scale))
    zero_point = tuple(int(z) for z in np.atleast_1d(zero_point))
    return TensorInfo(dtype, tuple(shape), scale, zero_point, axis)


def qlinear_case(rng, activation="none", dtype="u8", with_residual=False):
    x = rng.integers(0, 256, (5, 24), dtype=np.uint8)
    w = rng.integers(-127, 128, (7, 24), dtype=np.int8)
    w.flags.writeable = False  # a plan constant
    bias = rng.integers(-500, 500, 7).astype(np.int32)
    residual = rng.integers(0, 256, (5, 7), dtype=np.uint8) if with_residual else None
    types = [quant_info("u8", x.shape, 0.02, 120), quant_info("i8", w.shape, np.full(7, 0.01), np.zeros(7), 0),
             TensorInfo("i32", (7,)),
             quant_info("u8", (5, 7), 0.05, 128) if with_residual else None]
    attrs = {"dtype": dtype, "activation": activation,
             "scale": None if dtype == "f32" else 0.04, "zero_point": 0 if dtype == "f32" else 10}
    return [x, w, bias, residual], attrs, types


@pytest.mark.parametrize("activation, dtype, with_residual", [
    ("relu", "u8", True), ("relu6", "i8", False), ("gelu", "u8", False), ("silu", "f32", True),
    ("none", "f32", False),
    # Not a plan the compiler writes (the op refuses it): the numpy epilogue finishes it exactly.
    ("gelu", "u8", True),
])
def test_a_prepared_qlinear_matches_the_reference(activation, dtype, with_residual):
    operands, attrs, types = qlinear_case(np.random.default_rng(3), activation, dtype,
                                          with_residual)
    constants = [RUNTIME, operands[1], operands[2], RUNTIME if with_residual else None]
    run = PREPARERS["qlinear"](attrs, types, constants)
    assert run is not None
    np.testing.assert_array_equal(run(operands)[0], qlinear_reference(operands, attrs, types))
    np.testing.assert_array_equal(KERNELS["qlinear"](operands, attrs, types),
                                  qlinear_reference(operands, attrs, types))


def test_preparers_decline_weights_they_cannot_pack():
    operands, attrs, types = qlinear_case(np.random.default_rng(4))
    w, bias = operands[1], operands[2]
    assert PREPARERS["qlinear"](attrs, types, [RUNTIME, RUNTIME, bias, None]) is None
    assert PREPARERS["qlinear"](attrs, types, [RUNTIME, w, RUNTIME, None]) is None
    asymmetric = types[:1] + [quant_info("i8", w.shape, np.full(7, 0.01), np.arange(7), 0)] + types[2:]
    assert PREPARERS["qlinear"](attrs, asymmetric, [RUNTIME, w, bias, None]) is None
    half = np.ones((4, 3), np.float16)
    assert PREPARERS["fused_linear"]({"activation": "relu"}, [None] * 4,
                                     [RUNTIME, half, None, None]) is None


def test_a_prepared_float_layer_declines_other_input_dtypes_and_the_kernel_runs():
    w = np.random.default_rng(5).standard_normal((4, 6)).astype(np.float32)
    w.flags.writeable = False
    run = PREPARERS["fused_linear"]({"activation": "relu"}, [None] * 4, [RUNTIME, w, None, None])
    x16 = np.ones((2, 6), np.float16)
    assert run([x16, w, None, None]) is None
    out = KERNELS["fused_linear"]([x16, w, None, None], {"activation": "relu"}, [None] * 4)
    assert out.dtype == np.float16
    np.testing.assert_allclose(out, np.maximum(x16.astype(np.float32) @ w.T, 0), rtol=1e-3)


@pytest.mark.parametrize("dtype, scale, zero_point, axis", [
    ("u8", 0.05, 128, None), ("i8", np.linspace(0.01, 0.1, 6), np.arange(-3, 3), 2),
    ("u8", np.linspace(0.01, 0.1, 4), np.arange(4), 0)])
def test_a_prepared_dequantize_gives_the_reference(dtype, scale, zero_point, axis):
    rng = np.random.default_rng(7)
    numpy_dtype = np.uint8 if dtype == "u8" else np.int8
    q = rng.integers(np.iinfo(numpy_dtype).min, np.iinfo(numpy_dtype).max + 1, (4, 5, 6),
                     dtype=numpy_dtype)
    types = [quant_info(dtype, q.shape, scale, zero_point, axis)]
    run = PREPARERS["dequantize"]({}, types, [RUNTIME])
    expected = runtime_quant.dequantize_array(q, types[0].quant)
    prepared = run([q])
    if axis == 0:  # per channel along another axis than the last: the numpy path
        assert prepared is None
    else:
        np.testing.assert_array_equal(prepared[0], expected)
    np.testing.assert_array_equal(KERNELS["dequantize"]([q], {}, types), expected)


@pytest.mark.parametrize("shape, axis, with_weight, with_bias", [
    ((3, 5, 7), -1, True, True), ((2, 3, 4, 6), 2, True, False), ((1, 9), 1, False, True),
    ((4, 5), 0, False, False)])
def test_a_prepared_layer_norm_gives_the_kernels_results(shape, axis, with_weight, with_bias):
    rng = np.random.default_rng(6)
    normalized = shape[axis % len(shape):]
    weight = rng.standard_normal(normalized).astype(np.float32) if with_weight else None
    bias = rng.standard_normal(normalized).astype(np.float32) if with_bias else None
    attrs = {"axis": axis, "eps": 1e-5}
    run = PREPARERS["layer_norm"](attrs, [None] * 3, [RUNTIME, weight, bias])
    for batch in (1, 3):  # one prepared step serves every batch
        x = rng.standard_normal((batch,) + shape[1:]).astype(np.float32)
        np.testing.assert_array_equal(run([x, weight, bias])[0],
                                      KERNELS["layer_norm"]([x, weight, bias], attrs, [None] * 3))
    x16 = rng.standard_normal(shape).astype(np.float16)
    assert run([x16, weight, bias]) is None
    assert KERNELS["layer_norm"]([x16, weight, bias], attrs, [None] * 3).dtype == np.float16
    assert PREPARERS["layer_norm"](attrs, [None] * 3, [RUNTIME, RUNTIME, bias]) is None


@pytest.mark.parametrize("expand_ratio, size", [(6, 64), (1, 128)],
                         ids=["expanded", "no expansion"])
def test_inverted_residual_blocks_run_as_one_step_with_the_results_of_their_layers(
        expand_ratio, size, monkeypatch):
    # Without expansion (MobileNetV2's first block) a block is depthwise -> project 1x1.
    torch.manual_seed(0)
    model = nn.Sequential(InvertedResidual(16, 16, stride=1, expand_ratio=expand_ratio),
                          InvertedResidual(16, 24, stride=2, expand_ratio=expand_ratio))
    randomize_batch_norm(model)
    model.eval()
    # Expanded (or the input, without expansion): size x size x 96 (16) floats, past
    # FUSED_MIN_BYTES.
    x = torch.randn(2, 16, size, size)
    session = nimbus.compile(model, (x[:1],)).session()
    session._native_plan_limit = 0  # the executor's steps on both runs (no native plan)
    assert [step.op for step in session._steps] == ["inverted_residual"] * 2
    name = session.inputs[0].name
    fused = session.run({name: x.numpy()})
    monkeypatch.setattr(blocks, "FUSED_MIN_BYTES", 1 << 62)  # the same steps, layer by layer
    for key, layered in session.run({name: x.numpy()}).items():
        np.testing.assert_array_equal(fused[key], layered)
    with torch.no_grad():
        assert_matches(next(iter(fused.values())), model(x).numpy(), "blocks vs torch", rtol=1e-4)


class StemAndPool(nn.Module):
    """ResNet's stem shape at a small size: convolution, batch norm, ReLU, max pooling, and a
    convolution after it; ``also_stem`` returns the stem's result too (a second reader)."""

    def __init__(self, ceil_mode: bool = False, also_stem: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 7, stride=2, padding=3, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=ceil_mode)
        self.head = nn.Conv2d(16, 8, 3, padding=1)
        self.also_stem = also_stem

    def forward(self, x):
        stem = torch.relu(self.bn(self.conv(x)))
        out = self.head(self.pool(stem))
        return (out, stem) if self.also_stem else out


def stem_session(model: nn.Module, shape, int8: bool = True) -> Session:
    torch.manual_seed(0)
    randomize_batch_norm(model)
    rng = np.random.default_rng(0)
    calibration = [rng.standard_normal((2, *shape[1:])).astype(np.float32)
                   for _ in range(3)] if int8 else None
    return nimbus.compile(model.eval(), (torch.randn(shape),), calibration=calibration).session()


@pytest.mark.parametrize("int8", [True, False], ids=["int8", "float"])
@pytest.mark.parametrize("ceil_mode", [False, True], ids=["floor", "ceil"])
def test_a_convolution_and_its_max_pooling_run_as_one_step_with_their_results(
        ceil_mode, int8, monkeypatch):
    session = stem_session(StemAndPool(ceil_mode), (1, 3, 45, 37), int8)
    fused_op = "qconv2d_max_pool2d" if int8 else "conv2d_max_pool2d"
    assert fused_op in [step.op for step in session._steps]
    assert "max_pool2d" not in [step.op for step in session._steps]
    monkeypatch.setattr(blocks, "_is_conv_pool", lambda *args: False)
    unfused = Session(session.artifact)
    assert fused_op not in [step.op for step in unfused._steps]
    name = session.inputs[0].name
    rng = np.random.default_rng(1)
    for batch in (1, 3):
        x = rng.standard_normal((batch, 3, 45, 37)).astype(np.float32)
        expected = unfused.run({name: x})
        # The executor's run traces the native plan, which the second run takes.
        for run in range(2):
            for key, value in session.run({name: x}).items():
                if int8:
                    np.testing.assert_array_equal(value, expected[key], err_msg=f"run {run}")
                else:  # the float GEMM's rounding depends on the rows it runs together
                    np.testing.assert_allclose(value, expected[key], rtol=1e-5, atol=1e-5)
        assert (x.shape,) in session.native_shapes


@pytest.mark.parametrize("int8", [True, False], ids=["int8", "float"])
def test_a_convolution_result_read_by_more_than_the_pooling_is_not_fused(int8):
    session = stem_session(StemAndPool(also_stem=True), (1, 3, 21, 19), int8)
    ops = [step.op for step in session._steps]
    assert "max_pool2d" in ops and not {"qconv2d_max_pool2d", "conv2d_max_pool2d"} & set(ops)


def test_dense_blocks_evaluate_their_batch_norms_over_the_concatenated_values(monkeypatch):
    """DenseNet's concat -> BN -> ReLU: one step per dense layer, transition and the final
    norm, over 1 to 4 values of 8 to 16 channels (the native call's parts in turn, or, from 4
    small ones, across the threads), with the bits of the concatenation and the expression run
    apart."""
    _, graph = converted("small_densenet")
    session = Session(nimbus.compile(graph).data, threads=2)
    ops = [step.op for step in session._steps]
    assert "concat" not in ops and "fused_elementwise" not in ops
    fused = [step for step in session._steps if step.op == "concat_elementwise"]
    assert sorted(len(step.operands) for step in fused) == [1, 1, 2, 2, 3, 3, 4]
    monkeypatch.setattr(blocks, "_is_concat_elementwise", lambda *args: False)
    unfused = Session(session.artifact, threads=2)
    assert "concat_elementwise" not in [step.op for step in unfused._steps]
    for batch in (1, 3):
        feeds = feeds_for("small_densenet", graph, batch, seed=batch)
        expected = unfused.run(feeds)
        for run in range(2):  # the executor, then the native plan that its run traced
            for key, value in session.run(feeds).items():
                np.testing.assert_array_equal(value, expected[key], err_msg=f"run {run}")
        assert (feeds[session.inputs[0].name].shape,) in session.native_shapes


class ConcatReadTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 5, 1)
        self.bn = nn.BatchNorm2d(9)

    def forward(self, x):
        joined = torch.cat([self.a(x), self.b(x)], 1)
        return torch.relu(self.bn(joined)), joined


def test_a_concatenation_read_by_more_than_one_step_is_not_fused():
    model = ConcatReadTwice()
    randomize_batch_norm(model)
    x = torch.randn(2, 3, 5, 6)
    session = nimbus.compile(model.eval(), (x,)).session()
    assert "concat_elementwise" not in [step.op for step in session._steps]
    with torch.no_grad():
        expected = model(x)
    outputs = list(session.run({session.inputs[0].name: x.numpy()}).values())
    for actual, reference in zip(outputs, expected):
        assert_matches(actual, reference.numpy(), "unfused concat", rtol=1e-5)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """torchvision's ShuffleNetV2 channel shuffle."""
    n, c, h, w = x.shape
    x = x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.view(n, c, h, w)


class ShuffleUnits(nn.Module):
    """Two ShuffleNetV2 units (split, a branch, concat, shuffle), then a shuffle of three
    values that do not line up with its two groups."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.branches = nn.ModuleList(nn.Sequential(
            nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU(),
            nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.BatchNorm2d(4),
            nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU()) for _ in range(2))
        self.side = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x = self.stem(x)
        for branch in self.branches:
            x1, x2 = x.chunk(2, dim=1)
            x = channel_shuffle(torch.cat((x1, branch(x2)), dim=1), 2)
        side = self.side(x)
        return channel_shuffle(torch.cat((x[:, :4], side, side + 1), dim=1), 2)


@pytest.mark.parametrize("int8", [False, True], ids=["float", "int8"])
def test_channel_shuffles_of_concatenations_run_as_one_step(int8, monkeypatch):
    model = ShuffleUnits()
    session = stem_session(model, (1, 3, 17, 15), int8)
    ops = [step.op for step in session._steps]
    assert ops.count("channel_shuffle") == 3 and "permute" not in ops
    monkeypatch.setattr(blocks, "_is_channel_shuffle", lambda *args: False)
    unfused = Session(session.artifact)
    assert "channel_shuffle" not in [step.op for step in unfused._steps]
    name = session.inputs[0].name
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 17, 15)).astype(np.float32)
        actual, expected = session.run({name: x}), unfused.run({name: x})
        for key in expected:
            np.testing.assert_array_equal(actual[key], expected[key])
        if not int8:
            with torch.no_grad():
                reference = model(torch.from_numpy(x)).numpy()
            assert_matches(next(iter(actual.values())), reference, "shuffle vs torch", rtol=1e-4)


@pytest.mark.parametrize("op, reference", [("add", np.add), ("sub", np.subtract),
                                           ("mul", np.multiply), ("div", np.divide),
                                           ("maximum", np.maximum), ("minimum", np.minimum)])
def test_float32_binary_ops_run_natively_with_numpys_bits(op, reference):
    """Broadcasting of every rank, 0-d operands, strided and reversed views, NaN, and NCHW
    views of NHWC memory, whose result keeps that memory order; other dtypes and empty operands
    are declined, and the kernel (numpy) runs them."""
    run = PREPARERS[op]({}, [None, None], [RUNTIME, RUNTIME])
    rng = np.random.default_rng(7)

    def randn(*shape):
        return np.asarray(rng.standard_normal(shape), dtype=np.float32)

    nhwc_memory = randn(2, 5, 7, 3).transpose(0, 3, 1, 2)  # [2, 3, 5, 7]
    with_nan = randn(4, 6)
    with_nan[1, 2] = np.nan
    pairs = [(randn(), randn()), (randn(3), randn()), (randn(2, 3, 4, 5, 6), randn(1, 3, 1, 5, 1)),
             (randn(2, 1, 3, 1, 2, 1, 3), randn(1, 2, 1, 3, 1, 2, 1)),
             (randn(6, 8)[::-2, 1::3], randn(3, 1)), (with_nan, randn(6)),
             (randn(2, 3, 1, 1), nhwc_memory), (nhwc_memory, nhwc_memory + 1)]
    for x, y in pairs:
        (actual,) = run([x, y])
        expected = reference(x, y)
        assert actual.shape == expected.shape and actual.dtype == np.float32
        np.testing.assert_array_equal(actual, expected)
    (actual,) = run([randn(2, 3, 1, 1), nhwc_memory])
    assert actual.transpose(0, 2, 3, 1).flags.c_contiguous
    assert run([randn(3).astype(np.float64), randn(3)]) is None
    assert run([randn(0, 3), randn(3)]) is None
