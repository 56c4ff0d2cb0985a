"""Times the packed int8 GEMM of nimbus.runtime._kernels against ONNX Runtime.

For each shape (M, N, K) and each ISA path that this machine runs, it compares
    qgemm_s32 (u8 x s8 -> s32)             with ORT's MatMulInteger, and
    qgemm (u8 x s8 -> u8, requantized)     with ORT's QLinearMatMul (per-column weight scales),
both with constant, pre-packed weights and the same thread count. Times are medians over
repeats. Each path's "peak" is its multiply instruction alone over registers (tdpbusd,
vpdpbusd, vpmaddwd; the portable kernel on operands in cache), on the same threads; every row
reports the share of it that the shape reaches, against the peak measured again just before
the shape's timings (a shared host's speed drifts by tens of percent within a run, so a peak
taken once at the start put rows past 100%), and whether its result equals the first path's
bit for bit.

Convolutions (op "conv": the distinct layers of ResNet-18 and the depthwise 3x3 layers of
MobileNetV2, at batch 1 and 8) compare qconv2d (u8 -> u8, requantized per channel) on NHWC
activations with ORT's QLinearConv on NCHW ones, a one-node model. Each library gets the layout
it wants: ORT's time includes whatever layout work it does itself (its graph optimizer may
rewrite the node to an NHWC kernel between transposes), and nimbus's excludes any transpose,
which a model compiled to NHWC does not need.

Float32 ops: "sgemm" compares sgemm (x @ w.T + bias, weights packed once) with ORT's Gemm
(transB=1, constant B and bias) and numpy's x @ w.T + bias; "sconv" compares sconv2d (NHWC,
bias) on the same ResNet-18 and MobileNetV2 layers with ORT's Conv (NCHW) and with numpy
im2col + matmul + bias (NHWC), the path the runtime took before the native kernels.

    python benchmarks/kernels.py [--threads 2] [--quick] [--ops gemm,conv,sgemm,sconv]
                                 [--json FILE]

Without onnxruntime (a host that has only numpy and nimbus, e.g. to time the AMX path where it
runs), the int8 ops are timed on every path with empty ORT columns and the float ops are skipped.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from nimbus.runtime import _kernels as native

try:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
except ImportError:
    ort = None

from nimbus import runtime as kernels

SHAPES = [(1, 4096, 4096), (64, 4096, 4096), (256, 1024, 1024), (1024, 1024, 1024),
          (128, 768, 3072)]
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


# (C, H, W, K, R (= S), stride, pad, groups); pad is the same on every side.
RESNET18_CONVS = [
    (3, 224, 224, 64, 7, 2, 3, 1),
    (64, 56, 56, 64, 3, 1, 1, 1),
    (64, 56, 56, 128, 3, 2, 1, 1),
    (64, 56, 56, 128, 1, 2, 0, 1),
    (128, 28, 28, 128, 3, 1, 1, 1),
    (128, 28, 28, 256, 3, 2, 1, 1),
    (256, 14, 14, 256, 3, 1, 1, 1),
    (256, 14, 14, 512, 3, 2, 1, 1),
    (512, 7, 7, 512, 3, 1, 1, 1),
]
MOBILENET_V2_DEPTHWISE = [
    (32, 112, 112, 32, 3, 1, 1, 32),
    (96, 112, 112, 96, 3, 2, 1, 96),
    (144, 56, 56, 144, 3, 1, 1, 144),
    (192, 28, 28, 192, 3, 1, 1, 192),
    (384, 14, 14, 384, 3, 1, 1, 384),
    (576, 14, 14, 576, 3, 1, 1, 576),
    (960, 7, 7, 960, 3, 1, 1, 960),
]
CONV_BATCHES = (1, 8)


def gops(shape, ms: float) -> float:
    m, n, k = shape
    return 2 * m * n * k / (ms * 1e6)


def same_as_first_path(run, isas, out: np.ndarray) -> dict[str, bool]:
    """Whether each path's result (`run(isa)` writes it to `out`) equals the first path's, bit
    for bit: on a host with AMX, the AMX kernel checked at the benchmark's sizes."""
    results = {}
    for isa in isas:
        run(isa)
        results[isa] = out.copy()
    return {isa: bool(np.array_equal(results[isa], results[isas[0]])) for isa in isas}


def peak_gops(isa: str, threads: int) -> float:
    """The path's multiply instruction alone (tdpbusd, vpdpbusd, vpmaddwd; the portable kernel
    on operands in cache), over registers, on `threads` threads: the median of 5 runs of 50 ms."""
    return float(np.median([native.multiply_peak_gops(isa, threads) for _ in range(5)]))


