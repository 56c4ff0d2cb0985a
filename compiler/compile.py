"""nimbus.compile: a PyTorch module (or an IR graph) -> an optimized, verified artifact.

    compiled = nimbus.compile(model, example_inputs, calibration=batches)
    compiled.save("model.nimbus")
    session = nimbus.load("model.nimbus")

The default pipeline folds, fuses and, when calibration data is given, quantizes to int8
(static, per-channel weights): DEFAULT_OPTIMIZATION then `quantize`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nimbus.runtime.artifact import read_artifact

from .ir import Graph
from .lowering import artifact_bytes, input_symbols, int8_advice, torch_ops_for
from .summary import node_costs


def default_pipeline(quantize: bool, target: str = "cpu") -> str:
    """Folding and fusion, then int8 quantization when calibration data is given (attention
    stays float on CUDA, which has no integer attention kernel)."""
    from nimbus.passes import DEFAULT_OPTIMIZATION

    if not quantize:
        return DEFAULT_OPTIMIZATION
    return f"{DEFAULT_OPTIMIZATION},quantize" + ("{attention=false}" if target == "cuda" else "")


@dataclass
class CompiledModel:
    """The optimized graph and the artifact made from it."""

    graph: Graph
    data: bytes
    pipeline: str
    target: str

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_bytes(self.data)
        return path

    def session(self):
        """A runtime Session over this artifact (no file needed)."""
        from nimbus.runtime.session import Session

        return Session(self.data, self.target)

    def measure_latency(self, repeats: int = 10) -> float:
        """Median ms of one batch-1 run of the artifact on random inputs (symbolic dims = 1)."""
        import time

        import numpy as np

        from nimbus.runtime.artifact import DTYPES

        session = self.session()
        rng = np.random.default_rng(0)
        feeds = {}
        for spec in session.inputs:
            shape = tuple(d if isinstance(d, int) else 1 for d in spec.shape)
            dtype = np.dtype(DTYPES[spec.dtype])
            feeds[spec.name] = (rng.standard_normal(shape).astype(dtype) if dtype.kind == "f"
                                else np.zeros(shape, dtype))
        session.run(feeds)  # first run: packs int8 weights
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            session.run(feeds)
            times.append((time.perf_counter() - start) * 1e3)
        return float(np.median(times))

    def summary(self) -> dict[str, Any]:
        """Size, ops by kind, FLOPs and activation memory, for the closing report."""
        ops: dict[str, int] = {}
        for node in self.graph.nodes:
            ops[node.op] = ops.get(node.op, 0) + 1
        costs = node_costs(self.graph, dict.fromkeys(input_symbols(self.graph), 1))
        manifest = read_artifact(self.data).manifest
        return {"artifact_bytes": len(self.data), "pipeline": self.pipeline, "target": self.target,
                "ops": dict(sorted(ops.items(), key=lambda item: -item[1])),
                "mflops_batch_1": round(sum(c.flops for c in costs) / 1e6, 3),
                **manifest.get("memory", {}),
                "int8_advice": int8_advice(self.graph) if self.target == "cpu" else [],
                "torch_ops": torch_ops_for(self.graph) if self.target == "cuda" else []}


def compile(model, example_inputs=None, *, pipeline: str | None = None, calibration=None,  # noqa: A001
            target: str = "cpu", dynamic_batch: bool = True, compression: str = "zlib",
            **data) -> CompiledModel:
    """Compile a torch.nn.Module (with example inputs) or an IR Graph into an artifact.

    `pipeline` defaults to folding and fusion, plus int8 quantization when `calibration`
    (any iterable of input batches, or .npy/.npz paths) is given. Ops without a kernel for
    `target` stop compilation before anything is written (PreflightError names them).
    """
    if isinstance(model, Graph):
        graph = model
    else:
        from .frontend import from_torch

        if example_inputs is None:
            raise ValueError("compiling a torch module needs example_inputs")
        graph = from_torch(model, example_inputs, dynamic_batch=dynamic_batch)
    from nimbus.passes import run_passes

    pipeline = pipeline if pipeline is not None else default_pipeline(calibration is not None,
                                                                     target)
    optimized = run_passes(graph, pipeline, calibration=calibration, **data) if pipeline else graph
    from nimbus import __version__

    data_bytes = artifact_bytes(optimized, target=target, pipeline=pipeline,
                                compression=compression, producer=f"nimbus {__version__}")
    return CompiledModel(optimized, data_bytes, pipeline, target)
