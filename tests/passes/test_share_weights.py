"""share-weights: codebooks of at most 2^bits values, exact zeros, the same numbers as the
decoded weights, exclusions and option errors, and LeNet accuracy on digits (also pruned and
quantized after sharing)."""

from __future__ import annotations

import numpy as np
import pytest
from digits import digit_images, top1
from nimbus.compiler.interpreter import interpret
from nimbus.compiler.text import parse_ir
from nimbus.passes import PassError, PassManager, run_passes
from test_quantize import calibration_set, digits_graph  # noqa: F401  (a fixture)

SOURCE = """
graph @net(%x: f32[N,2,6,6]) -> (output: f32[N,5]) {
  const @conv.weight: f32[8,2,3,3] = external
  const @fc.weight: f32[5,128] = external
  %0 = conv2d(%x, @conv.weight) : f32[N,8,4,4] loc("m.py":3 "conv")
  %1 = reshape(%0) {shape=[-1, 128]} : f32[N,128]
  %2 = linear(%1, @fc.weight) : f32[N,5] loc("m.py":4 "fc")
  return %2
}
"""


def small_net(rng, sparsity: float = 0.0):
    weights = {"conv.weight": rng.standard_t(3, size=(8, 2, 3, 3)).astype(np.float32),
               "fc.weight": rng.normal(size=(5, 128)).astype(np.float32)}
    for w in weights.values():
        w[np.abs(w) < np.quantile(np.abs(w), sparsity)] = 0.0
    return parse_ir(SOURCE, weights), weights


def decoded_weights(graph) -> dict[str, np.ndarray]:
    """Each shared layer's weight as the graph computes it, by the original weight's name."""
    return {n.operands[1].name.removesuffix(".indices"): n.operands[0].data[n.operands[1].data]
            for n in graph.nodes if n.op == "gather"}


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_codebooks_and_outputs_match_the_decoded_weights(bits):
    graph, weights = small_net(np.random.default_rng(bits))
    manager = PassManager(f"share-weights{{bits={bits}}}")
    shared = manager.run(graph.copy())
    decoded = decoded_weights(shared)
    assert set(decoded) == set(weights)
    for name, weight in decoded.items():
        assert len(np.unique(weight)) <= 2 ** bits
        assert shared.constants[f"{name}.indices"].type.dtype.name == "u8"
        error = np.abs(weight - weights[name]).max() / np.abs(weights[name]).max()
        assert error < 2.0 ** (1 - bits), f"{name}: {error}"
    x = np.random.default_rng(0).normal(size=(3, 2, 6, 6)).astype(np.float32)
    reference = parse_ir(SOURCE, decoded)
    np.testing.assert_allclose(interpret(shared, {"x": x})["output"],
                               interpret(reference, {"x": x})["output"], rtol=1e-6, atol=1e-6)
    stats = manager.report.records[0].stats
    assert stats["layers-shared"] == 2 and stats["bits"] == bits
    assert stats["bytes-before"] == 4 * (144 + 640)
    assert stats["bytes-after"] == 144 + 640 + 4 * sum(
        len(shared.constants[f"{n}.codebook"].data) for n in weights)


def test_pruned_zeros_stay_exactly_zero():
    graph, weights = small_net(np.random.default_rng(1), sparsity=0.5)
    shared = run_passes(graph, "share-weights{bits=3}")
    for name, weight in decoded_weights(shared).items():
        assert shared.constants[f"{name}.codebook"].data[0] == 0.0
        np.testing.assert_array_equal(weight == 0, weights[name] == 0)
    plain = run_passes(graph, "share-weights{bits=3 keep-zero=false}")
    assert all(len(plain.constants[f"{n}.codebook"].data) == 8 for n in weights)


def test_exclusions_and_option_errors():
    graph, _ = small_net(np.random.default_rng(2))
    manager = PassManager('share-weights{exclude="conv*"}')
    shared = manager.run(graph.copy())
    assert set(decoded_weights(shared)) == {"fc.weight"}
    assert manager.report.records[0].stats["kept: excluded by name"] == 1
    unchanged = PassManager('share-weights{exclude="*.weight"}')
    unchanged.run(graph.copy())
    assert not unchanged.report.records[0].changed
    for bits in (1, 9):
        with pytest.raises(PassError, match="bits must be from 2 to 8"):
            run_passes(graph, f"share-weights{{bits={bits}}}")


def prune_by_hand(graph, sparsity: float):
    """Zero the smallest weights of every layer (what a prune pass does)."""
    for node in graph.nodes:
        weight = node.operands[1] if node.op in ("fused_conv2d", "fused_linear", "linear") else None
        if weight is not None and weight.is_constant:
            magnitude = np.abs(weight.data)
            weight.data = np.where(magnitude < np.quantile(magnitude, sparsity), 0.0,
                                   weight.data).astype(np.float32)
    return graph


def weight_bytes(graph) -> int:
    return sum(v.data.nbytes for v in graph.constants.values() if v.data.ndim >= 2)


def test_digits_accuracy_after_sharing_pruning_and_quantization(digits_graph):  # noqa: F811
    _, _, test_x, test_y = digit_images()
    float_top1 = top1(interpret(digits_graph, {"x": test_x})["output"], test_y)
    manager = PassManager("share-weights{bits=4}")
    shared = manager.run(digits_graph.copy())
    shared_top1 = top1(interpret(shared, {"x": test_x})["output"], test_y)
    stats = manager.report.records[0].stats
    # quantize decodes the lookups: the int8 weight is what ships.
    pruned = prune_by_hand(digits_graph.copy(), 0.5)
    compressed = run_passes(pruned, "share-weights{bits=4},quantize", calibration=calibration_set())
    compressed_top1 = top1(interpret(compressed, {"x": test_x})["output"], test_y)
    int8_weights = [n.operands[1].data for n in compressed.nodes if n.op in ("qconv2d", "qlinear")]
    print(f"\ndigits top-1: float {float_top1:.2f}%, 4-bit shared {shared_top1:.2f}%, "
          f"50% pruned + 4-bit shared + int8 {compressed_top1:.2f}%")
    print(f"layer weight bytes: float32 {weight_bytes(digits_graph)}, shared {weight_bytes(shared)} "
          f"(u8 indices + codebooks {int(stats['bytes-after'])}, packed 4-bit "
          f"{int(stats['bytes-after-packed'])}), pruned+shared+int8 {weight_bytes(compressed)}")
    assert shared_top1 >= float_top1 - 2.0
    assert compressed_top1 >= float_top1 - 2.0
    assert len(int8_weights) == 5
    assert all(len(np.unique(w)) <= 16 * w.shape[0] for w in int8_weights)
    assert all(np.mean(w == 0) >= 0.5 for w in int8_weights)
