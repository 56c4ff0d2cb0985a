"""`nimbus serve` under load: the same model served by nimbus and by ONNX Runtime behind the same
HTTP stack (the same Starlette app, admission queue, threads and batcher), driven over loopback.

The model is the CNN nimbus started from (examples/cnn.py, 3x32x32 float), compiled with
nimbus.compile (float) and exported with torch.onnx for ONNX Runtime; ONNX Runtime is served
through `OrtSession`, an adapter with the Session interface (inputs, outputs, run). Each server
runs in its own process (so the client's Python does not share its GIL), `--threads` threads per
model run for both runtimes and 2 model workers.

For each runtime, with dynamic batching off and on (up to 8 rows, 2 ms), and at concurrency 1, 8
and 64, an asyncio httpx client posts single-sample `application/x-npy` bodies to /invocations
and reports throughput (requests/s) and p50/p90/p99 latency. Every request carries its own
random input; every response is compared with that input's output computed in this process
(close to float rounding, as batching may round differently): a swapped or lost answer counts
as a mismatch. An overload phase (max queue 4, concurrency 64, no batching) counts the 503s and
checks against the server's metrics that every accepted request was answered.

    python benchmarks/serve.py [--threads 1] [--requests 2000] [--quick | --smoke] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing
import os
import socket
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "examples") not in sys.path:
    sys.path.insert(0, str(ROOT / "examples"))

from nimbus.runtime.server import ServerConfig, create_app
from nimbus.runtime.session import TensorSpec

import nimbus

BACKENDS = ("nimbus", "onnxruntime")
CONCURRENCY = (1, 8, 64)
BATCHING = {"off": 1, "on": 8}
BATCH_DELAY_MS = 2.0
WORKERS = 2
OVERLOAD_QUEUE = 4
OVERLOAD_CONCURRENCY = 64
NPY = {"content-type": "application/x-npy", "accept": "application/x-npy"}
ORT_DTYPES = {"tensor(float)": "f32", "tensor(float16)": "f16", "tensor(int8)": "i8",
              "tensor(uint8)": "u8", "tensor(int32)": "i32", "tensor(int64)": "i64",
              "tensor(bool)": "bool"}


# ---- the backends ---------------------------------------------------------------------------------
class OrtSession:
    """An ONNX Runtime session with nimbus's Session interface, so the server can serve it."""

    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [self._spec(node) for node in self.session.get_inputs()]
        self.outputs = [self._spec(node) for node in self.session.get_outputs()]

    @staticmethod
    def _spec(node) -> TensorSpec:
        # ONNX names a symbolic dim by text ("N"), as nimbus does; an unnamed one is None.
        shape = tuple(dim if isinstance(dim, int) else str(dim or "?") for dim in node.shape)
        return TensorSpec(node.name, ORT_DTYPES[node.type], shape)

    def run(self, feeds):
        names = [spec.name for spec in self.outputs]
        return dict(zip(names, self.session.run(names, dict(feeds))))


def open_backend(backend: str, path: Path, threads: int):
    return nimbus.load(path, threads=threads) if backend == "nimbus" else OrtSession(path, threads)


def build_models(folder: Path) -> dict[str, Path]:
    """The example CNN as a nimbus artifact and an ONNX file, both float, batch dim N."""
    import torch
    from cnn import build

    model = build()
    example = (torch.zeros(1, 3, 32, 32),)
    paths = {"nimbus": folder / "cnn.nimbus", "onnxruntime": folder / "cnn.onnx"}
    with warnings.catch_warnings():  # torch.export and the TorchScript exporter warn at length
        warnings.simplefilter("ignore")
        nimbus.compile(model, example).save(paths["nimbus"])
        torch.onnx.export(model, example, str(paths["onnxruntime"]), dynamo=False,
                          input_names=["x"], output_names=["output"],
                          dynamic_axes={"x": {0: "N"}, "output": {0: "N"}}, opset_version=17)
    return paths


# ---- the server process ---------------------------------------------------------------------------
def serve_backend(backend: str, path: Path, threads: int, port: int, config: ServerConfig) -> None:
    import uvicorn

    app = create_app({"cnn": open_backend(backend, path, threads)}, config)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """One backend served in a child process, on a free loopback port, until the block ends."""

    def __init__(self, backend: str, path: Path, threads: int, config: ServerConfig):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch, no fork
        self.process = context.Process(target=serve_backend,
                                       args=(backend, path, threads, self.port, config))

    def __enter__(self):
        self.process.start()
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.base}/v2/health/ready", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if not self.process.is_alive() or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError("the server did not start")
            time.sleep(0.1)

    def __exit__(self, *_) -> None:
        self.process.terminate()  # SIGTERM: a graceful drain
        self.process.join(30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


# ---- the client -----------------------------------------------------------------------------------
def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


async def drive(base: str, bodies: list[bytes], concurrency: int) -> tuple[float, list, list]:
    """Post every body with ``concurrency`` requests in flight; (seconds, latencies, responses)."""
    latencies: list[float] = []
    responses: list = [None] * len(bodies)
    pending = iter(range(len(bodies)))  # shared by the senders: each takes the next request
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:
        async def sender():
            for index in pending:
                started = time.perf_counter()
                response = await client.post("/invocations", content=bodies[index], headers=NPY)
                latencies.append(time.perf_counter() - started)
                responses[index] = (response.status_code, response.content)

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        return time.perf_counter() - started, latencies, responses


def check(responses: list, expected: list[np.ndarray]) -> tuple[Counter, int]:
    """Status counts, and how many 200 answers are not their own request's output."""
    statuses: Counter = Counter()
    mismatches = 0
    for answer, want in zip(responses, expected):
        status, content = answer if answer is not None else ("unanswered", b"")
        statuses[str(status)] += 1
        if status == 200:
            got = np.load(io.BytesIO(content), allow_pickle=False)
            mismatches += got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-5)
    return statuses, mismatches


