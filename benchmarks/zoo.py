"""torchvision's models beyond benchmarks/models.py's four: nimbus (int8 and float) against ONNX
Runtime (int8 and float), on the same inputs and thread count, in one run, with each runtime's
accuracy beside its speed.

torchvision is not a dependency of nimbus, and PyPI's torchvision does not import beside the
CPU torch wheel that the tests install, so this runs in an environment of its own:

    python -m venv zoo && zoo/bin/pip install torch==2.14.1 torchvision==0.29.1 \\
        onnxruntime onnx && zoo/bin/pip install -e '.[compiler]'
    zoo/bin/python benchmarks/zoo.py [--models efficientnet_b0,regnet_y_400mf,...]
                                     [--batch 1] [--threads 2] [--json FILE]

Every model has random weights (torchvision's initialization) and is timed as benchmarks/
models.py times its models (interleaved rounds, medians, ONNX Runtime's exports and QDQ
quantization with the same random calibration images). Accuracy: float is the largest error
against PyTorch relative to its largest output; int8 the cosine similarity with PyTorch's float
output, for nimbus and for ONNX Runtime. Segmentation models report their "out" map. Ratios are
ONNX Runtime time / nimbus time (above 1: nimbus is faster).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
CLASSIFIERS = ["resnet50", "resnext50_32x4d", "mobilenet_v3_large", "efficientnet_b0",
               "regnet_y_400mf", "densenet121", "googlenet", "squeezenet1_0",
               "shufflenet_v2_x1_0", "mnasnet1_0", "convnext_tiny", "swin_t", "vit_b_16"]
SEGMENTERS = ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"]


def _benchmark_models():
    """benchmarks/models.py (timing, ONNX export and quantization), under its own name."""
    spec = importlib.util.spec_from_file_location("model_benchmark", ROOT / "benchmarks" / "models.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class MainOutput(torch.nn.Module):
    """A segmentation model's "out" map (the others return their logits unchanged)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        return out["out"] if isinstance(out, dict) else out


def build(name: str) -> torch.nn.Module:
    import torchvision.models as classification
    import torchvision.models.segmentation as segmentation

    torch.manual_seed(0)
    if name in SEGMENTERS:
        model = getattr(segmentation, name)(weights=None, weights_backbone=None)
    else:
        model = getattr(classification, name)(weights=None)
    return MainOutput(model).eval()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a.ravel() @ b.ravel() / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def benchmark(name: str, bench, options, folder: Path) -> dict:
    import onnxruntime as ort

    import nimbus

    model = build(name)
    spec = bench.ModelSpec(lambda: model, bench.images(224), ("x",), name)
    rng = np.random.default_rng(0)
    calibration = [spec.make_inputs(rng, 4) for _ in range(4)]
    x = spec.make_inputs(np.random.default_rng(1), options.batch)
    with torch.no_grad():
        reference = model(torch.from_numpy(x[0])).numpy()
    row = {"model": name, "batch": options.batch}
    started = time.perf_counter()
    example = (torch.from_numpy(x[0]),)
    sessions = {
        "nimbus float": nimbus.load(nimbus.compile(model, example).data, threads=options.threads),
        "nimbus int8": nimbus.load(nimbus.compile(model, example,
                                                  calibration=[c[0] for c in calibration]).data,
                                   threads=options.threads)}
    row["nimbus_compile_s"] = time.perf_counter() - started
    float_path, int8_path = folder / f"{name}.onnx", folder / f"{name}_int8.onnx"
    bench.export_onnx(model, spec, x, float_path)
    bench.quantize_onnx(float_path, int8_path, spec, calibration)
    for key, path in (("onnxruntime float", float_path), ("onnxruntime int8", int8_path)):
        sessions[key] = ort.InferenceSession(str(path), bench.ort_options(options.threads),
                                             providers=["CPUExecutionProvider"])
    calls = {key: (lambda s=s: s.run({"x": x[0]})) if key.startswith("nimbus")
             else (lambda s=s: s.run(None, {"x": x[0]})) for key, s in sessions.items()}
    outputs = {key: np.asarray(list(call().values())[0] if key.startswith("nimbus")
                               else call()[0]) for key, call in calls.items()}
    scale = float(np.abs(reference).max()) or 1.0
    for kind in ("float", "int8"):
        for runtime in ("nimbus", "onnxruntime"):
            out = outputs[f"{runtime} {kind}"]
            row[f"{runtime}_{kind}_accuracy"] = (float(np.abs(out - reference).max()) / scale
                                                 if kind == "float" else cosine(out, reference))
    timings = bench.time_interleaved(calls, options.repeats, 2.0, 20.0, 4, lambda key, fn: fn())
    for key, timing in timings.items():
        row[f"{key.replace(' ', '_')}_ms"] = timing["median_ms"]
    for kind in ("float", "int8"):
        row[f"{kind}_speedup"] = row[f"onnxruntime_{kind}_ms"] / row[f"nimbus_{kind}_ms"]
    return row


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(CLASSIFIERS + SEGMENTERS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20, help="runs per runtime")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    options = parser.parse_args(argv)
    try:
        import torchvision  # noqa: F401
    except ImportError as err:
        parser.exit(2, f"zoo.py needs torchvision ({err}); see this file's docstring for the "
                       f"environment it runs in\n")
    bench = _benchmark_models()
    torch.set_num_threads(options.threads)
    rows = []
    print(f"{'model':28s} {'int8 ms':>8s} {'ORT':>8s} {'ratio':>6s}  {'float ms':>8s} "
          f"{'ORT':>8s} {'ratio':>6s}  {'float err':>9s}  {'int8 cos (ORT)':>16s}")
    with tempfile.TemporaryDirectory() as folder:
        for name in options.models.split(","):
            try:
                row = benchmark(name, bench, options, Path(folder))
            except Exception as err:  # one model's failure does not stop the others
                print(f"{name:28s} failed: {type(err).__name__}: {str(err)[:300]}", flush=True)
                rows.append({"model": name, "error": f"{type(err).__name__}: {err}"})
                continue
            rows.append(row)
            print(f"{name:28s} {row['nimbus_int8_ms']:8.2f} {row['onnxruntime_int8_ms']:8.2f} "
                  f"{row['int8_speedup']:5.2f}x  {row['nimbus_float_ms']:8.2f} "
                  f"{row['onnxruntime_float_ms']:8.2f} {row['float_speedup']:5.2f}x  "
                  f"{row['nimbus_float_accuracy']:9.1e}  {row['nimbus_int8_accuracy']:.4f} "
                  f"({row['onnxruntime_int8_accuracy']:.4f})", flush=True)
    if options.json:
        Path(options.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
