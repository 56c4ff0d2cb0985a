"""The accuracy ledger: a step per pass, drift traced to the nodes a pass changed, the user's
metric, size and sparsity totals, JSON round trip, and `nimbus opt --ledger` / `nimbus report`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from digits import digit_images, top1, trained_lenet
from nimbus.cli import app
from nimbus.compiler.frontend import from_torch
from nimbus.compiler.text import save_ir
from nimbus.passes.ledger import Ledger, build_ledger

PIPELINE = "canonicalize,fold-batchnorm,fuse,quantize,eliminate-dead-code"


@pytest.fixture(scope="module")
def float_graph():
    train_x, _, _, _ = digit_images()
    return from_torch(trained_lenet(), (torch.from_numpy(train_x[:2]),))


def test_ledger_traces_the_loss_to_the_quantize_step(float_graph):
    train_x, _, test_x, test_y = digit_images()
    evaluation = [test_x[i:i + 90] for i in range(0, 360, 90)]
    graph, ledger = build_ledger(float_graph, PIPELINE, evaluation,
                                 metric=lambda outputs: top1(outputs["output"], test_y),
                                 calibration=[train_x[i:i + 64] for i in range(0, 512, 64)])
    assert [step.name for step in ledger.steps] == ["float", *PIPELINE.split(",")]
    by_name = {step.name: step for step in ledger.steps}
    for lossless in ("float", "canonicalize", "fold-batchnorm", "fuse"):
        assert math.isinf(by_name[lossless].outputs["output"]["sqnr_db"]), lossless
    quantized = by_name["quantize"]
    assert 25.0 < quantized.outputs["output"]["sqnr_db"] < math.inf
    assert quantized.metric >= by_name["float"].metric - 1.0
    assert quantized.weight_bytes < by_name["float"].weight_bytes / 3.5
    assert quantized.int8_flop_share > 0.99
    rows = [row for row in ledger.rows if row.step == "quantize"]
    assert sorted(row.op for row in rows) == ["qconv2d", "qconv2d", "qlinear", "qlinear",
                                              "qlinear"]
    assert all("lenet.py" in row.source and row.cosine > 0.999 for row in rows)
    assert any(node.op == "qconv2d" for node in graph.nodes)


def test_ledger_json_round_trip_and_cli(tmp_path, float_graph):
    train_x, _, _, _ = digit_images()
    model = tmp_path / "lenet.nir"
    save_ir(float_graph, model)
    data = tmp_path / "calibration.npz"
    np.savez(data, *[train_x[i:i + 32] for i in range(0, 128, 32)])
    ledger_path = tmp_path / "ledger.json"
    runner = CliRunner()
    result = runner.invoke(app, ["opt", str(model), "-p", PIPELINE, "--calibration", str(data),
                                 "--ledger", str(ledger_path), "-o", str(tmp_path / "q.nir")])
    assert result.exit_code == 0, result.output
    ledger = Ledger.load(ledger_path)
    assert ledger.pipeline == PIPELINE and len(ledger.steps) == 6
    shown = runner.invoke(app, ["report", str(ledger_path)])
    assert shown.exit_code == 0
    assert "accuracy ledger" in shown.output and "qconv2d" in shown.output
    assert Ledger.load(ledger_path).table() == ledger.table()
    missing = runner.invoke(app, ["opt", str(model), "--ledger", str(ledger_path)])
    assert missing.exit_code == 1 and "--ledger needs --calibration" in missing.output
