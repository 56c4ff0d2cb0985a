"""The main job, end to end: train the example CNN (examples/cnn.py) on a real data set
(scikit-learn's digits), compile it with nimbus in float and in int8 with real calibration
data, run both artifacts with the runtime, and compare accuracy and latency with ONNX Runtime
(float, and int8 through its own static quantization with the same calibration data) on the
same model, inputs and thread count.

    python examples/main_job.py [--threads 2] [--repeats 30] [--out DIR]

Latencies are medians over repeats, measured in this one run; ratios are ONNX Runtime time /
nimbus time (above 1: nimbus is faster).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from cnn import build
from digits_data import digit_images, top1, train

import nimbus


# The worker threads of the runtimes that ran before (training and export in PyTorch, ONNX
# Runtime's calibration and the previous session) keep spinning on the cores for up to about a
# second after their last work; on a 2-core host that made the next runtime's batch-8 latency
# 1.4x slower. Each runtime is measured after they have gone to sleep.
SETTLE_SECONDS = 1.0


def median_ms(run, repeats: int) -> float:
    run()  # warm up: first-call allocations and lazy initialization stay out of the numbers
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def onnx_sessions(model, calibration: list[np.ndarray], out: Path, threads: int) -> dict:
    """ONNX Runtime float and int8 (QDQ, per-channel weights, same calibration batches)."""
    import logging

    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    float_path, int8_path = out / "cnn.onnx", out / "cnn.int8.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(model, (torch.from_numpy(calibration[0][:1]),), str(float_path),
                          dynamo=False, input_names=["x"], output_names=["output"],
                          dynamic_axes={"x": {0: "N"}, "output": {0: "N"}}, opset_version=17)

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"x": batch}

    logging.getLogger().setLevel(logging.ERROR)  # quantize_static suggests optional preprocessing
    quantize_static(str(float_path), str(int8_path), Batches(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return {name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            for name, path in (("float", float_path), ("int8", int8_path))}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="keep the artifacts here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        return run(args, args.out)
    with tempfile.TemporaryDirectory(prefix="nimbus-main-job-") as folder:
        return run(args, Path(folder))


def run(args, out: Path) -> dict:
    """Train, compile, run and compare; returns each runtime's top-1 and latencies."""
    train_x, _, test_x, test_y = digit_images()
    model = train(build(), epochs=args.epochs)
    calibration = [train_x[i:i + 64] for i in range(0, 512, 64)]
    example = (torch.from_numpy(test_x[:1]),)
    started = time.perf_counter()
    nimbus.compile(model, example).save(out / "cnn.nimbus")
    nimbus.compile(model, example, calibration=calibration).save(out / "cnn.int8.nimbus")
    print(f"compiled float and int8 artifacts in {time.perf_counter() - started:.1f} s")

    runners = {}
    for name, path in (("float", out / "cnn.nimbus"), ("int8", out / "cnn.int8.nimbus")):
        session = nimbus.load(path, threads=args.threads)
        runners[f"nimbus {name}"] = lambda x, s=session: s.run({"x": x})["output"]
    for name, session in onnx_sessions(model, calibration, out, args.threads).items():
        runners[f"onnxruntime {name}"] = lambda x, s=session: s.run(None, {"x": x})[0]

    def pytorch(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    runners["pytorch eager float"] = pytorch

    rows = {}
    for name, run in runners.items():
        time.sleep(SETTLE_SECONDS)
        logits = np.concatenate([run(test_x[i:i + 64]) for i in range(0, len(test_x), 64)])
        rows[name] = {"top1": top1(logits, test_y),
                      **{f"batch {b}": median_ms(lambda r=run, x=test_x[:b]: r(x), args.repeats)
                         for b in (1, 8)}}
    print(f"\nexample CNN on digits ({len(test_x)} test images), {args.threads} threads, "
          f"median of {args.repeats} runs")
    print(f"{'runtime':<22} {'top-1 %':>8} {'batch 1 ms':>11} {'batch 8 ms':>11}")
    for name, row in rows.items():
        print(f"{name:<22} {row['top1']:>8.2f} {row['batch 1']:>11.3f} {row['batch 8']:>11.3f}")
    for kind in ("float", "int8"):
        ours, peer = rows[f"nimbus {kind}"], rows[f"onnxruntime {kind}"]
        print(f"{kind}: onnxruntime / nimbus latency = {peer['batch 1'] / ours['batch 1']:.2f}x "
              f"(batch 1), {peer['batch 8'] / ours['batch 8']:.2f}x (batch 8)")
    return rows


if __name__ == "__main__":
    main()
