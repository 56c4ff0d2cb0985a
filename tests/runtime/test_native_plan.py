"""Native plans (runtime/native_plan.py): after the first run of an input shape, a small float
or int8 model runs as one native program with the very results of the executor, bit for bit
(int8 ones with residual convolutions and GEMMs, inverted residual blocks); outputs are fresh
arrays; plans that a step cannot join, that are too large, or that another thread is running
fall back to the executor; a Program's steps check their operands and keep them alive."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
from checks import assert_matches, run_concurrently
from models.cases import CASES, converted, randomize_batch_norm
from models.mobilenet import InvertedResidual
from torch import nn

import nimbus
from nimbus.runtime import _kernels, native_plan
from nimbus.runtime.cpu_ops import blocks
from nimbus.runtime.native_plan import MAX_PROGRAMS, NativePlan


class OddCNN(nn.Module):
    """Odd sizes, a strided padded stem, ceil-mode pooling, a residual convolution and a
    residual linear layer: every native step the float builders have."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 5, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.conv = nn.Conv2d(5, 5, 3, padding=1)
        self.fc1 = nn.Linear(5 * 5 * 4, 13)
        self.fc2 = nn.Linear(13, 13)
        self.head = nn.Linear(13, 3)

    def forward(self, x):
        x = self.pool(torch.relu(self.stem(x)))
        x = torch.relu(self.conv(x) + x)
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.head(torch.relu(self.fc2(x) + x))


class WithSoftmax(OddCNN):
    def forward(self, x):
        return torch.softmax(super().forward(x), dim=-1)


class WithExp(OddCNN):
    def forward(self, x):
        return torch.exp(super().forward(x))


def session_of(model: nn.Module, int8: bool = False):
    torch.manual_seed(0)
    example = torch.randn(1, 3, 19, 15)
    calibration = [images(4, seed)["x"] for seed in range(3)] if int8 else None
    return nimbus.compile(model.eval(), (example,), calibration=calibration).session(), model


def executor_run(session, feeds: dict) -> dict:
    """The session's executor alone, as runs were before native plans."""
    saved = session._native_plans, session._native_plan_limit
    session._native_plans, session._native_plan_limit = {}, 0
    try:
        return session.run(feeds)
    finally:
        session._native_plans, session._native_plan_limit = saved


def images(batch: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((batch, 3, 19, 15)).astype(np.float32)}


@pytest.mark.parametrize("int8", [False, True], ids=["float", "int8"])
@pytest.mark.parametrize("batch", [1, 3])
def test_a_native_plan_gives_the_executor_results(batch, int8):
    torch.manual_seed(1)
    session, model = session_of(OddCNN(), int8)
    ops = [step.op for step in session._steps]
    assert ("qconv2d" in ops) == int8
    feeds = images(batch, seed=batch)
    first = session.run(feeds)["output"]
    plan = session._native_plans[(feeds["x"].shape,)]
    assert isinstance(plan, NativePlan)
    # The input's layout change (float) or quantization (int8), the stem convolution with the
    # pooling, a convolution, a flatten in NCHW order and 3 GEMMs.
    assert len(plan.program) == 7
    for seed in (batch, 10 + batch):
        feeds = images(batch, seed)
        native = session.run(feeds)["output"]
        np.testing.assert_array_equal(native, executor_run(session, feeds)["output"])
        with torch.no_grad():
            expected = model(torch.from_numpy(feeds["x"])).numpy()
        assert_matches(native, expected, "native plan vs torch", rtol=0.1 if int8 else 1e-4)
    np.testing.assert_array_equal(session.run(images(batch, batch))["output"], first)


def case_feeds(name: str, graph, batch: int, seed: int) -> dict:
    inputs = CASES[name].make_inputs(torch.Generator().manual_seed(seed), batch)
    return {value.name: tensor.numpy() for value, tensor in zip(graph.inputs, inputs)}


