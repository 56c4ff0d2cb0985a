"""Whole models on a CUDA GPU: nimbus's CUDA backend against PyTorch eager and torch.compile, on
the same inputs and device, in one run.

    python benchmarks/gpu_models.py [--models resnet18,bert] [--variants fp16,int8,fp32]
                                    [--batch 32] [--budget-s 300] [--json FILE]
                                    [--artifacts DIR] [--smoke]

Models are benchmarks/models.py's (torchvision's ResNet-18 and the BERT-base-sized encoder at
sequence 128, random weights). For each model, in this order while the time budget lasts (the
fp32 steps only where `--variants` names fp32):

    nimbus fp16      nimbus.compile(model.half(), target="cuda"): the graph is exported in fp16,
                     so every layer runs fp16 Triton kernels with fp32 accumulation
    nimbus int8      nimbus.compile(model, calibration=..., target="cuda"): int8 layers
    nimbus fp32      nimbus.compile(model, target="cuda"): fp32 kernels at float32 accuracy
                     (three TF32 tensor-core products per dot, `_common.dot_precision`)
    pytorch eager / torch.compile (default mode), each in fp16 and fp32 (fp32 with TF32 off
                     for matrix products and cuDNN, the precision nimbus's fp32 kernels keep)

Every nimbus artifact is loaded with `nimbus.load(data, target="cuda")` and checked first:
fp16 and fp32 against PyTorch in the same precision (relative error), int8 against the CPU
backend on the same inputs (mismatching elements: 0 where every layer is integer; where float
layers sit between them, relative error at most 1e-3) and against PyTorch fp32 (cosine).
Times are medians of `triton.testing.do_bench` (CUDA events, after warm-up) over calls that
keep the data on the device (`Session.run_device`, which replays the CUDA graph captured on the
first run; the peers are called on device tensors); `run_ms` is a whole `Session.run` with numpy
in and out, host copies included (median of host-timed calls). `profile` is `Session.profile`:
each step's median device time in an eager run; the table adds a line per variant with the
steps' time by op and launcher, largest first. Ratios are peer time / nimbus
time: above 1, nimbus is faster. The first run of a session (Triton compilation, autotuning,
graph capture) is reported apart as `first_run_s`.

`--smoke` runs LeNet at batch 2 on whatever device torch has (Triton's interpreter on a CPU),
without torch.compile: it checks the script, not the speed.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if not torch.cuda.is_available():  # the kernels must be set up for the interpreter before import
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _benchmark_models():
    """benchmarks/models.py (model definitions and inputs), loaded under its own name: `models`
    is the tests' model package, which that file puts on sys.path."""
    spec = importlib.util.spec_from_file_location("model_benchmark", ROOT / "benchmarks" / "models.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_device_ms(call) -> float:
    """Median ms of `call` with CUDA events (do_bench), or host-timed off a GPU."""
    if torch.cuda.is_available():
        from triton.testing import do_bench

        return float(do_bench(call, warmup=25, rep=200, return_mode="median"))
    return time_host_ms(call, repeats=1)


def time_host_ms(call, repeats: int = 20) -> float:
    call()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - started)
    return float(np.median(samples)) * 1e3


def flat_outputs(result) -> list[torch.Tensor]:
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, dict):
        return [t for value in result.values() for t in flat_outputs(value)]
    return [t for value in result for t in flat_outputs(value)]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.double().cpu(), expected.double().cpu()
    if not torch.isfinite(a).all():
        return float("inf")
    norm = torch.linalg.vector_norm(e).item()
    return torch.linalg.vector_norm(a - e).item() / (norm or 1.0)


