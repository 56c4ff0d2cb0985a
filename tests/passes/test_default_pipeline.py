"""The default optimization pipeline on every test model: outputs unchanged (1e-5 relative
against torch) and fewer nodes; the per-model node counts are printed (pytest -s)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from checks import assert_matches
from models.cases import CASES, converted, run_both
from nimbus.compiler.interpreter import interpret
from nimbus.passes import DEFAULT_OPTIMIZATION, PassManager


@pytest.mark.parametrize("name", CASES)
def test_default_pipeline_keeps_outputs_and_removes_nodes(name):
    model, graph = converted(name)
    manager = PassManager(DEFAULT_OPTIMIZATION)
    optimized = manager.run(graph.copy())
    inputs = CASES[name].make_inputs(torch.Generator().manual_seed(7), 2)
    _, expected = run_both(model, graph, inputs)
    feeds = {value.name: tensor.numpy() for value, tensor in zip(graph.inputs, inputs)}
    actual = interpret(optimized, feeds)
    for output_name, want in zip(graph.output_names, expected):
        assert_matches(actual[output_name], want, f"{name} {output_name}", rtol=1e-5)
    before, after = len(graph.nodes), len(optimized.nodes)
    ops = Counter(node.op for node in optimized.nodes)
    print(f"\n{name}: {before} -> {after} nodes ({before - after} removed); {dict(ops)}")
    assert after < before
