"""Check every Triton kernel on a CUDA GPU against its reference at realistic sizes, and time it
against its peers (torch eager, torch.compile, cuBLAS through torch) in the same run.

    python benchmarks/gpu_check.py [--only gemm,attention] [--json out.json] [--budget-s 240]

Each kernel module offers `benchmark_cases()` (nimbus.kernels.triton.bench.BenchCase). For each
case the script runs the check (relative error, or mismatching elements for integer kernels,
against the case's tolerance), then times the kernel and each peer
with `triton.testing.do_bench` and `do_bench_cudagraph` (medians of repeats, CUDA events, after
warm-up, so autotuning and compilation stay out of the numbers); ratios use the graph replays,
which time the device rather than Python's launch overhead. Ratios are peer time / nimbus time: above 1, nimbus is
faster. The table is printed last; the JSON holds every number, the card, the software versions
and the tuned configs (the same data an artifact can carry). Exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path


def import_kernels():
    """The kernel package, installed or straight from this checkout.

    A checkout maps onto the installed layout the way pyproject.toml's wheel.packages does:
    nimbus/ holds the facade and each top-level folder (kernels/, compiler/, ...) a subpackage.
    The facade's __init__ is not run, so nothing but the kernels' own imports is needed.
    """
    try:
        return importlib.import_module("nimbus.kernels.triton")
    except ImportError:
        root = Path(__file__).resolve().parents[1]
        package = type(sys)("nimbus")
        package.__path__ = [str(root / "nimbus"), str(root)]
        sys.modules["nimbus"] = package
        return importlib.import_module("nimbus.kernels.triton")


def time_ms(fn) -> dict:
    """Median milliseconds of `fn`, launched from Python and replayed from a CUDA graph.

    Small kernels finish before Python can launch the next one, so the launched time measures
    the host; the graph replay measures the device, as a served model with static shapes runs
    (the CUDA backend captures graphs). A function that cannot be captured gets only the first.
    """
    from triton.testing import do_bench, do_bench_cudagraph

    times = {"launched": float(do_bench(fn, warmup=25, rep=100, return_mode="median"))}
    try:
        times["graph"] = float(do_bench_cudagraph(fn, rep=100, return_mode="median"))
    except Exception as err:  # noqa: BLE001 (reported; the launched time still stands)
        times["graph_failure"] = f"{type(err).__name__}: {err}"
    return times


def best_ms(times: dict) -> float:
    return times.get("graph", times["launched"])


def run_case(case, budget_left: float) -> dict:
    row = {"case": case.name, "flops": case.flops, "bytes": case.bytes, "peers": {}}
    try:
        error, tolerance = case.check()
        row.update(error=error, tolerance=tolerance, ok=bool(error <= tolerance))
        row["nimbus"] = time_ms(case.run)
        row["nimbus_ms"] = best_ms(row["nimbus"])
    except Exception as err:  # noqa: BLE001 (one broken kernel must not hide the others' results)
        row.update(ok=False, failure=f"{type(err).__name__}: {err}", trace=traceback.format_exc())
        return row
    for name, peer in case.peers.items():
        if budget_left <= 0 and name == "torch.compile":
            row["peers"][name] = {"skipped": "time budget spent"}
            continue
        try:
            peer()  # compile / warm up outside the timed region
            times = time_ms(peer)
            peer_ms = best_ms(times) if "graph" in row["nimbus"] else times["launched"]
            row["peers"][name] = {**times, "ms": peer_ms, "ratio": peer_ms / row["nimbus_ms"]}
        except Exception as err:  # noqa: BLE001 (a peer that fails is reported, not fatal)
            row["peers"][name] = {"failure": f"{type(err).__name__}: {err}"}
    return row


def format_table(rows: list[dict]) -> str:
    header = (f"{'case':<46} {'check':>16} {'nimbus ms':>10} {'launched':>9} {'TFLOP/s':>8} "
              f"{'GB/s':>7}  peers (ms, peer/nimbus)")
    lines = [header]
    for row in rows:
        if "failure" in row:
            lines.append(f"{row['case']:<46} FAILED: {row['failure'][:120]}")
            continue
        check = f"{'ok' if row['ok'] else 'FAIL'} {row['error']:.1e}"
        ms = row["nimbus_ms"]
        tflops = row["flops"] / ms / 1e9
        gbs = row["bytes"] / ms / 1e6
        peers = []
        for name, peer in row["peers"].items():
            if "ms" in peer:
                peers.append(f"{name} {peer['ms']:.3f} ({peer['ratio']:.2f}x)")
            else:
                peers.append(f"{name} {peer.get('skipped') or peer.get('failure', '')[:60]}")
        launched = row["nimbus"]["launched"]
        lines.append(f"{row['case']:<46} {check:>16} {ms:>10.3f} {launched:>9.3f} {tflops:>8.1f} {gbs:>7.0f}  "
                     + "; ".join(peers))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated kernel modules (default: all)")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    parser.add_argument("--budget-s", type=float, default=240.0,
                        help="after this many seconds, skip the remaining torch.compile peers")
    args = parser.parse_args(argv)

    import torch
    import triton

    if not torch.cuda.is_available():
        print("gpu_check needs a CUDA device; the CPU tests run the kernels in the interpreter.")
        return 2
    kernels = import_kernels()
    from nimbus.kernels.triton import autotune

    start = time.monotonic()
    torch.manual_seed(0)
    selected = [m for m in kernels.KERNEL_MODULES if not args.only or m in args.only.split(",")]
    rows = []
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "triton": triton.__version__, "rows": rows}

    def save() -> None:  # after every case, so a run cut short still leaves its numbers
        report.update(seconds=time.monotonic() - start, tuning=autotune.cache().export())
        if args.json is not None:
            args.json.write_text(json.dumps(report, indent=1))

    for module_name in selected:
        try:
            module = importlib.import_module(f"nimbus.kernels.triton.{module_name}")
            cases = module.benchmark_cases()
        except Exception as err:  # noqa: BLE001 (reported in the table, like a failed check)
            rows.append({"case": module_name, "ok": False, "failure": f"{type(err).__name__}: {err}",
                         "trace": traceback.format_exc()})
            continue
        for case in cases:
            row = run_case(case, args.budget_s - (time.monotonic() - start))
            rows.append(row)
            print(format_table([row]).splitlines()[-1], flush=True)
            save()
        del cases
        torch.cuda.empty_cache()

    save()
    print(f"\n{report['device']}, torch {report['torch']}, triton {report['triton']}, "
          f"{report['seconds']:.0f} s")
    print(format_table(rows))
    failed = [row["case"] for row in rows if not row.get("ok")]
    if failed:
        print(f"\nFAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