def benchmark_shape(shape, isas, threads: int, repeats: int, min_seconds: float):
    m, n, k = shape
    rng = np.random.default_rng(list(shape))
    a = rng.integers(0, 256, size=(m, k), dtype=np.uint8)
    w = rng.integers(-128, 128, size=(n, k), dtype=np.int8)
    a_zero_point, a_scale, out_scale, out_zero_point = 128, 0.02, 0.5, 128
    w_scales = rng.uniform(0.001, 0.01, size=n).astype(np.float32)
    multiplier = (np.float64(a_scale) * w_scales / out_scale).astype(np.float32)

    calls = {}
    if ort is not None:
        feeds = {"a": a}
        integer = matmul_integer_session(w, a_zero_point, threads)
        qlinear = qlinear_matmul_session(w, a_zero_point, a_scale, w_scales, out_scale,
                                         out_zero_point, threads)
        calls["ort", "gemm"] = lambda: integer.run(None, feeds)
        calls["ort", "qgemm_u8"] = lambda: qlinear.run(None, feeds)
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
    # After ORT's sessions are made, whose threads would take cores from the peak's helpers;
    # interference only lowers a peak, so the best of three.
    time.sleep(SPIN_SETTLE_SECONDS)
    peaks = {isa: max(native.multiply_peak_gops(isa, threads) for _ in range(3)) for isa in isas}
    ms = {name: median_ms(call, repeats, min_seconds) for name, call in calls.items()}
    exact = {op: same_as_first_path(lambda isa, op=op: calls[isa, op](), isas, out)
             for op, out in (("gemm", out_s32), ("qgemm_u8", out_u8))}
    rows = []
    for isa in isas:
        for op in ("gemm", "qgemm_u8"):
            nimbus_ms, ort_ms = ms[isa, op], ms.get(("ort", op))
            rows.append({
                "op": op, "shape": [m, n, k], "isa": isa, "threads": threads,
                "same_as_first_path": exact[op][isa],
                "nimbus_ms": nimbus_ms, "ort_ms": ort_ms, "speedup": speedup(ort_ms, nimbus_ms),
                "gops": gops(shape, nimbus_ms), "peak_gops": peaks[isa],
                "percent_of_peak": 100 * gops(shape, nimbus_ms) / peaks[isa],
            })
    return rows


def qlinear_conv_session(w: np.ndarray, a_zero_point: int, a_scale: float,
                         w_scales: np.ndarray, out_scale: float, out_zero_point: int,
                         stride: int, pad: int, groups: int, threads: int):
    """x [N, C, H, W] u8 -> QLinearConv u8 [N, K, OH, OW] with per-channel weight scales."""
    arrays = {
        "x_scale": np.array(a_scale, dtype=np.float32),
        "x_zp": np.array(a_zero_point, dtype=np.uint8),
        "w": w,
        "w_scale": w_scales.astype(np.float32),
        "w_zp": np.zeros(w.shape[0], dtype=np.int8),
        "y_scale": np.array(out_scale, dtype=np.float32),
        "y_zp": np.array(out_zero_point, dtype=np.uint8),
    }
    initializers = [numpy_helper.from_array(value, name) for name, value in arrays.items()]
    node = helper.make_node("QLinearConv", ["x", "x_scale", "x_zp", "w", "w_scale", "w_zp",
                                            "y_scale", "y_zp"], ["y"],
                            kernel_shape=list(w.shape[2:]), strides=[stride, stride],
                            pads=[pad] * 4, group=groups)
    x_info = helper.make_tensor_value_info("x", TensorProto.UINT8, ["N", "C", "H", "W"])
    y_info = helper.make_tensor_value_info("y", TensorProto.UINT8, ["N", "K", "OH", "OW"])
    return ort_session([node], [x_info], [y_info], initializers, threads)