@pytest.mark.parametrize("int8", [False, True], ids=["float", "int8"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name, ops", [
    # embedding lookups, the embedding sum and the padding-mask expression, layer norms,
    # attention over head views and the feed-forward
    ("bert_encoder", {"gather", "fused_elementwise", "layer_norm", "attention", "permute", "full"}),
    # torch's encoder layer: q, k and v sliced from one projection, heads merged by a reshape of
    # a strided view, a residual add on its own
    ("transformer_post_norm", {"slice", "reshape", "permute", "attention", "add", "layer_norm"}),
    ("transformer_pre_norm", {"slice", "reshape", "permute", "attention", "add", "layer_norm"}),
])
def test_transformer_layers_run_as_native_plans(name, ops, batch, int8):
    model, graph = converted(name)
    calibration = [case_feeds(name, graph, 4, seed) for seed in (100, 101)] if int8 else None
    session = nimbus.compile(graph, calibration=calibration).session()
    if int8:  # attention over int8 q, k and v
        ops = ops - {"attention"} | {"qattention"}
    assert ops <= {step.op for step in session._steps}
    assert ("qlinear" in {step.op for step in session._steps}) == int8
    feeds = case_feeds(name, graph, batch, seed=batch)
    first = session.run(feeds)["output"]
    plan = session._native_plans[tuple(array.shape for array in feeds.values())]
    assert isinstance(plan, NativePlan)
    for seed in (batch, 10 + batch):
        feeds = case_feeds(name, graph, batch, seed)
        native = session.run(feeds)["output"]
        np.testing.assert_array_equal(native, executor_run(session, feeds)["output"])
        with torch.no_grad():
            expected = model(*(torch.from_numpy(array) for array in feeds.values())).numpy()
        assert_matches(native, expected, "native plan vs torch", rtol=0.1 if int8 else 1e-4)
    np.testing.assert_array_equal(session.run(case_feeds(name, graph, batch, batch))["output"],
                                  first)


def test_bad_data_in_a_native_plan_is_the_executor_error():
    """A token id past the table fails the plan's gather; the executor runs the inputs again
    and names the step, as without a plan, and the plan serves the next good run."""
    _, graph = converted("bert_encoder")
    session = nimbus.compile(graph).session()
    feeds = case_feeds("bert_encoder", graph, 2, seed=0)
    good = session.run(feeds)["output"]
    assert session.native_shapes
    bad = dict(feeds, **{graph.inputs[0].name: np.full((2, 7), 100, np.int64)})
    with pytest.raises(RuntimeError, match=r"gather failed .*out of range \[-100, 100\)"):
        session.run(bad)
    np.testing.assert_array_equal(session.run(feeds)["output"], good)


@pytest.mark.parametrize("expand_ratio, size", [(6, 64), (1, 128)],
                         ids=["expanded", "no expansion"])
@pytest.mark.parametrize("fused", [True, False], ids=["native block", "layers"])
def test_inverted_residual_blocks_join_native_plans(fused, expand_ratio, size, monkeypatch):
    if not fused:
        monkeypatch.setattr(blocks, "FUSED_MIN_BYTES", 1 << 62)
    torch.manual_seed(0)
    model = nn.Sequential(InvertedResidual(16, 16, stride=1, expand_ratio=expand_ratio),
                          InvertedResidual(16, 24, stride=2, expand_ratio=expand_ratio))
    randomize_batch_norm(model)
    # Expanded (or, without expansion, the input): size x size x 96 (16) floats, past
    # FUSED_MIN_BYTES.
    x = torch.randn(1, 16, size, size)
    session = nimbus.compile(model.eval(), (x,)).session()
    assert [step.op for step in session._steps] == ["inverted_residual"] * 2
    feeds = {session.inputs[0].name: x.numpy()}
    session.run(feeds)
    plan = session._native_plans[(x.shape,)]
    # The layout changes of the input (x, and the first block's residual), then 1 call per
    # block, or one per layer.
    layers = 3 if expand_ratio > 1 else 2
    assert len(plan.program) == 2 + 2 * (1 if fused else layers)
    for seed in (1, 2):
        rng = np.random.default_rng(seed)
        feeds = {session.inputs[0].name: rng.standard_normal((1, 16, size, size), np.float32)}
        native = session.run(feeds)
        for key, value in executor_run(session, feeds).items():
            np.testing.assert_array_equal(native[key], value)


def test_outputs_are_fresh_arrays():
    session, _ = session_of(OddCNN())
    feeds = images(2, seed=0)
    session.run(feeds)
    plan = session._native_plans[(feeds["x"].shape,)]
    first = session.run(feeds)["output"]
    assert first.flags.c_contiguous and first.flags.writeable
    assert not np.shares_memory(first, plan.outputs[0])
    kept = first.copy()
    first[...] = 0
    np.testing.assert_array_equal(session.run(feeds)["output"], kept)


def test_each_input_shape_gets_a_plan_up_to_the_limit():
    session, _ = session_of(OddCNN())
    for batch in range(1, MAX_PROGRAMS + 3):
        feeds = images(batch, seed=batch)
        session.run(feeds)
        np.testing.assert_array_equal(session.run(feeds)["output"],
                                      executor_run(session, feeds)["output"])
    assert len(session._native_plans) == MAX_PROGRAMS
    assert all(isinstance(plan, NativePlan) for plan in session._native_plans.values())
    assert session.native_shapes == [((batch, 3, 19, 15),) for batch in range(1, MAX_PROGRAMS + 1)]


