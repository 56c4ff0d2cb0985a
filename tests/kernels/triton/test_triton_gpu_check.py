"""The GPU check script's parts that need no GPU: its table, and its answer on a CPU machine."""

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[3] / "benchmarks"))  # after tests/: its models package wins
import gpu_check


def test_the_table_shows_checks_times_and_ratios():
    rows = [
        {"case": "qgemm u8 256x4096x4096", "ok": True, "error": 0.0, "flops": 2e9, "bytes": 1e6,
         "nimbus": {"launched": 0.05, "graph": 0.02}, "nimbus_ms": 0.02,
         "peers": {"torch._int_mm": {"ms": 0.03, "ratio": 1.5},
                   "torch.compile": {"skipped": "time budget spent"}}},
        {"case": "conv", "ok": False, "failure": "CompilationError: out of shared memory"},
    ]
    table = gpu_check.format_table(rows)
    assert "ok 0.0e+00" in table and "100.0" in table  # 2 GFLOP in 0.02 ms
    assert "torch._int_mm 0.030 (1.50x)" in table and "time budget spent" in table
    assert "conv" in table and "FAILED: CompilationError" in table


def test_without_cuda_it_says_so_and_exits_2(capsys):
    assert gpu_check.main([]) == 2
    assert "needs a CUDA device" in capsys.readouterr().out