def benchmark_conv(batch: int, layer, isas, threads: int, repeats: int, min_seconds: float):
    c, h, w_size, k, r, stride, pad, groups = layer
    rng = np.random.default_rng([batch, *layer])
    x_nchw = rng.integers(0, 256, size=(batch, c, h, w_size), dtype=np.uint8)
    x_nhwc = np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1))
    w = rng.integers(-128, 128, size=(k, c // groups, r, r), dtype=np.int8)
    a_zero_point, a_scale, out_scale, out_zero_point = 128, 0.02, 0.5, 128
    w_scales = rng.uniform(0.001, 0.01, size=k).astype(np.float32)
    multiplier = (np.float64(a_scale) * w_scales / out_scale).astype(np.float32)
    out_h = (h + 2 * pad - r) // stride + 1
    out_w = (w_size + 2 * pad - r) // stride + 1
    out = np.empty((batch, out_h, out_w, k), dtype=np.uint8)
    calls = {}
    if ort is not None:
        session = qlinear_conv_session(w, a_zero_point, a_scale, w_scales, out_scale,
                                       out_zero_point, stride, pad, groups, threads)
        calls["ort"] = lambda: session.run(None, {"x": x_nchw})
    for isa in isas:
        packed = kernels.pack_conv_weights(w, groups, isa)
        calls[isa] = lambda packed=packed: kernels.qconv2d(
            x_nhwc, packed, a_zero_point, None, multiplier, out_zero_point, 0, 255, "u8",
            stride=(stride, stride), padding=(pad,) * 4, threads=threads, out=out)
    ms = {name: median_ms(call, repeats, min_seconds) for name, call in calls.items()}
    exact = same_as_first_path(lambda isa: calls[isa](), isas, out)
    operations = 2 * batch * out_h * out_w * k * (c // groups) * r * r
    return [{
        "op": "conv", "shape": [batch, c, h, w_size, k, r, r, stride, pad, groups], "isa": isa,
        "threads": threads, "same_as_first_path": exact[isa], "nimbus_ms": ms[isa], "ort_ms": ms.get("ort"),
        "speedup": speedup(ms.get("ort"), ms[isa]), "gops": operations / (ms[isa] * 1e6),
    } for isa in isas]


def speedup(ort_ms: float | None, nimbus_ms: float) -> float | None:
    return None if ort_ms is None else ort_ms / nimbus_ms


def cell(value: float | None, width: int, digits: int) -> str:
    """A number of the table, or '-' where ONNX Runtime did not run."""
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def mismatch(row) -> str:
    return "" if row["same_as_first_path"] else "  RESULT DIFFERS FROM THE FIRST PATH"


def print_conv_row(row) -> None:
    shape = ",".join(str(size) for size in row["shape"])
    print(f"{row['op']:<5} {shape:>30} {row['isa']:>12} {row['nimbus_ms']:>10.3f} "
          f"{cell(row['ort_ms'], 10, 3)} {cell(row['speedup'], 8, 2)} {row['gops']:>8.1f}"
          f"{mismatch(row)}", flush=True)


def print_row(row) -> None:
    shape = "x".join(str(size) for size in row["shape"])
    print(f"{row['op']:<9} {shape:>16} {row['isa']:>12} {row['nimbus_ms']:>10.3f} "
          f"{cell(row['ort_ms'], 10, 3)} {cell(row['speedup'], 8, 2)} {row['gops']:>8.1f} "
          f"{row['percent_of_peak']:>7.0f}%{mismatch(row)}", flush=True)


def benchmark_convs(isas, threads: int, repeats: int, min_seconds: float):
    print(f"threads={threads}; conv shape: N,C,H,W,K,R,S,stride,pad,groups; nimbus NHWC, "
          f"ORT QLinearConv NCHW")
    print(f"{'op':<5} {'shape':>30} {'isa':>12} {'nimbus ms':>10} {'ort ms':>10} "
          f"{'speedup':>8} {'GOPS':>8}")
    rows = []
    for batch in CONV_BATCHES:
        for layer in RESNET18_CONVS + MOBILENET_V2_DEPTHWISE:
            for row in benchmark_conv(batch, layer, isas, threads, repeats, min_seconds):
                print_conv_row(row)
                rows.append(row)
    return rows


def benchmark_gemms(isas, threads: int, repeats: int, min_seconds: float):
    peaks = {isa: peak_gops(isa, threads) for isa in isas}
    print(f"threads={threads}; peak GOPS (the multiply instruction alone; rows relate to it "
          f"measured again before each shape): " +
          ", ".join(f"{isa} {value:.0f}" for isa, value in peaks.items()))
    print(f"{'op':<9} {'M x N x K':>16} {'isa':>12} {'nimbus ms':>10} {'ort ms':>10} "
          f"{'speedup':>8} {'GOPS':>8} {'of peak':>8}")
    rows = []
    for shape in SHAPES:
        for row in benchmark_shape(shape, isas, threads, repeats, min_seconds):
            print_row(row)
            rows.append(row)
    return peaks, rows


# ---- float32 ---------------------------------------------------------------------------------

SGEMM_SHAPES = [(1, 768, 768), (1, 4096, 1000), (16, 768, 768), (128, 768, 3072),
                (128, 3072, 768), (1024, 1024, 1024), (3136, 64, 576)]


def gemm_session(w: np.ndarray, bias: np.ndarray, threads: int):
    """x [M, K] f32 -> Gemm(x, w, bias, transB=1) f32 [M, N], w and bias constant."""
    initializers = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "bias")]
    node = helper.make_node("Gemm", ["x", "w", "bias"], ["y"], transB=1)
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", w.shape[1]])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", w.shape[0]])
    return ort_session([node], [x_info], [y_info], initializers, threads)