def test_a_classifier_ending_in_softmax_runs_as_a_native_plan():
    session, model = session_of(WithSoftmax())
    feeds = images(2, seed=0)
    session.run(feeds)
    assert isinstance(session._native_plans[(feeds["x"].shape,)], NativePlan)
    native = session.run(images(2, seed=1))["output"]
    np.testing.assert_array_equal(native, executor_run(session, images(2, seed=1))["output"])
    with torch.no_grad():
        expected = model(torch.from_numpy(images(2, seed=1)["x"])).numpy()
    assert_matches(native, expected, "native plan vs torch", rtol=1e-4)


class WithAveragePools(OddCNN):
    """A DenseNet transition's pooling after the stem, and an Inception-style padded 3 x 3 one
    that counts only the image's taps, in ceil mode."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AvgPool2d(2)
        self.branch_pool = nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True,
                                        count_include_pad=False)

    def forward(self, x):
        x = self.pool(torch.relu(self.stem(x)))
        x = torch.relu(self.conv(x) + x)
        return self.branch_pool(x).flatten(1)


class Fire(nn.Module):
    """SqueezeNet's fire module: a squeeze 1x1, then expand 1x1 and 3x3 joined along channels,
    read by a max pooling and another fire module's squeeze."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2)
        self.squeeze, self.expand1, self.expand3 = (nn.Conv2d(8, 4, 1), nn.Conv2d(4, 6, 1),
                                                    nn.Conv2d(4, 5, 3, padding=1))
        self.head = nn.Conv2d(11, 3, 1)

    def forward(self, x):
        x = torch.relu(self.squeeze(torch.relu(self.stem(x))))
        x = torch.cat([torch.relu(self.expand1(x)), torch.relu(self.expand3(x))], 1)
        return self.head(nn.functional.max_pool2d(x, 2)).flatten(1)


@pytest.mark.parametrize("model_class, op, count", [(WithAveragePools, "avg_pool2d", 2),
                                                    (Fire, "concat", 1)])
def test_average_pools_and_channel_concats_run_in_native_plans(model_class, op, count):
    session, model = session_of(model_class())
    assert [step.op for step in session._steps].count(op) == count
    for batch in (1, 3):
        feeds = images(batch, seed=batch)
        session.run(feeds)
        assert isinstance(session._native_plans[(feeds["x"].shape,)], NativePlan)
        feeds = images(batch, seed=10 + batch)
        native = session.run(feeds)["output"]
        np.testing.assert_array_equal(native, executor_run(session, feeds)["output"])
        with torch.no_grad():
            expected = model(torch.from_numpy(feeds["x"])).numpy()
        assert_matches(native, expected, "native plan vs torch", rtol=1e-4)


def test_a_step_without_a_native_form_keeps_the_executor():
    session, model = session_of(WithExp())
    feeds = images(2, seed=0)
    session.run(feeds)
    assert session._native_plans[(feeds["x"].shape,)] is None
    assert session.native_shapes == []
    with torch.no_grad():
        expected = model(torch.from_numpy(feeds["x"])).numpy()
    assert_matches(session.run(feeds)["output"], expected, "executor", rtol=1e-4)


