"""The IR container, its queries and edits, the verifier's messages and the interpreter's checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nimbus.compiler.dims import symbol
from nimbus.compiler.dtypes import DType
from nimbus.compiler.interpreter import InterpreterError, interpret
from nimbus.compiler.ir import Builder, Graph, Location, QuantParams, TensorType
from nimbus.compiler.ops.docs import render_markdown
from nimbus.compiler.summary import node_costs
from nimbus.compiler.verifier import VerificationError, verify

N = symbol("N")
REPO = Path(__file__).resolve().parents[2]


def small_graph():
    graph = Graph("small")
    x = graph.add_input("x", TensorType(DType.f32, (N, 4)))
    w = graph.add_constant("fc.weight", np.ones((3, 4), np.float32))
    b = Builder(graph, Location("model.py", 7, "fc"))
    hidden = b.linear(x, w)
    out = b.add(b.relu(hidden), hidden)
    graph.set_outputs([out])
    return graph, x, hidden, out


def test_builder_infers_types_and_pads_optional_operands():
    graph, x, hidden, out = small_graph()
    assert str(hidden.type) == "f32[N,3]"
    assert graph.nodes[0].operands[2] is None  # absent bias is stored explicitly
    assert graph.nodes[0].loc.describe() == "model.py:7 (fc)"
    verify(graph)


def test_uses_and_topological_order():
    graph, x, hidden, out = small_graph()
    uses = graph.uses()
    assert [n.op for n in uses[hidden]] == ["relu", "add"]
    assert uses[out] == [None]  # the graph output counts as a use
    graph.nodes.reverse()
    with pytest.raises(VerificationError, match="used before it is defined"):
        verify(graph)
    graph.sort()
    assert [n.op for n in graph.nodes] == ["linear", "relu", "add"]
    verify(graph)


def test_replace_all_uses_and_dead_constants():
    graph, x, hidden, out = small_graph()
    relu = graph.nodes[1]
    graph.replace_all_uses(relu.result, hidden)
    graph.remove_node(relu)
    verify(graph)
    assert [n.op for n in graph.nodes] == ["linear", "add"]
    graph.add_constant("unused", np.zeros(2, np.float32))
    assert graph.remove_unused_constants() == 1


def test_copy_is_independent():
    graph, *_ = small_graph()
    clone = graph.copy()
    clone.nodes.pop()
    assert len(graph.nodes) == 3
    verify(graph)


def test_verifier_names_node_op_and_problem():
    graph, x, hidden, out = small_graph()
    graph.nodes[1].results[0].type = TensorType(DType.f32, (N, 5))
    with pytest.raises(VerificationError) as info:
        verify(graph)
    message = str(info.value)
    assert "result 0 typed f32[N,5], the op table infers f32[N,3]" in message
    assert "at relu (model.py:7 (fc))" in message
    assert info.value.node is graph.nodes[1]


def test_verifier_rejects_mismatched_operands():
    graph, x, hidden, out = small_graph()
    graph.nodes[2].operands[1] = x
    with pytest.raises(VerificationError, match="add: shapes .* do not broadcast"):
        verify(graph)


def test_quant_params_validate():
    with pytest.raises(ValueError, match="positive and finite"):
        QuantParams([0.0], [0])
    with pytest.raises(ValueError, match="give an axis"):
        QuantParams([0.1, 0.2], [0])
    with pytest.raises(ValueError, match="2 scales for axis 0 of size 3"):
        TensorType(DType.i8, (3, 4), QuantParams([0.1, 0.2], [0], axis=0))
    assert str(TensorType(DType.u8, (N, 2), QuantParams([0.1], [128]))) == "u8[N,2]{scale=0.1, zp=128}"


def test_interpreter_checks_inputs_by_name_dtype_and_shape():
    graph, *_ = small_graph()
    with pytest.raises(InterpreterError, match=r"missing \['x'\], unexpected \['y'\]"):
        interpret(graph, {"y": np.zeros((2, 4), np.float32)})
    with pytest.raises(InterpreterError, match="input 'x' must be f32, got float64"):
        interpret(graph, {"x": np.zeros((2, 4))})
    with pytest.raises(InterpreterError, match="input 'x' axis 1: expected 4, got 5"):
        interpret(graph, {"x": np.zeros((2, 5), np.float32)})


def test_interpreter_binds_symbols_consistently():
    graph = Graph("two")
    a = graph.add_input("a", TensorType(DType.f32, (N, 3)))
    b = graph.add_input("b", TensorType(DType.f32, (N, 3)))
    graph.set_outputs([Builder(graph).add(a, b)])
    ok = interpret(graph, {"a": np.ones((4, 3), np.float32), "b": np.ones((4, 3), np.float32)})
    assert ok["output"].shape == (4, 3)
    with pytest.raises(InterpreterError, match="input 'b' axis 0: expected N=4, got 2"):
        interpret(graph, {"a": np.ones((4, 3), np.float32), "b": np.ones((2, 3), np.float32)})


def test_interpreter_errors_carry_the_source_location():
    graph = Graph("gather")
    table = graph.add_constant("table", np.ones((4, 2), np.float32))
    ids = graph.add_input("ids", TensorType(DType.i64, (3,)))
    graph.set_outputs([Builder(graph, Location("emb.py", 3)).gather(table, ids)])
    with pytest.raises(InterpreterError, match=r"out of range .* while running gather \(emb.py:3\)"):
        interpret(graph, {"ids": np.array([0, 1, 9])})


def test_keep_intermediates_exposes_every_value():
    graph, x, hidden, out = small_graph()
    result = interpret(graph, {"x": np.ones((2, 4), np.float32)}, keep_intermediates=True)
    assert result["values"][hidden].shape == (2, 3)


def test_node_costs_bind_the_batch():
    graph, *_ = small_graph()
    rows = node_costs(graph, {"N": 8})
    assert rows[0].flops == 2 * 8 * 3 * 4 and rows[0].parameters == 12
    assert rows[1].parameters == 0 and rows[0].source == "model.py:7"


def test_ops_doc_is_generated_from_the_table():
    assert (REPO / "docs" / "ops.md").read_text() == render_markdown(), \
        "docs/ops.md is stale: python -m nimbus.compiler.ops.docs > docs/ops.md"
