"""One accuracy budget over a whole compression pipeline: back-offs until the metric holds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from digits import digit_images, trained_lenet
from nimbus.compiler.frontend import from_torch
from nimbus.compiler.interpreter import interpret
from nimbus.passes.budget import BudgetError, compress_within_budget


@pytest.fixture(scope="module")
def setting():
    train_x, _, test_x, _ = digit_images()
    graph = from_torch(trained_lenet(), (torch.from_numpy(train_x[:2]),))
    evaluation = [test_x[:100]]
    reference = interpret(graph, {"x": test_x[:100]})["output"].astype(np.float64)

    def agreement(outputs):  # a strict metric: 100 * cosine with the float logits
        actual = outputs["output"].astype(np.float64).ravel()
        return 100.0 * actual @ reference.ravel() / (np.linalg.norm(actual)
                                                      * np.linalg.norm(reference))

    calibration = [train_x[i:i + 64] for i in range(0, 256, 64)]
    return graph, evaluation, agreement, calibration


def test_budget_backs_off_the_most_harmful_layers_until_it_holds(setting):
    graph, evaluation, agreement, calibration = setting
    pipeline = "canonicalize,fuse,quantize{calibration=minmax activations=i8}"
    result, ledger = compress_within_budget(graph, pipeline, evaluation, metric=agreement,
                                            max_drop=0.0005, calibration=calibration)
    assert ledger.backoffs, "this strict budget needs at least one back-off"
    assert all(b.startswith("quantize: ") for b in ledger.backoffs)
    assert ledger.steps[0].metric - ledger.steps[-1].metric <= 0.0005
    assert "changed to meet the accuracy budget" in ledger.table()
    quantized = [n for n in result.nodes if n.op in ("qconv2d", "qlinear")]
    assert 0 < len(quantized) < 5  # some layers kept int8, the worst went back to float


def test_a_generous_budget_changes_nothing(setting):
    graph, evaluation, agreement, calibration = setting
    _, ledger = compress_within_budget(graph, "fuse,quantize", evaluation, metric=agreement,
                                       max_drop=1.0, calibration=calibration)
    assert ledger.backoffs == []


def test_an_impossible_budget_is_reported(setting):
    graph, evaluation, agreement, calibration = setting
    with pytest.raises(BudgetError, match="no pass can back off further"):
        compress_within_budget(graph, "fuse,quantize", evaluation, metric=agreement,
                               max_drop=-1.0, calibration=calibration)