def float_conv_session(w: np.ndarray, bias: np.ndarray, stride: int, pad: int, groups: int,
                       threads: int):
    """x [N, C, H, W] f32 -> Conv(x, w, bias) f32 [N, K, OH, OW]."""
    initializers = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "bias")]
    node = helper.make_node("Conv", ["x", "w", "bias"], ["y"], kernel_shape=list(w.shape[2:]),
                            strides=[stride, stride], pads=[pad] * 4, group=groups)
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "C", "H", "W"])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "K", "OH", "OW"])
    return ort_session([node], [x_info], [y_info], initializers, threads)


def numpy_conv_nhwc(x: np.ndarray, w_matrix: np.ndarray, bias: np.ndarray, r: int,
                    stride: int, pad: int, groups: int) -> np.ndarray:
    """im2col + matmul + bias on NHWC x; w_matrix [groups, KH * KW * C / groups, K / groups]
    in (ky, kx, c) order."""
    n, h, width, c = x.shape
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out_h = (h + 2 * pad - r) // stride + 1
    out_w = (width + 2 * pad - r) // stride + 1
    windows = np.lib.stride_tricks.sliding_window_view(padded, (r, r), axis=(1, 2))
    windows = windows[:, ::stride, ::stride][:, :out_h, :out_w]  # [N, OH, OW, C, R, R]
    group_channels = c // groups
    outputs = []
    for g in range(groups):
        taps = windows[:, :, :, g * group_channels:(g + 1) * group_channels]
        columns = taps.transpose(0, 1, 2, 4, 5, 3).reshape(n * out_h * out_w, -1)
        outputs.append(columns @ w_matrix[g])
    out = outputs[0] if groups == 1 else np.concatenate(outputs, axis=1)
    return (out + bias).reshape(n, out_h, out_w, -1)


# OpenBLAS's threads spin for about 2^28 cycles after each call (its THREAD_TIMEOUT), longer
# than SPIN_SETTLE_SECONDS: a kernel timed right after numpy would share a core with them.
BLAS_SETTLE_SECONDS = 0.3


def float_times(calls, isas, repeats: int, min_seconds: float):
    """Median ms of each call: the nimbus paths first, numpy last, each nimbus path after
    OpenBLAS's spinning threads of the previous row have gone to sleep."""
    ms = {}
    for isa in isas:
        time.sleep(BLAS_SETTLE_SECONDS)
        ms[isa] = median_ms(calls[isa], repeats, min_seconds)
    for name in ("ort", "numpy"):
        ms[name] = median_ms(calls[name], repeats, min_seconds)
    return ms


def float_row(op: str, shape, isa: str, threads: int, ms, operations: int):
    return {"op": op, "shape": list(shape), "isa": isa, "threads": threads,
            "nimbus_ms": ms[isa], "ort_ms": ms["ort"], "numpy_ms": ms["numpy"],
            "speedup": ms["ort"] / ms[isa], "gflops": operations / (ms[isa] * 1e6),
            "ort_gflops": operations / (ms["ort"] * 1e6)}


def benchmark_sgemm(shape, isas, threads: int, repeats: int, min_seconds: float):
    m, n, k = shape
    rng = np.random.default_rng(list(shape))
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((n, k), dtype=np.float32)
    w_t = np.ascontiguousarray(w.T)
    bias = rng.standard_normal(n, dtype=np.float32)
    session = gemm_session(w, bias, threads)
    calls = {"ort": lambda: session.run(None, {"x": x}), "numpy": lambda: x @ w_t + bias}
    # Results go into a buffer allocated once, as ORT's arena allocator reuses its own.
    out = np.empty((m, n), dtype=np.float32)
    for isa in isas:
        packed = native.pack_sgemm_weights(w, isa=isa)
        calls[isa] = lambda packed=packed: native.sgemm(x, packed, bias, threads=threads, out=out)
    ms = float_times(calls, isas, repeats, min_seconds)
    return [float_row("sgemm", shape, isa, threads, ms, 2 * m * n * k) for isa in isas]


