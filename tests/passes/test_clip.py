"""clip: bounds per tensor and per channel for every method, mse against plain max-abs on a
heavy-tailed weight, statistics, exclusions and option errors, and LeNet accuracy on digits."""

from __future__ import annotations

import numpy as np
import pytest
from digits import digit_images, top1
from nimbus.compiler.interpreter import interpret
from nimbus.compiler.text import parse_ir
from nimbus.passes import PassError, PassManager, run_passes
from test_quantize import digits_graph  # noqa: F401  (a fixture)

SOURCE = """
graph @net(%x: f32[N,64]) -> (output: f32[N,8]) {
  const @fc1.weight: f32[16,64] = external
  const @fc2.weight: f32[8,16] = external
  %0 = linear(%x, @fc1.weight) : f32[N,16] loc("m.py":3 "fc1")
  %1 = linear(%0, @fc2.weight) : f32[N,8] loc("m.py":4 "fc2")
  return %1
}
"""


def heavy_tailed_net():
    rng = np.random.default_rng(0)
    weights = {"fc1.weight": rng.standard_t(2, size=(16, 64)).astype(np.float32),
               "fc2.weight": rng.standard_t(2, size=(8, 16)).astype(np.float32)}
    return parse_ir(SOURCE, weights), weights


def clipped(pipeline: str):
    graph, weights = heavy_tailed_net()
    manager = PassManager(pipeline)
    result = manager.run(graph.copy())
    return weights, {n: result.constants[n].data for n in weights}, manager.report.records[0].stats


def int8_error(original: np.ndarray, weight: np.ndarray) -> float:
    """Squared error of ``weight`` rounded to per-channel symmetric int8, against ``original``."""
    scales = np.abs(weight).max(axis=1, keepdims=True) / 127
    return float(np.sum((np.rint(weight / scales) * scales - original) ** 2))


def test_absolute_threshold_and_statistics():
    original, result, stats = clipped("clip{threshold=0.5}")
    moved = sum(int(np.sum(np.abs(w) > 0.5)) for w in original.values())
    assert all(np.abs(w).max() <= 0.5 for w in result.values())
    assert stats["weights-clipped"] == moved
    assert stats["weights-clipped: fc1.weight"] == np.sum(np.abs(original["fc1.weight"]) > 0.5)
    changes = np.concatenate([(np.abs(w) - 0.5)[np.abs(w) > 0.5] for w in original.values()])
    assert stats["max-abs-change"] == pytest.approx(changes.max(), rel=1e-6)
    assert stats["mean-abs-change"] == pytest.approx(changes.mean(), rel=1e-6)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("method, expected", [
    ("percentile", lambda rows: np.percentile(np.abs(rows), 95, axis=1, keepdims=True)),
    ("std", lambda rows: 2.0 * np.sqrt(np.mean(rows.astype(np.float64) ** 2, axis=1, keepdims=True))),
])
def test_bounds_hold_per_tensor_and_per_channel(method, expected, per_channel):
    original, result, _ = clipped(f"clip{{method={method} percentile=95 k=2 "
                                  f"per-channel={str(per_channel).lower()}}}")
    for name, weight in original.items():
        rows = weight if per_channel else weight.reshape(1, -1)
        limits = expected(rows)
        np.testing.assert_allclose(np.abs(result[name].reshape(rows.shape)).max(axis=1, keepdims=True),
                                   np.minimum(limits, np.abs(rows).max(axis=1, keepdims=True)),
                                   rtol=1e-6)
        np.testing.assert_array_equal(result[name], np.clip(weight, -limits, limits).astype(np.float32)
                                      .reshape(weight.shape))


def test_mse_beats_max_abs_on_heavy_tailed_weights():
    original, result, _ = clipped("clip{method=mse per-channel=true}")
    for name, weight in original.items():
        with_clip, without = int8_error(weight, result[name]), int8_error(weight, weight)
        print(f"\n{name}: int8 squared error {without:.4g} unclipped, {with_clip:.4g} mse-clipped")
        assert with_clip < without


def test_numbers_follow_the_clipped_weights_and_exclusions():
    graph, weights = heavy_tailed_net()
    manager = PassManager('clip{threshold=0.5 exclude="fc2"}')  # by module path
    result = manager.run(graph.copy())
    assert np.array_equal(result.constants["fc2.weight"].data, weights["fc2.weight"])
    assert weights["fc1.weight"] is not result.constants["fc1.weight"].data  # the input graph kept its
    assert np.abs(graph.constants["fc1.weight"].data).max() > 0.5           # weights
    assert manager.report.records[0].stats["kept: excluded by name"] == 1
    x = np.random.default_rng(1).normal(size=(4, 64)).astype(np.float32)
    expected = parse_ir(SOURCE, {"fc1.weight": np.clip(weights["fc1.weight"], -0.5, 0.5),
                                 "fc2.weight": weights["fc2.weight"]})
    np.testing.assert_allclose(interpret(result, {"x": x})["output"],
                               interpret(expected, {"x": x})["output"], rtol=1e-6)
    nothing = PassManager("clip{threshold=100}")
    nothing.run(graph.copy())
    assert not nothing.report.records[0].changed


@pytest.mark.parametrize("options, message", [
    ("threshold=-0.1", "threshold must be positive"), ("method=minmax", "method must be"),
    ("percentile=0", "percentile must be in"), ("k=0", "k must be positive")])
def test_option_errors(options, message):
    graph, _ = heavy_tailed_net()
    with pytest.raises(PassError, match=message):
        run_passes(graph, f"clip{{{options}}}")


@pytest.mark.parametrize("pipeline", ["clip{method=percentile percentile=99.9}",
                                      "clip{method=mse per-channel=true}"])
def test_digits_accuracy_within_one_point(digits_graph, pipeline):  # noqa: F811
    _, _, test_x, test_y = digit_images()
    float_top1 = top1(interpret(digits_graph, {"x": test_x})["output"], test_y)
    manager = PassManager(pipeline)
    result = manager.run(digits_graph.copy())
    clipped_top1 = top1(interpret(result, {"x": test_x})["output"], test_y)
    stats = manager.report.records[0].stats
    print(f"\ndigits top-1 {pipeline}: float {float_top1:.2f}%, clipped {clipped_top1:.2f}% "
          f"({int(stats['weights-clipped'])} weights clipped, mean change "
          f"{stats['mean-abs-change']:.4g}, max {stats['max-abs-change']:.4g})")
    assert stats["weights-clipped"] > 0
    assert clipped_top1 >= float_top1 - 1.0
