"""Magnitude pruning: the pruned graph computes what the original does with the same weights
zeroed, per-layer and global sparsity, N:M patterns, structured shrinking against zeroed whole
channels, what is skipped and why, option errors, and accuracy on a real data set."""

from __future__ import annotations

import numpy as np
import pytest
from checks import assert_matches
from digits import digit_images, top1
from nimbus.compiler.dims import symbol
from nimbus.compiler.dtypes import DType
from nimbus.compiler.interpreter import interpret
from nimbus.compiler.ir import Builder, Graph, Location, TensorType, Value
from nimbus.compiler.text import parse_ir
from nimbus.passes import PassError, PassManager, run_passes
from nimbus.passes.ledger import build_ledger
from test_quantize import calibration_set, digits_graph  # noqa: F401  (a fixture)

N = symbol("N")


def image_input(graph: Graph, channels: int, height: int, width: int) -> Value:
    return graph.add_input("x", TensorType(DType.f32, (N, channels, height, width)))


def cnn(rng, *, batch_norm: bool = False) -> Graph:
    """x -> conv1 (+bn) -> relu -> max_pool -> conv2 -> relu -> flatten -> fc -> output."""
    graph = Graph("cnn")
    x = image_input(graph, 3, 8, 8)

    def constant(name, *shape):
        return graph.add_constant(name, rng.standard_normal(shape).astype(np.float32))

    b = Builder(graph, Location(scope="features.0"))
    y = b.conv2d(x, constant("conv1.weight", 16, 3, 3, 3), constant("conv1.bias", 16),
                 padding=[1, 1, 1, 1])
    if batch_norm:
        variance = graph.add_constant("bn.var", rng.uniform(0.5, 2.0, 16).astype(np.float32))
        y = b.batch_norm(y, constant("bn.mean", 16), variance, constant("bn.weight", 16),
                         constant("bn.bias", 16))
    b = Builder(graph, Location(scope="features.1"))
    y = b.max_pool2d(b.relu(y), kernel=[2, 2], stride=[2, 2])
    y = b.relu(b.conv2d(y, constant("conv2.weight", 16, 16, 3, 3), constant("conv2.bias", 16),
                        padding=[1, 1, 1, 1]))
    y = b.reshape(y, shape=[N, 16 * 4 * 4])
    b = Builder(graph, Location(scope="classifier"))
    graph.set_outputs([b.linear(y, constant("fc.weight", 10, 256), constant("fc.bias", 10))])
    return graph


LAYERS = ("conv1.weight", "conv2.weight", "fc.weight")


def with_arrays(graph: Graph, arrays: dict[str, np.ndarray]) -> Graph:
    """A copy of ``graph`` whose named constants hold ``arrays``."""
    copy = graph.copy()
    for name, data in arrays.items():
        copy.constants[name].data = data.astype(np.float32)
    return copy


def run(graph: Graph, pipeline: str) -> tuple[Graph, dict]:
    manager = PassManager(pipeline)
    result = manager.run(graph.copy())
    return result, manager.report.records[0].stats


def feed(rng, batch: int = 4) -> dict[str, np.ndarray]:
    return {"x": rng.standard_normal((batch, 3, 8, 8)).astype(np.float32)}


def test_unstructured_equals_the_original_with_the_same_weights_zeroed():
    rng = np.random.default_rng(0)
    graph = cnn(rng)
    pruned, stats = run(graph, "prune{sparsity=0.6}")
    zeroed = {}
    for name in LAYERS:
        before, after = graph.constants[name].data, pruned.constants[name].data
        assert after.shape == before.shape
        kept = after != 0
        assert np.array_equal(after[kept], before[kept]), name  # kept weights are untouched
        assert np.abs(before[~kept]).max() <= np.abs(before[kept]).min(), name  # smallest go
        sparsity = 1 - kept.mean()
        assert abs(sparsity - 0.6) <= 0.5 / before.size, name  # within rounding
        assert stats[f"sparsity: {name}"] == pytest.approx(sparsity)
        zeroed[name] = np.where(kept, before, 0)
    assert stats["layers-pruned"] == 3
    inputs = feed(rng)
    expected = interpret(with_arrays(graph, zeroed), inputs)["output"]
    assert_matches(interpret(pruned, inputs)["output"], expected, "pruned cnn")


