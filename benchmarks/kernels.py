"""Times the packed int8 GEMM of nimbus.runtime._kernels against ONNX Runtime.

For each shape (M, N, K) and each ISA path that this machine runs, it compares
    qgemm_s32 (u8 x s8 -> s32)             with ORT's MatMulInteger, and
    qgemm (u8 x s8 -> u8, requantized)     with ORT's QLinearMatMul (per-column weight scales),
both with constant, pre-packed weights and the same thread count. Times are medians over
repeats. A small GEMM that fits in L2 gives each path's "peak", and every row reports the share
of it that the shape reaches.

    python benchmarks/kernels.py [--threads 2] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from nimbus import runtime as kernels

SHAPES = [(1, 4096, 4096), (64, 4096, 4096), (256, 1024, 1024), (1024, 1024, 1024),
          (128, 768, 3072)]
PEAK_SHAPE = (480, 256, 1024)  # A 480 KiB and B 256 KiB: both stay in a 1 MiB L2
SPIN_SETTLE_SECONDS = 0.05


def median_ms(call, repeats: int, min_seconds: float) -> float:
    """Median time of one call in ms, over at least `repeats` calls and `min_seconds`.

    It first waits for ONNX Runtime's worker threads, which spin for a while after each run,
    to go to sleep: they would otherwise hold the cores that the next block of calls needs.
    """
    time.sleep(SPIN_SETTLE_SECONDS)
    call()
    times = []
    started = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - started < min_seconds:
        begin = time.perf_counter()
        call()
        times.append(time.perf_counter() - begin)
    return float(np.median(times)) * 1e3


def ort_session(nodes, inputs, outputs, initializers, threads: int) -> ort.InferenceSession:
    graph = helper.make_graph(nodes, "gemm", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def matmul_integer_session(w: np.ndarray, a_zero_point: int, threads: int):
    """a [M, K] u8 -> MatMulInteger(a, w.T, a_zero_point) int32 [M, N], w.T constant."""
    k = w.shape[1]
    initializers = [numpy_helper.from_array(np.ascontiguousarray(w.T), "b"),
                    numpy_helper.from_array(np.array(a_zero_point, dtype=np.uint8), "a_zp")]
    node = helper.make_node("MatMulInteger", ["a", "b", "a_zp"], ["y"])
    a_info = helper.make_tensor_value_info("a", TensorProto.UINT8, ["M", k])
    y_info = helper.make_tensor_value_info("y", TensorProto.INT32, ["M", w.shape[0]])
    return ort_session([node], [a_info], [y_info], initializers, threads)


def qlinear_matmul_session(w: np.ndarray, a_zero_point: int, a_scale: float,
                           w_scales: np.ndarray, out_scale: float, out_zero_point: int,
                           threads: int):
    """a [M, K] u8 -> QLinearMatMul u8 [M, N] with per-column weight scales."""
    k = w.shape[1]
    arrays = {
        "a_scale": np.array(a_scale, dtype=np.float32),
        "a_zp": np.array(a_zero_point, dtype=np.uint8),
        "b": np.ascontiguousarray(w.T),
        "b_scale": w_scales.astype(np.float32),
        "b_zp": np.zeros(w.shape[0], dtype=np.int8),
        "y_scale": np.array(out_scale, dtype=np.float32),
        "y_zp": np.array(out_zero_point, dtype=np.uint8),
    }
    initializers = [numpy_helper.from_array(value, name) for name, value in arrays.items()]
    node = helper.make_node("QLinearMatMul",
                            ["a", "a_scale", "a_zp", "b", "b_scale", "b_zp", "y_scale", "y_zp"],
                            ["y"])
    a_info = helper.make_tensor_value_info("a", TensorProto.UINT8, ["M", k])
    y_info = helper.make_tensor_value_info("y", TensorProto.UINT8, ["M", w.shape[0]])
    return ort_session([node], [a_info], [y_info], initializers, threads)


def gops(shape, ms: float) -> float:
    m, n, k = shape
    return 2 * m * n * k / (ms * 1e6)


def peak_gops(isa: str, threads: int, repeats: int, min_seconds: float) -> float:
    m, n, k = PEAK_SHAPE
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(m, k), dtype=np.uint8)
    packed = kernels.pack_weights(rng.integers(-128, 128, size=(n, k), dtype=np.int8), isa)
    out = np.empty((m, n), dtype=np.int32)
    ms = median_ms(lambda: kernels.qgemm_s32(a, packed, threads=threads, out=out), repeats,
                   min_seconds)
    return gops(PEAK_SHAPE, ms)


def benchmark_shape(shape, isas, peaks, threads: int, repeats: int, min_seconds: float):
    m, n, k = shape
    rng = np.random.default_rng(list(shape))
    a = rng.integers(0, 256, size=(m, k), dtype=np.uint8)
    w = rng.integers(-128, 128, size=(n, k), dtype=np.int8)
    a_zero_point, a_scale, out_scale, out_zero_point = 128, 0.02, 0.5, 128
    w_scales = rng.uniform(0.001, 0.01, size=n).astype(np.float32)
    multiplier = (np.float64(a_scale) * w_scales / out_scale).astype(np.float32)

    feeds = {"a": a}
    integer = matmul_integer_session(w, a_zero_point, threads)
    qlinear = qlinear_matmul_session(w, a_zero_point, a_scale, w_scales, out_scale,
                                     out_zero_point, threads)
    calls = {
        ("ort", "gemm"): lambda: integer.run(None, feeds),
        ("ort", "qgemm_u8"): lambda: qlinear.run(None, feeds),
    }
    # Results go into buffers allocated once, as ORT's arena allocator reuses its own.
    out_s32 = np.empty((m, n), dtype=np.int32)
    out_u8 = np.empty((m, n), dtype=np.uint8)
    for isa in isas:
        packed = kernels.pack_weights(w, isa)
        calls[isa, "gemm"] = lambda packed=packed: kernels.qgemm_s32(
            a, packed, a_zero_point, threads=threads, out=out_s32)
        calls[isa, "qgemm_u8"] = lambda packed=packed: kernels.qgemm(
            a, packed, a_zero_point, None, multiplier, out_zero_point, 0, 255, "u8",
            threads=threads, out=out_u8)
    ms = {name: median_ms(call, repeats, min_seconds) for name, call in calls.items()}
    rows = []
    for isa in isas:
        for op in ("gemm", "qgemm_u8"):
            nimbus_ms, ort_ms = ms[isa, op], ms["ort", op]
            rows.append({
                "op": op, "shape": [m, n, k], "isa": isa, "threads": threads,
                "nimbus_ms": nimbus_ms, "ort_ms": ort_ms, "speedup": ort_ms / nimbus_ms,
                "gops": gops(shape, nimbus_ms),
                "percent_of_peak": 100 * gops(shape, nimbus_ms) / peaks[isa],
            })
    return rows


def print_row(row) -> None:
    shape = "x".join(str(size) for size in row["shape"])
    print(f"{row['op']:<9} {shape:>16} {row['isa']:>12} {row['nimbus_ms']:>10.3f} "
          f"{row['ort_ms']:>10.3f} {row['speedup']:>8.2f} {row['gops']:>8.1f} "
          f"{row['percent_of_peak']:>7.0f}%", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (under 2 minutes)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    options = parser.parse_args()
    repeats, min_seconds = (5, 0.05) if options.quick else (20, 0.5)

    isas = kernels.available_isas()
    peaks = {isa: peak_gops(isa, options.threads, repeats, min_seconds) for isa in isas}
    print(f"threads={options.threads}; peak GOPS (M,N,K={PEAK_SHAPE}): " +
          ", ".join(f"{isa} {value:.0f}" for isa, value in peaks.items()))
    print(f"{'op':<9} {'M x N x K':>16} {'isa':>12} {'nimbus ms':>10} {'ort ms':>10} "
          f"{'speedup':>8} {'GOPS':>8} {'of peak':>8}")
    rows = []
    for shape in SHAPES:
        for row in benchmark_shape(shape, isas, peaks, options.threads, repeats, min_seconds):
            print_row(row)
            rows.append(row)
    if options.json:
        with open(options.json, "w") as file:
            json.dump({"peak_gops": peaks, "rows": rows}, file, indent=1)


if __name__ == "__main__":
    main()
