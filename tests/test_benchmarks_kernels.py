"""benchmarks/kernels.py measures what its table prints: rows of a small GEMM and a small
convolution on every ISA path, each checked bit for bit against the first path, with ONNX
Runtime beside them, and without it on a host that has only numpy and nimbus (where the AMX path
is timed). No timing is asserted."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from nimbus.runtime import available_isas

ROOT = Path(__file__).resolve().parent.parent
GEMM_SHAPE = (5, 33, 70)
CONV_LAYER = (17, 9, 9, 40, 3, 2, 1, 1)  # C, H, W, K, R, stride, pad, groups


@pytest.fixture()
def kernels_benchmark():
    spec = importlib.util.spec_from_file_location("kernels_benchmark",
                                                  ROOT / "benchmarks" / "kernels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def small_rows(module) -> list[dict]:
    isas = available_isas()
    rows = module.benchmark_shape(GEMM_SHAPE, isas, threads=1, repeats=1, min_seconds=0)
    rows += module.benchmark_conv(1, CONV_LAYER, isas, threads=1, repeats=1, min_seconds=0)
    return rows


def test_rows_cover_every_path_beside_onnxruntime(kernels_benchmark, capsys):
    rows = small_rows(kernels_benchmark)
    isas = available_isas()
    assert [(row["op"], row["isa"]) for row in rows] == (
        [(op, isa) for isa in isas for op in ("gemm", "qgemm_u8")] + [("conv", isa) for isa in isas])
    for row in rows:
        assert row["nimbus_ms"] > 0 and row["ort_ms"] > 0 and row["gops"] > 0
        assert row["speedup"] == pytest.approx(row["ort_ms"] / row["nimbus_ms"])
        assert row["same_as_first_path"] is True
    for row in rows[:-len(isas)]:  # the GEMM rows, each against its path's peak just measured
        assert row["peak_gops"] > 0
        assert row["percent_of_peak"] == pytest.approx(100 * row["gops"] / row["peak_gops"])
    assert rows[-1]["shape"] == [1, 17, 9, 9, 40, 3, 3, 2, 1, 1]
    kernels_benchmark.print_row(rows[0])
    assert "5x33x70" in capsys.readouterr().out


def test_without_onnxruntime_the_int8_rows_leave_its_columns_empty(kernels_benchmark, capsys):
    kernels_benchmark.ort = None
    rows = small_rows(kernels_benchmark)
    assert len(rows) == 3 * len(available_isas())
    for row in rows:
        assert row["nimbus_ms"] > 0 and row["ort_ms"] is None and row["speedup"] is None
    kernels_benchmark.print_row(rows[0])
    kernels_benchmark.print_conv_row(rows[-1])
    printed = capsys.readouterr().out.split()
    assert printed.count("-") == 4


def test_a_path_whose_result_differs_is_reported(kernels_benchmark):
    outputs = {"first": 1, "second": 2}
    out = kernels_benchmark.np.zeros(1)

    def run(isa):
        out[0] = outputs[isa]

    assert kernels_benchmark.same_as_first_path(run, ["first", "second"], out) == {
        "first": True, "second": False}
