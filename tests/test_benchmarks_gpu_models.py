"""benchmarks/gpu_models.py without a GPU: its smoke run compiles LeNet in fp16, int8 and fp32,
runs each through the CUDA backend (Triton's interpreter here), checks it against PyTorch and
the CPU backend, and reports every variant and peer. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_smoke_run_checks_every_variant(tmp_path):
    report_path = tmp_path / "gpu_models.json"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_models.py"), "--smoke", "--json", str(report_path)],
        check=False, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = json.loads(report_path.read_text())
    (row,) = report["rows"]
    assert row["model"] == "lenet" and row["batch"] == 2 and "failures" not in row
    assert set(row["peers"]) == {"pytorch eager fp32", "pytorch eager fp16"}
    variants = row["variants"]
    assert set(variants) == {"fp16", "int8", "fp32"}
    assert variants["int8"]["mismatches"] == 0 and variants["int8"]["cosine_vs_fp32"] > 0.99
    assert variants["fp16"]["relative_error"] <= 1e-2 and variants["fp32"]["relative_error"] <= 1e-4
    for variant in variants.values():
        assert variant["ok"] and variant["ms"] > 0 and variant["run_ms"] > 0
        assert variant["artifact_bytes"] > 0
        assert [step["op"] for step in variant["profile"]] and all(
            step["ms"] >= 0 for step in variant["profile"])
    assert variants["int8"]["artifact_bytes"] < variants["fp16"]["artifact_bytes"] < variants["fp32"]["artifact_bytes"]
    assert "fp16" in completed.stdout and "pytorch eager fp16" in completed.stdout
    assert "steps " in completed.stdout  # each variant's profile line