def benchmark_sconv(batch: int, layer, isas, threads: int, repeats: int, min_seconds: float):
    c, h, w_size, k, r, stride, pad, groups = layer
    rng = np.random.default_rng([batch, *layer])
    x_nchw = rng.standard_normal((batch, c, h, w_size), dtype=np.float32)
    x_nhwc = np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1))
    w = rng.standard_normal((k, c // groups, r, r), dtype=np.float32)
    bias = rng.standard_normal(k, dtype=np.float32)
    session = float_conv_session(w, bias, stride, pad, groups, threads)
    # [groups, KH * KW * C / groups, K / groups], depth in (ky, kx, c) order like NHWC windows.
    w_matrix = np.ascontiguousarray(
        w.reshape(groups, k // groups, c // groups, r, r).transpose(0, 3, 4, 2, 1)
        .reshape(groups, r * r * (c // groups), k // groups))
    calls = {"ort": lambda: session.run(None, {"x": x_nchw}),
             "numpy": lambda: numpy_conv_nhwc(x_nhwc, w_matrix, bias, r, stride, pad, groups)}
    out_h = (h + 2 * pad - r) // stride + 1
    out_w = (w_size + 2 * pad - r) // stride + 1
    out = np.empty((batch, out_h, out_w, k), dtype=np.float32)
    for isa in isas:
        packed = native.pack_sconv_weights(w, groups, isa=isa)
        calls[isa] = lambda packed=packed: native.sconv2d(
            x_nhwc, packed, bias, stride=(stride, stride), padding=(pad,) * 4, threads=threads,
            out=out)
    ms = float_times(calls, isas, repeats, min_seconds)
    operations = 2 * batch * out_h * out_w * k * (c // groups) * r * r
    return [float_row("sconv", [batch, *layer], isa, threads, ms, operations) for isa in isas]


def print_float_row(row) -> None:
    shape = ",".join(str(size) for size in row["shape"])
    print(f"{row['op']:<5} {shape:>30} {row['isa']:>12} {row['nimbus_ms']:>10.3f} "
          f"{row['ort_ms']:>10.3f} {row['numpy_ms']:>10.3f} {row['speedup']:>8.2f} "
          f"{row['gflops']:>8.1f} {row['ort_gflops']:>8.1f}", flush=True)


def benchmark_float(ops, isas, threads: int, repeats: int, min_seconds: float):
    print(f"threads={threads}; sgemm shape: M,N,K (ORT Gemm transB=1 + bias); sconv shape: "
          f"N,C,H,W,K,R,S,stride,pad,groups (nimbus NHWC, ORT Conv NCHW, numpy im2col NHWC)")
    print(f"{'op':<5} {'shape':>30} {'isa':>12} {'nimbus ms':>10} {'ort ms':>10} "
          f"{'numpy ms':>10} {'speedup':>8} {'GFLOPS':>8} {'ORT GF':>8}")
    rows = []
    if "sgemm" in ops:
        for shape in SGEMM_SHAPES:
            rows += benchmark_sgemm(shape, isas, threads, repeats, min_seconds)
            for row in rows[-len(isas):]:
                print_float_row(row)
    if "sconv" in ops:
        for batch in CONV_BATCHES:
            for layer in RESNET18_CONVS + MOBILENET_V2_DEPTHWISE:
                rows += benchmark_sconv(batch, layer, isas, threads, repeats, min_seconds)
                for row in rows[-len(isas):]:
                    print_float_row(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (under 2 minutes)")
    parser.add_argument("--ops", default="gemm,conv,sgemm,sconv",
                        help="comma-separated: gemm, conv, sgemm, sconv")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    options = parser.parse_args()
    repeats, min_seconds = (5, 0.05) if options.quick else (20, 0.5)
    ops = options.ops.split(",")

    isas = kernels.available_isas()
    rows = []
    if "gemm" in ops:
        peaks, gemm_rows = benchmark_gemms(isas, options.threads, repeats, min_seconds)
        rows += gemm_rows
    if "conv" in ops:
        rows += benchmark_convs(isas, options.threads, repeats, min_seconds)
    if ort is None:
        print("onnxruntime is not installed: no ORT times, and no float ops (sgemm, sconv)")
    elif "sgemm" in ops or "sconv" in ops:
        # --quick times the float ops on the selected path only; the others trail it by design.
        # The AMX path runs its float kernels on AVX512-VNNI, which has rows of its own.
        float_isas = [isa for isa in isas if isa != "amx"]
        float_isas = [kernels.selected_isa()] if options.quick else float_isas
        rows += benchmark_float(ops, float_isas, options.threads, repeats, min_seconds)
    if options.json:
        with open(options.json, "w") as file:
            json.dump({"peak_gops": peaks if "gemm" in ops else None, "rows": rows}, file,
                      indent=1)


if __name__ == "__main__":
    main()
