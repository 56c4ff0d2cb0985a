"""CudaSession: a validated plan run with the package's Triton kernels on a CUDA device.

    session = nimbus.load("model.nimbus", target="cuda")    # or Session(data, target="cuda")
    session.run({"x": array})                               # numpy in, numpy out
    session.kernel_table()                                  # op -> "triton:<launcher>" | "torch"

Loading reuses the CPU Session's plan reading and validation (CudaSession is a Session: its
constructor runs first, so slots, ops, constants and types are checked exactly as on the CPU),
then, once per session:

- refuses the plan if any step has neither a Triton kernel nor a listed torch op
  (`CudaUnsupportedError` lists every such op with its source lines and the reason);
- merges tuning data carried by the artifact (a "tuning" section in the manifest or the plan,
  in `autotune.TuningCache.export()` form) into the process-wide tuning cache, validated
  against each kernel's config space;
- moves constants to the device and pre-packs weights for the kernels (see launchers.py);
- builds one launcher per step (policy.py: Triton kernels, torch layout ops, torch fallbacks).

The device is "cuda" when torch sees one, else "cpu", where the kernels run through Triton's
interpreter: a session made without CUDA sets TRITON_INTERPRET=1 before it first imports the
kernels (it must be set before `triton.jit` decorates them).

`run` checks inputs as the CPU Session does, moves them to the device, runs the launchers over
a list of slots local to the call (activations are released after their last use), and returns
numpy copies. On a real CUDA device with CUDA graphs enabled (default; NIMBUS_CUDA_GRAPHS=0
turns them off), the first run for each input signature is captured into a
torch.cuda.CUDAGraph after one eager warm-up run (which also autotunes), and later runs with
that signature copy the inputs into the graph's static buffers and replay it. Plans with a
gather (its bounds check reads the indices on the host) run eagerly. That path needs a GPU: it
is not exercised by the CPU-interpreter tests.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..artifact import Artifact, ArtifactError
from ..session import Session, bound_attrs
from .policy import LAYOUT_OPS, TORCH_FALLBACK_OPS, CudaUnsupportedError

MAX_GRAPHS = 8  # captured input signatures kept per session


def _import_backend():
    """torch and the launchers, importing the Triton kernels in interpreter mode without CUDA."""
    import torch

    if not torch.cuda.is_available():
        loaded = [name for name in sys.modules if name.startswith("nimbus.kernels.triton.")]
        if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
            if loaded or "TRITON_INTERPRET" in os.environ:
                raise RuntimeError(
                    "no CUDA device, and the Triton kernels were not set up for the CPU "
                    "interpreter: set TRITON_INTERPRET=1 before importing nimbus.kernels.triton")
            os.environ["TRITON_INTERPRET"] = "1"
    from . import launchers

    return torch, launchers


class CudaSession(Session):
    """A loaded artifact, ready to run with Triton kernels on a CUDA device (or the interpreter)."""

    def __init__(self, source: str | Path | bytes | Artifact, target: str = "cuda",
                 threads: int | None = None, *, device: str | None = None):
        if target != "cuda":
            raise ValueError(f"CudaSession runs target 'cuda', not '{target}'")
        # The CPU Session's reading and validation of the plan (threads: its host-side kernels).
        super().__init__(source, threads=threads)
        torch, launchers = _import_backend()
        self._torch, self._launchers_module = torch, launchers
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._merge_tuning()
        self._build(launchers)
        self._graphs: dict[tuple, tuple] = {}
        self._graphs_lock = threading.Lock()
        self._use_graphs = (self.device.type == "cuda" and torch.cuda.is_available()
                            and os.environ.get("NIMBUS_CUDA_GRAPHS", "1") != "0"
                            and not any(step.op == "gather" for step in self._steps))

    # ---- loading ------------------------------------------------------------------------------
    def _merge_tuning(self) -> None:
        data = self.artifact.manifest.get("tuning")
        if data is None and isinstance(self.artifact.plan, dict):
            data = self.artifact.plan.get("tuning")
        if data is None:
            return
        from nimbus.kernels.triton import autotune

        try:
            autotune.cache().merge(data)
        except ValueError as err:
            raise ArtifactError(f"invalid tuning data in the artifact: {err}") from None

    def _build(self, launchers) -> None:
        context = launchers.Context(self.device, self._constant_slots)
        missing: dict[str, dict[str, list[str]]] = {}
        built = []
        for step in self._steps:
            try:
                built.append(launchers.build(step, context))
            except (launchers.Unsupported, ValueError) as err:
                reason = str(err).splitlines()[0] if str(err) else type(err).__name__
                missing.setdefault(step.op, {}).setdefault(reason, []).append(step.source)
        if missing:
            raise CudaUnsupportedError(missing)
        # Constants the launchers read as tensors (not consumed by packing), and outputs.
        wanted = {slot for name, slot, _ in self._outputs}
        for step, launcher in zip(self._steps, built):
            wanted.update(slot for index, slot in enumerate(step.operands)
                          if slot is not None and index not in launcher.packed)
        self._device_constants = [
            None if array is None or slot not in wanted else context.tensor(array)
            for slot, array in enumerate(self._constant_slots)]
        self._step_launchers = built

    # ---- metadata -----------------------------------------------------------------------------
    def kernel_table(self) -> dict[str, str]:
        """op -> how this session runs it: "triton:<module>.<launcher>" or "torch" (a layout op
        or a torch fallback, see nimbus.runtime.cuda.policy); variants joined by " | "."""
        table: dict[str, list[str]] = {}
        for step, launcher in zip(self._steps, self._step_launchers):
            names = table.setdefault(step.op, [])
            if launcher.name not in names:
                names.append(launcher.name)
        return {op: " | ".join(names) for op, names in table.items()}

    def torch_ops(self) -> dict[str, list[str]]:
        """The plan's ops that run as torch ops, split into "layout" and "fallback"."""
        ops = {step.op for step in self._steps}
        return {"layout": sorted(ops & LAYOUT_OPS), "fallback": sorted(ops & TORCH_FALLBACK_OPS)}

    # ---- running ------------------------------------------------------------------------------
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on named inputs (numpy); returns its outputs by name (numpy copies)."""
        from ..session import SessionError

        names = [name for name, _, _ in self._inputs]
        missing = [n for n in names if n not in feeds]
        unknown = [n for n in feeds if n not in names]
        if missing or unknown:
            raise SessionError(f"inputs must be exactly {names}; missing {missing}, unexpected {unknown}")
        bindings: dict[str, int] = {}
        arrays = [self._checked_input(name, feeds[name], info, bindings)
                  for name, _, info in self._inputs]
        to_device, to_numpy = self._launchers_module.to_device, self._launchers_module.to_numpy
        inputs = [to_device(array, self.device) for array in arrays]
        if self._use_graphs:
            outputs = self._replay(inputs, bindings)
        else:
            outputs = self._execute(inputs, bindings)
        return {name: to_numpy(tensor) for (name, _, _), tensor in zip(self._outputs, outputs)}

    def _execute(self, inputs: list, bindings: dict) -> list:
        """Run every step on device tensors; returns the output tensors in order."""
        values: list = list(self._device_constants)
        for (_, slot, _), tensor in zip(self._inputs, inputs):
            values[slot] = tensor
        for step, launcher in zip(self._steps, self._step_launchers):
            operands = [None if s is None else values[s] for s in step.operands]
            attrs = bound_attrs(step, bindings)
            try:
                results = launcher.run(operands, attrs)
            except (ValueError, TypeError, IndexError, RuntimeError) as err:
                raise RuntimeError(f"{step.op} failed on {self.device} "
                                   f"({step.source or 'no source'}): {err}") from err
            for slot, tensor in zip(step.results, results):
                values[slot] = tensor
            for slot in step.release:
                values[slot] = None
        return [values[slot] for _, slot, _ in self._outputs]

    def _replay(self, inputs: list, bindings: dict) -> list:
        """CUDA graphs: capture once per input signature (after an eager warm-up), then replay.
        Only reached on a real CUDA device; the interpreter tests never take this path."""
        torch = self._torch
        signature = tuple((tuple(t.shape), t.dtype) for t in inputs)
        with self._graphs_lock:
            entry = self._graphs.get(signature)
            if entry is None:
                if len(self._graphs) >= MAX_GRAPHS:
                    return self._execute(inputs, bindings)
                static = [t.clone() for t in inputs]
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    self._execute(static, bindings)  # compiles and autotunes every kernel
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                try:
                    with torch.cuda.graph(graph):
                        outputs = self._execute(static, bindings)
                except RuntimeError as err:  # a step that cannot be captured: run eagerly from now on
                    warnings.warn(f"CUDA graph capture failed, running eagerly: {err}", stacklevel=3)
                    self._use_graphs = False
                    return self._execute(inputs, bindings)
                entry = self._graphs[signature] = (graph, static, outputs)
            graph, static, outputs = entry
            for buffer, tensor in zip(static, inputs):
                buffer.copy_(tensor)
            graph.replay()
            return [t.clone() for t in outputs]