class Chain(nn.Module):
    """Eight padded 3x3 convolutions of one size in a row, the last one with a residual."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.layers = nn.ModuleList(nn.Conv2d(8, 8, 3, padding=1) for _ in range(7))

    def forward(self, x):
        x = torch.relu(self.stem(x))
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return (self.layers[-1](x) + x).flatten(1)


def test_a_plan_reuses_the_memory_of_values_no_step_reads_again():
    session, model = session_of(Chain())
    feeds = images(2, seed=0)
    session.run(feeds)
    plan = session._native_plans[(feeds["x"].shape,)]
    assert isinstance(plan, NativePlan)
    activation = 2 * 8 * 19 * 15 * 4
    # Eight layers' results (the add joins the last one) and the input's NHWC copy: a buffer
    # per value would take 8.4 activations; by liveness, two and the copy's share.
    assert plan.arena_bytes <= 2.5 * activation
    for seed in (1, 2):
        feeds = images(2, seed)
        native = session.run(feeds)["output"]
        np.testing.assert_array_equal(native, executor_run(session, feeds)["output"])
        with torch.no_grad():
            expected = model(torch.from_numpy(feeds["x"])).numpy()
        assert_matches(native, expected, "native plan vs torch", rtol=1e-4)


def test_plans_past_the_size_limit_keep_the_executor(monkeypatch):
    monkeypatch.setattr(native_plan, "MAX_PROGRAM_BYTES", 1000)
    session, _ = session_of(OddCNN())
    feeds = images(2, seed=0)
    session.run(feeds)
    assert session._native_plans[(feeds["x"].shape,)] is None


def test_concurrent_runs_share_a_plan_safely():
    session, _ = session_of(OddCNN())
    batches = [images(2, seed) for seed in range(4)]
    expected = [executor_run(session, feeds)["output"] for feeds in batches]
    session.run(batches[0])  # traces: the plan every thread then uses, or waits out
    failures = []

    def worker(index: int):
        for _ in range(30):
            if not np.array_equal(session.run(batches[index])["output"], expected[index]):
                failures.append(index)

    run_concurrently(worker, len(batches))
    assert not failures


@pytest.mark.parametrize("model, native", [(OddCNN(), True), (WithExp(), False)],
                         ids=["native plan", "executor"])
def test_profile_times_every_plan_step_and_leaves_runs_unchanged(model, native):
    session, _ = session_of(model)
    feeds = images(2, seed=0)
    expected = executor_run(session, feeds)["output"]
    rows = session.profile(feeds, repeats=3)
    assert [row["op"] for row in rows] == [step.op for step in session._steps]
    assert [row["source"] for row in rows] == [step.source for step in session._steps]
    assert all(row["native"] is native and row["ms"] >= 0 for row in rows)
    assert sum(row["ms"] for row in rows) > 0
    np.testing.assert_array_equal(session.run(feeds)["output"], expected)


def test_profile_checks_its_arguments():
    from nimbus.runtime.session import SessionError

    session, _ = session_of(OddCNN())
    with pytest.raises(ValueError, match="repeats"):
        session.profile(images(2, seed=0), repeats=0)
    with pytest.raises(SessionError, match="'x'"):
        session.profile({"x": np.zeros((2, 4, 19, 15), np.float32)})
    with pytest.raises(ValueError, match="repeats"):
        _kernels.Program().profile(1, 0)
    with pytest.raises(ValueError, match=r"repeats must lie in the range \[1, 10000\]"):
        _kernels.Program().profile(1, 10001)


def test_a_program_profile_has_one_median_per_call():
    program = _kernels.Program()
    assert program.profile(2, 3) == []
    x = np.ones((3, 8), np.float32)
    packed = _kernels.pack_sgemm_weights(np.ones((4, 8), np.float32))
    out = np.empty((3, 4), np.float32)
    for _ in range(2):
        program.sgemm(x, packed, None, None, "none", out)
    medians = program.profile(1, 4)
    assert len(medians) == 2 and all(ms >= 0 for ms in medians)
    np.testing.assert_array_equal(out, np.full((3, 4), 8, np.float32))


def test_program_steps_check_their_operands():
    program = _kernels.Program()
    x = np.zeros((2, 8), np.float32)
    packed = _kernels.pack_sgemm_weights(np.zeros((4, 8), np.float32))
    with pytest.raises(ValueError, match="needs its out array"):
        program.sgemm(x, packed, None, None, "none", None)
    with pytest.raises(ValueError, match="out must have shape"):
        program.sgemm(x, packed, None, None, "none", np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"x must be 4-D \[N, H, W, C\]"):
        program.to_channels_first(np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32))
    assert len(program) == 0
    out = np.full((2, 4), np.nan, np.float32)
    program.sgemm(x + 1, packed, np.arange(4, dtype=np.float32), None, "relu", out)
    program.run(threads=2)
    np.testing.assert_array_equal(out, np.tile(np.arange(4, dtype=np.float32), (2, 1)))
    with pytest.raises(ValueError, match="threads must be at least 1"):
        program.run(threads=0)


def test_a_program_keeps_its_arrays_and_weights_alive():
    program = _kernels.Program()
    x = np.ones((3, 8), np.float32)
    packed = _kernels.pack_sgemm_weights(np.full((4, 8), 2, np.float32))
    bias = np.arange(4, dtype=np.float32)
    out = np.zeros((3, 4), np.float32)
    program.sgemm(x, packed, bias, None, "none", out)
    x[...] = 0.5  # the step reads x's memory at run time
    del x, packed, bias
    gc.collect()
    program.run()
    np.testing.assert_array_equal(out, np.tile(8 + np.arange(4, dtype=np.float32), (3, 1)))
