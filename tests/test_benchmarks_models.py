"""benchmarks/models.py runs end to end: a quick run on LeNet alone writes every runtime's
latency for both batches to its JSON (and which batches ran as one native call) and prints the
tables. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNTIMES = ("nimbus int8", "nimbus float", "onnxruntime int8", "onnxruntime float",
            "pytorch eager")


def test_quick_benchmark_on_lenet_reports_every_runtime_for_both_batches(tmp_path):
    report_path = tmp_path / "models.json"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "models.py"), "--quick", "--models", "lenet",
         "--threads", "1", "--no-pytorch-int8", "--json", str(report_path), "--out", str(tmp_path / "artifacts")],
        check=False, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert completed.returncode == 0, completed.stderr[-4000:]
    report = json.loads(report_path.read_text())

    assert report["config"]["models"] == ["lenet"]
    assert report["executor"]["per_step_us"] > 0
    assert not report["executor"]["native"]  # the Python executor itself
    assert report["executor"]["native_plan"]["native"]
    assert report["executor"]["native_plan"]["per_step_us"] > 0
    lenet = report["models"]["lenet"]
    assert lenet["errors"] == {}
    assert lenet["latency_ms"]["1"]["pytorch int8"] is None  # left out on request
    for batch in ("1", "8"):
        for runtime in RUNTIMES:
            assert lenet["latency_ms"][batch][runtime] > 0, (batch, runtime)
            assert lenet["runs"][batch][runtime] >= 1
            spread = lenet["spread_ms"][batch][runtime]
            assert spread["min_ms"] <= lenet["latency_ms"][batch][runtime] <= spread["max_ms"]
        for kind in ("int8", "float"):
            assert lenet["ratios"][f"{kind} batch {batch}"] > 0
    runtimes = lenet["info"]["runtimes"]
    for runtime in RUNTIMES[:4]:
        assert runtimes[runtime]["compile_s"] > 0
        assert runtimes[runtime]["artifact_bytes"] > 0
        assert runtimes[runtime]["cold_start_ms"] > 0
        assert "rss_peak_delta_bytes" in runtimes[runtime]["memory"]
    for runtime in ("nimbus int8", "nimbus float"):
        assert runtimes[runtime]["memory"]["tracemalloc_peak_bytes"] > 0
        assert runtimes[runtime]["plan_steps"] > 0
        # LeNet's plan runs as one native call at both batches (runtime/native_plan.py).
        assert runtimes[runtime]["native_plan_batches"] == [1, 8]
    assert lenet["info"]["float32_parameter_bytes"] > 0

    table = completed.stdout
    assert "ORT/nimbus int8" in table and "ORT/nimbus float" in table
    lines = [line.split() for line in table.splitlines()]
    assert sum(1 for words in lines if words[:1] == ["lenet"] and words[1:2] in (["1"], ["8"])) == 2
    assert "FAIL[" not in table