def percentile_ms(latencies: list[float], q: float) -> float:
    return float(np.percentile(latencies, q) * 1e3)


def metric(text: str, name: str, **labels) -> float:
    """A sample's value in Prometheus text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# ---- the phases -----------------------------------------------------------------------------------
def load_phase(backend: str, batching: str, path: Path, options, inputs, expected) -> list[dict]:
    config = ServerConfig(max_queue=256, workers=WORKERS, max_batch_size=BATCHING[batching],
                          max_batch_delay_ms=BATCH_DELAY_MS)
    rows = []
    with Server(backend, path, options.threads, config) as server:
        asyncio.run(drive(server.base, inputs[:options.warmup], 8))
        for concurrency in CONCURRENCY:
            seconds, latencies, responses = asyncio.run(drive(server.base, inputs, concurrency))
            statuses, mismatches = check(responses, expected)
            rows.append({
                "backend": backend, "batching": batching, "concurrency": concurrency,
                "requests": len(inputs), "throughput_rps": len(inputs) / seconds,
                "p50_ms": percentile_ms(latencies, 50), "p90_ms": percentile_ms(latencies, 90),
                "p99_ms": percentile_ms(latencies, 99), "statuses": dict(statuses),
                "mismatches": mismatches,
            })
            print_row(rows[-1])
    return rows


def overload_phase(backend: str, path: Path, options, inputs, expected) -> dict:
    config = ServerConfig(max_queue=OVERLOAD_QUEUE, workers=WORKERS)
    with Server(backend, path, options.threads, config) as server:
        _, _, responses = asyncio.run(drive(server.base, inputs, OVERLOAD_CONCURRENCY))
        metrics = httpx.get(f"{server.base}/metrics", timeout=10).text
    statuses, mismatches = check(responses, expected)
    labels = {"model": "cnn", "version": "1"}
    return {
        "backend": backend, "max_queue": OVERLOAD_QUEUE, "concurrency": OVERLOAD_CONCURRENCY,
        "requests": len(inputs), "ok": statuses["200"], "rejected": statuses["503"],
        "other": sum(n for s, n in statuses.items() if s not in ("200", "503")),
        "mismatches": mismatches,
        # Every request the server accepted was answered: its count of successes is ours.
        "server_successes": metric(metrics, "nimbus_inference_request_success_total", **labels),
        "server_rejected": metric(metrics, "nimbus_inference_request_failure_total",
                                  reason="rejected", **labels),
    }


# ---- the report -----------------------------------------------------------------------------------
HEADER = (f"{'backend':<12} {'batching':>8} {'conc':>5} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} "
          f"{'p99 ms':>8} {'errors':>7} {'mismatch':>8}")


def print_row(row: dict) -> None:
    errors = sum(n for status, n in row["statuses"].items() if status != "200")
    print(f"{row['backend']:<12} {row['batching']:>8} {row['concurrency']:>5} "
          f"{row['throughput_rps']:>9.1f} {row['p50_ms']:>8.2f} {row['p90_ms']:>8.2f} "
          f"{row['p99_ms']:>8.2f} {errors:>7} {row['mismatches']:>8}", flush=True)


def print_overload(row: dict) -> None:
    print(f"overload {row['backend']:<12} max queue {row['max_queue']}, concurrency "
          f"{row['concurrency']}: {row['requests']} sent, {row['ok']} ok, {row['rejected']} "
          f"rejected (503), {row['other']} other, {row['mismatches']} mismatches; server counted "
          f"{row['server_successes']:.0f} successes, {row['server_rejected']:.0f} rejections")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="threads per model run")
    parser.add_argument("--requests", type=int, default=None,
                        help="requests per concurrency level (default 2000; --quick 300)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewer requests: well under 90 s")
    mode.add_argument("--smoke", action="store_true", help="a handful of requests: checks only")
    parser.add_argument("--json", metavar="FILE", help="also write every number as JSON")
    options = parser.parse_args(argv)
    default_requests = 40 if options.smoke else 300 if options.quick else 2000
    options.requests = options.requests or default_requests
    options.warmup = min(options.requests, 50)
    # The server processes inherit these: BLAS and OpenMP keep to the same thread budget.
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(options.threads)

    rng = np.random.default_rng(0)
    samples = [rng.standard_normal((1, 3, 32, 32), dtype=np.float32) for _ in range(options.requests)]
    inputs = [npy_bytes(sample) for sample in samples]
    report = {"config": {"model": "examples/cnn.py (float)", "threads": options.threads,
                         "workers": WORKERS, "requests": options.requests,
                         "concurrency": list(CONCURRENCY), "max_batch_size": BATCHING,
                         "max_batch_delay_ms": BATCH_DELAY_MS, "quick": options.quick,
                         "smoke": options.smoke},
              "results": [], "overload": []}
    with tempfile.TemporaryDirectory(prefix="nimbus-serve-bench-") as folder:
        paths = build_models(Path(folder))
        print(HEADER)
        for backend in BACKENDS:
            local = open_backend(backend, paths[backend], options.threads)
            expected = [local.run({"x": sample})["output"] for sample in samples]
            for batching in BATCHING:
                report["results"] += load_phase(backend, batching, paths[backend], options,
                                                inputs, expected)
            report["overload"].append(overload_phase(backend, paths[backend], options, inputs,
                                                     expected))
        for row in report["overload"]:
            print_overload(row)
    if options.json:
        Path(options.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