def test_global_scope_ranks_all_layers_together():
    rng = np.random.default_rng(1)
    graph = cnn(rng)
    graph.constants["conv2.weight"].data = graph.constants["conv2.weight"].data * 10
    pruned, stats = run(graph, "prune{sparsity=0.5 scope=global}")
    before = np.concatenate([graph.constants[n].data.ravel() for n in LAYERS])
    after = np.concatenate([pruned.constants[n].data.ravel() for n in LAYERS])
    assert np.count_nonzero(after == 0) == round(0.5 * before.size)
    assert np.abs(before[after == 0]).max() <= np.abs(before[after != 0]).min()
    assert stats["sparsity: conv2.weight"] < 0.1 and stats["sparsity: fc.weight"] > 0.5
    assert stats["sparsity"] == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 8)])
def test_n_of_m_holds_in_every_group(n, m):
    rng = np.random.default_rng(2)
    graph = Graph("nm")
    x = image_input(graph, 12, 4, 4)
    b = Builder(graph)
    conv = graph.add_constant("conv.weight", rng.standard_normal((8, 12, 3, 3)).astype(np.float32))
    fc = graph.add_constant("fc.weight", rng.standard_normal((5, 8 * 4 * 4 - 2)).astype(np.float32))
    y = b.reshape(b.conv2d(x, conv, padding=[1, 1, 1, 1]), shape=[N, 128])
    y = b.slice(y, axis=1, start=0, end=126)  # 126 features: the last group is partial
    graph.set_outputs([b.linear(y, fc)])
    pruned, _ = run(graph, f"prune{{n={n} m={m}}}")
    # conv groups run along input channels at each tap: rows of [O, H, W, I]
    for name, rows in [("conv.weight", lambda w: w.transpose(0, 2, 3, 1)), ("fc.weight", lambda w: w)]:
        before, after = rows(graph.constants[name].data), rows(pruned.constants[name].data)
        for start in range(0, before.shape[-1], m):
            group_before, group_after = before[..., start:start + m], after[..., start:start + m]
            size = group_before.shape[-1]
            kept = group_after != 0
            assert (kept.sum(axis=-1) == -(-n * size // m)).all(), (name, start)
            smallest_kept = np.where(kept, np.abs(group_before), np.inf).min(axis=-1)
            largest_pruned = np.where(kept, -np.inf, np.abs(group_before)).max(axis=-1)
            assert (largest_pruned <= smallest_kept).all(), (name, start)
            assert np.array_equal(group_after[kept], group_before[kept])


def test_matmul_with_a_constant_operand_groups_along_its_input_axis():
    graph = parse_ir("""graph @g(%x: f32[N,6]) -> (output: f32[N,2]) {
      const @b: f32[6,2] = [1, 0.1, 2, 0.2, 0.3, 3, 0.4, 4, 5, 0.5, 0.6, 6]
      %0 = matmul(%x, @b) : f32[N,2]
      return %0
    }""")
    pruned, stats = run(graph, "prune{n=2 m=4}")
    # each output column: 2 of the first 4 inputs, 1 of the last 2 (ceil(2 * 2 / 4))
    assert pruned.constants["b"].data.T.tolist() == [[1, 2, 0, 0, 5, 0], [0, 0, 3, 4, 0, 6]]
    assert stats["sparsity: b"] == 0.5


def kept_channels(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Which rows of ``before`` survive in ``after`` (rows are distinct random vectors)."""
    return np.array([i for i, row in enumerate(before) if any(np.array_equal(row, r) for r in after)])


def test_structured_equals_zeroing_whole_channels_and_their_consumers():
    rng = np.random.default_rng(3)
    graph = cnn(rng, batch_norm=True)
    pruned, stats = run(graph, "prune{sparsity=0.5 structured=true}")
    c = {name: value.data for name, value in graph.constants.items()}
    p = {name: value.data for name, value in pruned.constants.items()}
    assert p["conv1.weight"].shape == (8, 3, 3, 3) and p["bn.mean"].shape == (8,)
    assert p["conv2.weight"].shape == (8, 8, 3, 3) and p["fc.weight"].shape == (10, 128)
    keep1 = kept_channels(c["conv1.weight"], p["conv1.weight"])
    keep2 = kept_channels(c["conv2.weight"][:, keep1], p["conv2.weight"])
    l1 = np.abs(c["conv1.weight"]).sum(axis=(1, 2, 3))
    assert l1[np.setdiff1d(np.arange(16), keep1)].max() <= l1[keep1].min()  # smallest L1 go
    drop1, drop2 = np.setdiff1d(np.arange(16), keep1), np.setdiff1d(np.arange(16), keep2)
    zeroed = {name: c[name].copy() for name in ("conv1.weight", "conv1.bias", "conv2.weight",
                                                "conv2.bias", "fc.weight")}
    zeroed["conv1.weight"][drop1] = 0  # the removed filters, with their biases...
    zeroed["conv1.bias"][drop1] = 0
    zeroed["conv2.weight"][:, drop1] = 0  # ...and the consumer's inputs (the bias is dropped)
    zeroed["conv2.weight"][drop2] = 0
    zeroed["conv2.bias"][drop2] = 0
    zeroed["fc.weight"].reshape(10, 16, 16)[:, drop2] = 0  # each channel owns 4x4 features
    inputs = feed(rng)
    expected = interpret(with_arrays(graph, zeroed), inputs)["output"]
    assert_matches(interpret(pruned, inputs)["output"], expected, "structured cnn")
    assert stats["channels-removed"] == 16 and stats["layers-pruned"] == 2
    assert stats["channel-sparsity: conv1.weight"] == 0.5
    assert stats["skipped: reaches a graph output"] == 1  # fc keeps the output's shape


def test_structured_kept_count_rounds_up_and_norm_choice():
    rng = np.random.default_rng(4)
    pruned, _ = run(cnn(rng), "prune{sparsity=0.6 structured=true multiple-of=8}")
    assert pruned.constants["conv1.weight"].data.shape[0] == 8  # 16 - 10 = 6 kept, up to 8
    graph = Graph("norms")
    x = image_input(graph, 4, 2, 2)
    b = Builder(graph)
    # channel 0 has the larger L1 norm (4 > 3), channel 1 the larger L2 norm (3 > 2)
    w = graph.add_constant("w", np.array([[1, 1, 1, 1], [3, 0, 0, 0]], np.float32).reshape(2, 4, 1, 1))
    out = graph.add_constant("out", np.ones((1, 2, 1, 1), np.float32))
    graph.set_outputs([b.conv2d(b.relu(b.conv2d(x, w)), out)])
    for norm, kept in [("l1", [1, 1, 1, 1]), ("l2", [3, 0, 0, 0])]:
        pruned, _ = run(graph, f"prune{{sparsity=0.5 structured=true norm={norm}}}")
        assert pruned.constants["w"].data.ravel().tolist() == kept, norm


def test_structured_skips_what_it_cannot_shrink_and_says_why():
    rng = np.random.default_rng(5)
    graph = Graph("branches")
    x = image_input(graph, 4, 4, 4)
    b = Builder(graph)

    def conv(y, name):
        return b.conv2d(y, graph.add_constant(name, rng.standard_normal((4, 4, 1, 1)).astype(np.float32)))

    residual = b.relu(conv(x, "stem"))
    block = b.add(conv(residual, "block"), residual)
    joined = b.concat(conv(block, "left"), conv(block, "right"), axis=1)
    graph.set_outputs([conv(b.reshape(joined, shape=[N, 4, 8, 4]), "head")])
    pruned, stats = run(graph, "prune{sparsity=0.5 structured=true}")
    assert stats["skipped: joins another branch in add"] == 2  # the stem and the block
    assert stats["skipped: feeds concat"] == 2
    assert stats["skipped: reaches a graph output"] == 1
    assert str(pruned) == str(graph)


def test_exclude_by_weight_name_or_module_path():
    rng = np.random.default_rng(6)
    graph = cnn(rng)
    pruned, stats = run(graph, 'prune{exclude="conv2.*,classifier"}')
    assert np.array_equal(pruned.constants["conv2.weight"].data, graph.constants["conv2.weight"].data)
    assert np.array_equal(pruned.constants["fc.weight"].data, graph.constants["fc.weight"].data)
    assert stats["sparsity: conv1.weight"] == pytest.approx(0.5, abs=0.01)
    assert stats["skipped: excluded by name"] == 2
    # structured: an excluded consumer is left exactly as it is, so its producer stays whole
    pruned, stats = run(graph, 'prune{structured=true exclude="conv2.weight"}')
    assert str(pruned) == str(graph)
    assert stats["skipped: feeds an excluded layer"] == 1


def test_min_size_leaves_small_layers_and_sparsity_zero_changes_nothing():
    rng = np.random.default_rng(7)
    graph = cnn(rng)  # conv1 has 432 weights, the others 2304 and 2560
    pruned, stats = run(graph, "prune{min-size=1000}")
    assert np.array_equal(pruned.constants["conv1.weight"].data, graph.constants["conv1.weight"].data)
    assert stats["skipped: smaller than min-size"] == 1 and stats["layers-pruned"] == 2
    manager = PassManager("prune{sparsity=0}")
    manager.run(graph.copy())
    assert not manager.report.records[0].changed


@pytest.mark.parametrize("options,message", [
    ("sparsity=1.0", r"sparsity must be in \[0, 1\)"),
    ("sparsity=-0.1", r"sparsity must be in \[0, 1\)"),
    ("n=3 m=2", "needs 1 <= n <= m, got n=3 m=2"),
    ("n=2", "needs 1 <= n <= m, got n=2 m=0"),
    ("n=2 m=4 structured=true", "N:M pruning is unstructured"),
    ("structured=true scope=global", "scope=global ranks single weights"),
    ("scope=network", "scope must be layer or global"),
    ("structured=true norm=l3", "norm must be l1 or l2"),
    ("multiple-of=0", "multiple-of must be at least 1"),
    ("min-size=-1", "min-size must not be negative"),
])
def test_bad_options_are_errors(options, message):
    with pytest.raises(PassError, match=message):
        run_passes(cnn(np.random.default_rng(8)), f"prune{{{options}}}")


def test_zeros_survive_later_passes_and_the_ledger_reads_both_modes():
    rng = np.random.default_rng(9)
    graph = cnn(rng, batch_norm=True)
    pruned = run_passes(graph, "fold-batchnorm,prune{n=2 m=4}")
    quantized = run_passes(pruned, "fuse,quantize{mode=weight-only}")
    int8 = {name.removesuffix(".q"): v.data for name, v in quantized.constants.items()
            if v.data.dtype == np.int8}
    assert len(int8) == 3
    for name, weight in int8.items():
        assert (weight[pruned.constants[name].data == 0] == 0).all(), name
    evaluation = [feed(rng)["x"] for _ in range(2)]
    # a layer whose output shrank has no float value of its shape to compare with: structured
    # pruning shows up at the layer that absorbs the removed channels (fc)
    _, ledger = build_ledger(graph, "fold-batchnorm,prune,quantize{mode=weight-only}", evaluation)
    assert {row.layer for row in ledger.rows if row.step == "prune"} == set(LAYERS)
    assert ledger.steps[2].weight_sparsity == pytest.approx(0.5, abs=0.01)
    _, ledger = build_ledger(graph, "fold-batchnorm,prune{structured=true}", evaluation)
    assert {row.layer for row in ledger.rows if row.step.startswith("prune")} == {"fc.weight"}
    assert ledger.steps[2].weight_bytes < 0.6 * ledger.steps[1].weight_bytes


def test_lenet_digits_keeps_accuracy_at_half_sparsity(digits_graph):  # noqa: F811
    _, _, test_x, test_y = digit_images()
    float_top1 = top1(interpret(digits_graph, {"x": test_x})["output"], test_y)
    pruned = run_passes(digits_graph, "prune{sparsity=0.5}")
    pruned_top1 = top1(interpret(pruned, {"x": test_x})["output"], test_y)
    int8 = run_passes(pruned, "quantize", calibration=calibration_set())
    int8_top1 = top1(interpret(int8, {"x": test_x})["output"], test_y)
    print(f"\ndigits top-1: float {float_top1:.2f}%, pruned 50% {pruned_top1:.2f}%, "
          f"pruned 50% + int8 {int8_top1:.2f}%")
    assert float_top1 > 95.0
    assert pruned_top1 >= float_top1 - 2.0
    assert int8_top1 >= float_top1 - 2.0
