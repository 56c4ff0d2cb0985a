"""benchmarks/serve.py runs end to end: a smoke run serves the CNN by nimbus and by ONNX Runtime,
with and without batching, at every concurrency, and through the overload phase; every answer is
its own request's, and every accepted request is answered. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_smoke_run_reports_every_cell_and_loses_nothing(tmp_path):
    report_path = tmp_path / "serve.json"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "serve.py"), "--smoke", "--requests", "24",
         "--json", str(report_path)],
        check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-4000:]
    report = json.loads(report_path.read_text())

    cells = {(row["backend"], row["batching"], row["concurrency"]) for row in report["results"]}
    assert cells == {(backend, batching, concurrency) for backend in ("nimbus", "onnxruntime")
                     for batching in ("off", "on") for concurrency in (1, 8, 64)}
    for row in report["results"]:
        assert row["statuses"] == {"200": 24}, row
        assert row["mismatches"] == 0, row
        assert row["throughput_rps"] > 0
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
    assert [row["backend"] for row in report["overload"]] == ["nimbus", "onnxruntime"]
    for row in report["overload"]:
        assert row["ok"] + row["rejected"] == row["requests"] == 24 and row["other"] == 0, row
        assert row["mismatches"] == 0
        assert (row["server_successes"], row["server_rejected"]) == (row["ok"], row["rejected"])
    assert "p99 ms" in completed.stdout and "overload nimbus" in completed.stdout