def cosine(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.double().flatten().cpu(), expected.double().flatten().cpu()
    return float(torch.dot(a, e) / (torch.linalg.vector_norm(a) * torch.linalg.vector_norm(e)))


class ModelRun:
    """One model at one batch: its inputs, its PyTorch peers, and each nimbus variant."""

    def __init__(self, name: str, bench, batch: int, device: torch.device, args):
        self.name, self.device, self.args = name, device, args
        self.spec = bench.MODELS[name]
        rng = np.random.default_rng(0)
        model = self.spec.factory().eval()
        self.models = {"fp32": model, "int8": model, "fp16": copy.deepcopy(model).half()}  # on the CPU
        self.arrays = self.spec.make_inputs(rng, batch)
        self.example = tuple(torch.from_numpy(a[:1]) for a in self.arrays)
        self.calibration = [tuple(self.spec.make_inputs(rng, 8)) for _ in range(2)]
        self.calibration = [batch[0] if len(batch) == 1 else batch for batch in self.calibration]
        self.row: dict = {"model": name, "batch": batch, "description": self.spec.description,
                          "variants": {}, "peers": {}}
        self.reference: dict[str, list[torch.Tensor]] = {}

    def inputs(self, dtype: torch.dtype, device) -> list[torch.Tensor]:
        """The model's inputs on `device`, float inputs in `dtype` (token ids stay integers)."""
        return [torch.from_numpy(a).to(device).to(dtype) if a.dtype.kind == "f"
                else torch.from_numpy(a).to(device) for a in self.arrays]


    # ---- peers ------------------------------------------------------------------------------
    def peers(self, dtype: torch.dtype, label: str, compile_peer: bool) -> None:
        model = copy.deepcopy(self.models[label]).to(self.device)
        inputs = self.inputs(dtype, self.device)
        with torch.inference_mode():
            self.reference[label] = [t.float() for t in flat_outputs(model(*inputs))]
            self.row["peers"][f"pytorch eager {label}"] = {"ms": time_device_ms(lambda: model(*inputs))}
            if not compile_peer:
                return
            started = time.perf_counter()
            compiled = torch.compile(model)
            compiled(*inputs)
            self.row["peers"][f"torch.compile {label}"] = {
                "ms": time_device_ms(lambda: compiled(*inputs)),
                "compile_s": time.perf_counter() - started}

    # ---- nimbus -----------------------------------------------------------------------------
    def nimbus(self, label: str) -> None:
        from nimbus.runtime.session import Session

        import nimbus

        variant = self.row["variants"].setdefault(label, {})
        dtype = torch.float16 if label == "fp16" else torch.float32
        model = self.models[label]
        example = tuple(t.to(dtype) if t.is_floating_point() else t for t in self.example)
        prebuilt = self.args.artifacts / f"{self.name}.{label}.nimbus" if self.args.artifacts else None
        if prebuilt is not None and prebuilt.exists():
            data = prebuilt.read_bytes()
            variant["compiled_from"] = str(prebuilt)
        else:
            started = time.perf_counter()
            data = nimbus.compile(model, example, target="cuda",
                                  calibration=self.calibration if label == "int8" else None).data
            variant["compile_s"] = time.perf_counter() - started
        variant["artifact_bytes"] = len(data)
        started = time.perf_counter()
        session = nimbus.load(data, target="cuda")
        variant["load_s"] = time.perf_counter() - started
        names = [spec.name for spec in session.inputs]
        feeds = dict(zip(names, self.inputs(dtype, session.device)))
        started = time.perf_counter()
        outputs = flat_outputs(session.run_device(feeds))
        if session.device.type == "cuda":
            torch.cuda.synchronize()
        variant["first_run_s"] = time.perf_counter() - started
        variant["cuda_graphs"] = bool(getattr(session, "_use_graphs", False))
        variant["torch_ops"] = session.torch_ops()
        if label == "int8":
            host = {name: t.cpu().numpy() for name, t in feeds.items()}
            expected = [torch.from_numpy(a) for a in Session(data).run(host).values()]
            variant["mismatches"] = int(sum((a.cpu() != e).sum().item() for a, e in zip(outputs, expected)))
            variant["relative_error_vs_cpu"] = max(relative_error(a, e) for a, e in zip(outputs, expected))
            variant["cosine_vs_fp32"] = min(cosine(a.float(), e) for a, e in
                                           zip(outputs, self.reference.get("fp32", expected)))
            # Integer layers match the CPU bit for bit; where float layers sit between them
            # (an encoder's layer norm, softmax, GELU), float rounding differs by device.
            variant["ok"] = variant["mismatches"] == 0 or variant["relative_error_vs_cpu"] <= 1e-3
        else:
            errors = [relative_error(a, e) for a, e in zip(outputs, self.reference[label])]
            variant["relative_error"] = max(errors)
            variant["tolerance"] = 1e-2 if label == "fp16" else 1e-4
            variant["ok"] = variant["relative_error"] <= variant["tolerance"]
        variant["ms"] = time_device_ms(lambda: session.run_device(feeds))
        variant["profile"] = session.profile(feeds, repeats=10 if session.device.type == "cuda" else 1)
        host_feeds = {name: t.cpu().numpy() for name, t in feeds.items()}
        variant["run_ms"] = time_host_ms(lambda: session.run(host_feeds),
                                         repeats=10 if session.device.type == "cuda" else 1)


def attempt(record: dict, key: str, work) -> None:
    """Run one measurement; a failure is recorded under `key` and the run goes on."""
    try:
        work()
    except Exception as err:  # noqa: BLE001 (one failure must not hide the other numbers)
        record.setdefault("failures", {})[key] = f"{type(err).__name__}: {err}"[:400]
        record.setdefault("traces", {})[key] = traceback.format_exc()[-3000:]
        print(f"  {key} FAILED: {type(err).__name__}: {str(err)[:200]}", flush=True)


def benchmark(name: str, bench, args, device, deadline: float, save) -> dict:
    run = ModelRun(name, bench, args.batch, device, args)
    row = run.row
    variants = args.variants.split(",")
    steps = [("peers fp32", lambda: run.peers(torch.float32, "fp32", compile_peer=False)),
             ("peers fp16", lambda: run.peers(torch.float16, "fp16", compile_peer=not args.smoke))]
    steps += [(f"nimbus {label}", lambda label=label: run.nimbus(label))
              for label in ("fp16", "int8", "fp32") if label in variants]
    if "fp32" in variants and not args.smoke:
        steps.append(("torch.compile fp32", lambda: run.peers(torch.float32, "fp32", compile_peer=True)))
    for key, work in steps:
        if time.monotonic() > deadline:
            row.setdefault("skipped", []).append(key)
            continue
        print(f"[{name} b{args.batch}] {key}", flush=True)
        attempt(row, key, work)
        save()
    return row


def profile_summary(profile: list[dict], top: int = 6) -> str:
    """The steps' time by op and launcher, largest first: where a variant's time goes."""
    totals: dict[tuple, list] = {}
    for step in profile:
        entry = totals.setdefault((step["op"], step["launcher"]), [0.0, 0])
        entry[0] += step["ms"]
        entry[1] += 1
    ranked = sorted(totals.items(), key=lambda item: -item[1][0])
    parts = [f"{op} {launcher} {ms:.3f} ms ({count})" for (op, launcher), (ms, count) in ranked[:top]]
    return f"steps {sum(step['ms'] for step in profile):.3f} ms: " + "; ".join(parts)


def format_table(rows: list[dict]) -> str:
    lines = [f"{'model':<10} {'variant':<12} {'check':<22} {'ms':>8} {'run ms':>8} {'first s':>8}  "
             + "peer/nimbus"]
    for row in rows:
        peers = {k: v["ms"] for k, v in row["peers"].items() if "ms" in v}
        for label, v in row["variants"].items():
            if "ms" not in v:
                lines.append(f"{row['model']:<10} {label:<12} FAILED")
                continue
            if label != "int8":
                check = f"{'ok' if v['ok'] else 'FAIL'} {v['relative_error']:.1e}"
            elif v["mismatches"] == 0:
                check = f"{'ok' if v['ok'] else 'FAIL'} exact, cos {v['cosine_vs_fp32']:.4f}"
            else:
                check = (f"{'ok' if v['ok'] else 'FAIL'} cpu {v['relative_error_vs_cpu']:.0e}, "
                         f"cos {v['cosine_vs_fp32']:.4f}")
            ratios = ", ".join(f"{k} {ms:.3f} ({ms / v['ms']:.2f}x)" for k, ms in peers.items())
            lines.append(f"{row['model']:<10} {label:<12} {check:<22} {v['ms']:>8.3f} {v['run_ms']:>8.2f} "
                         f"{v['first_run_s']:>8.1f}  {ratios}")
            if v.get("profile"):
                lines.append(f"{'':<10} {'':<12} {profile_summary(v['profile'])}")
        for key, failure in row.get("failures", {}).items():
            lines.append(f"{row['model']:<10} {key}: FAILED {failure[:150]}")
        if row.get("skipped"):
            lines.append(f"{row['model']:<10} skipped (time budget): {', '.join(row['skipped'])}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,bert")
    parser.add_argument("--variants", default="fp16,int8,fp32",
                        help="nimbus variants to run, comma-separated (fp32 also adds torch.compile fp32)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--budget-s", type=float, default=300.0,
                        help="start no new measurement after this many seconds")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    parser.add_argument("--artifacts", type=Path, default=None,
                        help="load MODEL.VARIANT.nimbus from here where present (compiled elsewhere "
                             "from the same seeded models) instead of compiling")
    parser.add_argument("--smoke", action="store_true", help="LeNet, batch 2, no torch.compile")
    args = parser.parse_args(argv)
    unknown = set(args.variants.split(",")) - {"fp16", "int8", "fp32"}
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}: choose from fp16, int8, fp32")
    if args.smoke:
        args.models, args.batch = "lenet", 2
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 peers in the precision nimbus keeps
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bench = _benchmark_models()
    from nimbus.kernels.triton import autotune

    started = time.monotonic()
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (interpreter)",
              "torch": torch.__version__, "batch": args.batch, "rows": []}

    def save() -> None:
        report["seconds"] = time.monotonic() - started
        report["tuning"] = autotune.cache().export()
        if args.json is not None:
            args.json.write_text(json.dumps(report, indent=1))

    for name in args.models.split(","):
        report["rows"].append(benchmark(name, bench, args, device, started + args.budget_s, save))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    save()
    print(f"\n{report['device']}, torch {report['torch']}, batch {args.batch}, "
          f"{report['seconds']:.0f} s")
    print(format_table(report["rows"]))
    failed = [row["model"] for row in report["rows"]
              if row.get("failures") or not all(v.get("ok") for v in row["variants"].values())]
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
