"""quantize stores embedding tables in int8 (per-column scales), dequantized after the lookup;
tables a float layer also reads, small tables and excluded ones stay float."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nimbus.compiler.dtypes import DType
from nimbus.compiler.frontend import from_torch
from nimbus.compiler.interpreter import interpret
from nimbus.compiler.ir import QuantParams, TensorType
from nimbus.compiler.ops.registry import get_op
from nimbus.passes import DEFAULT_OPTIMIZATION, run_passes
from nimbus.runtime.session import Session
from torch import nn

import nimbus


class Lookup(nn.Module):
    def __init__(self, vocabulary: int = 1000, width: int = 48, tied: bool = False):
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, width)
        self.head = nn.Linear(width, vocabulary if tied else 10, bias=False)
        if tied:
            self.head.weight = self.embedding.weight

    def forward(self, ids):
        return self.head(torch.relu(self.embedding(ids)))


def graph_of(module: nn.Module):
    torch.manual_seed(0)
    ids = torch.randint(0, module.embedding.num_embeddings, (2, 7))
    return run_passes(from_torch(module.eval(), (ids,)), DEFAULT_OPTIMIZATION), ids


def feeds(graph, count: int = 2, vocabulary: int = 1000):
    rng = np.random.default_rng(0)
    return [{graph.inputs[0].name: rng.integers(0, vocabulary, (3, 7), dtype=np.int64)}
            for _ in range(count)]


def test_embedding_table_is_int8_per_column_and_close_to_float():
    torch.manual_seed(0)
    graph, _ = graph_of(Lookup())
    quantized = run_passes(graph, "quantize", calibration=feeds(graph))
    (lookup,) = [n for n in quantized.nodes if n.op == "gather"]
    table = lookup.operands[0]
    assert table.is_constant and table.type.dtype == DType.i8
    assert table.type.quant.axis == 1 and len(table.type.quant.scale) == 48
    assert lookup.result.type.quant.axis == 2  # [N, S] indices: the column axis is now 2
    (user,) = [n for n in quantized.nodes if lookup.result in n.operands]
    assert user.op == "dequantize"
    feed = feeds(graph, 3)[2]
    expected, actual = interpret(graph, feed)["output"], interpret(quantized, feed)["output"]
    cosine = float((expected * actual).sum() / np.linalg.norm(expected) / np.linalg.norm(actual))
    assert cosine >= 0.999
    # the runtime computes exactly what the reference interpreter does
    data = nimbus.compile(graph, calibration=feeds(graph)).data
    np.testing.assert_array_equal(Session(data).run(feed)["output"],
                                  interpret(nimbus.compile(graph, calibration=feeds(graph)).graph,
                                            feed)["output"])
    float_bytes = len(nimbus.compile(graph).data)
    assert len(data) < 0.4 * float_bytes


@pytest.mark.parametrize("mode", ["dynamic", "weight-only"])
def test_every_mode_quantizes_embeddings(mode):
    graph, _ = graph_of(Lookup())
    quantized = run_passes(graph, f"quantize{{mode={mode}}}")
    assert any(n.op == "gather" and n.operands[0].type.dtype == DType.i8 for n in quantized.nodes)


@pytest.mark.parametrize("pipeline, reason", [
    ("quantize{embeddings=false}", None),
    ("quantize{exclude=embedding*}", "kept-float: excluded by name"),
])
def test_embeddings_can_stay_float(pipeline, reason):
    graph, _ = graph_of(Lookup())
    from nimbus.passes import PassManager

    manager = PassManager(pipeline, data={"calibration": feeds(graph)})
    quantized = manager.run(graph.copy())
    assert all(n.operands[0].type.dtype == DType.f32 for n in quantized.nodes if n.op == "gather")
    if reason:
        assert manager.report.records[0].stats[reason] >= 1


def test_a_table_a_float_layer_shares_and_a_small_table_stay_float():
    from nimbus.passes import PassManager

    for module, pipeline, reason in [
            (Lookup(tied=True), "quantize{exclude=head*}", "kept-float: embedding table has other uses"),
            (Lookup(vocabulary=50, width=8), "quantize", "kept-float: small embedding table")]:
        graph, _ = graph_of(module)
        vocabulary = module.embedding.num_embeddings
        manager = PassManager(pipeline, data={"calibration": feeds(graph, vocabulary=vocabulary)})
        quantized = manager.run(graph.copy())
        assert all(n.operands[0].type.dtype == DType.f32 for n in quantized.nodes if n.op == "gather")
        assert manager.report.records[0].stats[reason] >= 1


def test_gather_keeps_per_axis_quantization_and_refuses_the_scales_axis():
    infer = get_op("gather").infer
    scales = QuantParams([0.5, 0.25, 1.0], [0], axis=1)
    table = TensorType(DType.i8, (10, 3), scales)
    ids = TensorType(DType.i64, (2, 5))
    assert infer([table, ids], {"axis": 0}) == TensorType(DType.i8, (2, 5, 3),
                                                            QuantParams([0.5, 0.25, 1.0], [0], axis=2))
    per_tensor = TensorType(DType.i8, (10, 3), QuantParams([0.5], [0]))
    assert infer([per_tensor, ids], {"axis": 0}).quant == per_tensor.quant
    with pytest.raises(ValueError, match="holds the quantization scales"):
        infer([table, ids], {"axis": 1})
