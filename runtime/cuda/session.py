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
that signature copy the inputs into the graph's static buffers and replay it. A gather's bounds
check reads its indices on the host, which a graph cannot hold: when every gather's indices are
a model input (token ids) or known at load time, those are checked before the replay instead;
plans with computed indices run eagerly. That path needs a GPU: it is not exercised by the
CPU-interpreter tests.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..artifact import Artifact, ArtifactError
from ..session import Session, bound_attrs
from .policy import LAYOUT_OPS, TORCH_FALLBACK_OPS, CudaUnsupportedError

# Ops whose result holds only values of their first operand (so gather indices keep their range).
INDEX_PRESERVING_OPS = frozenset({"reshape", "permute", "slice", "expand"})

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
        if self.device.type == "cuda" and self.device.index is None:  # "cuda" means the current one
            self.device = torch.device("cuda", torch.cuda.current_device())
        self._merge_tuning()
        self._build(launchers)
        self._graphs: dict[tuple, tuple] = {}
        self._graphs_lock = threading.Lock()
        self._index_bounds = self._gather_index_bounds()
        self._use_graphs = (self.device.type == "cuda" and torch.cuda.is_available()
                            and os.environ.get("NIMBUS_CUDA_GRAPHS", "1") != "0"
                            and self._index_bounds is not None)

    # ---- loading ------------------------------------------------------------------------------
    def _prepare_steps(self) -> None:
        """Nothing: the CPU kernels' preparation (packed weights) is of no use to the launchers."""

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

    def _gather_index_bounds(self) -> dict[int, int] | None:
        """Where every gather's indices come from, so a CUDA graph can hold the gathers.

        A gather checks its indices on the host, which a captured graph cannot do. When each
        gather's indices are a model input (through layout ops) or are known at load time
        (a constant, or a `full`), the check moves out of the graph: known indices are checked
        here, once, and inputs before each run. Returns {input position: exclusive bound on
        |index|} for those inputs, or None when some gather's indices are computed (the session
        then runs eagerly). Raises ArtifactError for known indices out of range.
        """
        producer = {slot: step for step in self._steps for slot in step.results}
        input_position = {slot: i for i, (_, slot, _) in enumerate(self._inputs)}
        bounds: dict[int, int] = {}
        for step in self._steps:
            if step.op != "gather":
                continue
            data = self._constant_slots[step.operands[0]]
            slot = step.operands[1]
            while slot in producer and producer[slot].op in INDEX_PRESERVING_OPS:
                slot = producer[slot].operands[0]
            if data is None:
                return None
            size = data.shape[step.attrs["axis"] % data.ndim]
            if slot in input_position:
                position = input_position[slot]
                bounds[position] = min(bounds.get(position, size), size)
                continue
            known = self._constant_slots[slot]
            if known is None and slot in producer and producer[slot].op == "full":
                known = np.asarray(producer[slot].attrs["value"])
            if known is None:
                return None
            if known.size and (known.min() < -size or known.max() >= size):
                raise ArtifactError(f"gather ({step.source or 'no source'}): constant index out "
                                    f"of range [-{size}, {size})")
        return bounds

    def _check_indices(self, inputs: list) -> None:
        """The gathers' bounds check for the inputs that feed them, naming the input (one
        device sync per run)."""
        for position, size in self._index_bounds.items():
            indices = inputs[position]
            if indices.numel() and bool(((indices < -size) | (indices >= size)).any()):
                raise IndexError(f"input '{self._inputs[position][0]}' holds a gather index out "
                                 f"of range [-{size}, {size})")

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
        self._check_names(feeds)
        bindings: dict[str, int] = {}
        arrays = [self._checked_input(name, feeds[name], info, bindings)
                  for name, _, info in self._inputs]
        to_device, to_numpy = self._launchers_module.to_device, self._launchers_module.to_numpy
        outputs = self._run_tensors([to_device(array, self.device) for array in arrays], bindings)
        return {name: to_numpy(tensor) for (name, _, _), tensor in zip(self._outputs, outputs)}

    def run_device(self, feeds: Mapping[str, object]) -> dict[str, object]:
        """`run` with torch tensors on the session's device in and out, so nothing crosses to the
        host (as ONNX Runtime's I/O binding does). Inputs are read, never kept or written; the
        outputs are new tensors that the caller owns."""
        inputs, bindings = self._device_inputs(feeds)
        outputs = self._run_tensors(inputs, bindings)
        if not self._use_graphs:  # eager results can be views of inputs or session constants
            outputs = [t.clone() if t._base is not None or any(t is c for c in (*inputs, *self._device_constants))
                       else t for t in outputs]
        return {name: tensor for (name, _, _), tensor in zip(self._outputs, outputs)}

    def profile(self, feeds: Mapping[str, object], repeats: int = 10) -> list[dict]:
        """Where a run's time goes: the plan run eagerly (no CUDA graph) `repeats` times on
        `feeds` (torch tensors on the device, as `run_device` takes them), one row per step in
        plan order: {"op", "launcher", "source", "ms"} with the median milliseconds of that step.

        On a GPU each step is timed with CUDA events (device time, as a graph replay spends it
        plus nothing of Python's launch cost); on the CPU interpreter with the host clock.
        """
        if repeats < 1:
            raise ValueError(f"repeats must be at least 1, got {repeats}")
        inputs, bindings = self._device_inputs(feeds)
        samples: list[list[float]] = [[] for _ in self._steps]
        self._execute(inputs, bindings)  # compile and tune outside the timed runs
        for _ in range(repeats):
            self._execute(inputs, bindings, samples)
        return [{"op": step.op, "launcher": launcher.name, "source": step.source,
                 "ms": float(np.median(times))}
                for step, launcher, times in zip(self._steps, self._step_launchers, samples)]

    def _device_inputs(self, feeds: Mapping[str, object]) -> tuple[list, dict]:
        """The feeds checked as `run_device` takes them (torch tensors of the input's dtype on
        this device, shapes binding the symbolic dims); returns (contiguous tensors, bindings)."""
        from ..session import SessionError

        self._check_names(feeds)
        torch, dtypes = self._torch, self._launchers_module.TORCH_DTYPES
        bindings: dict[str, int] = {}
        inputs = []
        for name, _, info in self._inputs:
            tensor = feeds[name]
            if not isinstance(tensor, torch.Tensor):
                raise SessionError(f"input '{name}' must be a torch.Tensor, got {type(tensor).__name__}")
            if tensor.dtype != dtypes[info.dtype]:
                raise SessionError(f"input '{name}' must be {info.dtype} ({dtypes[info.dtype]}), "
                                   f"got {tensor.dtype}")
            if tensor.device != self.device:
                raise SessionError(f"input '{name}' must be on {self.device}, got {tensor.device}")
            self._check_shape(name, tuple(tensor.shape), info, bindings)
            inputs.append(tensor.contiguous())
        return inputs, bindings

    def _run_tensors(self, inputs: list, bindings: dict) -> list:
        if self._index_bounds:
            self._check_indices(inputs)
        if self._use_graphs:
            return self._replay(inputs, bindings)
        return self._execute(inputs, bindings)

    def _execute(self, inputs: list, bindings: dict, step_ms: list[list[float]] | None = None) -> list:
        """Run every step on device tensors; returns the output tensors in order. With
        `step_ms` (one list per step), each step's milliseconds are appended to its list."""
        values: list = list(self._device_constants)
        for (_, slot, _), tensor in zip(self._inputs, inputs):
            values[slot] = tensor
        clock = None if step_ms is None else _StepClock(self._torch, self.device, len(self._steps))
        for index, (step, launcher) in enumerate(zip(self._steps, self._step_launchers)):
            operands = [None if s is None else values[s] for s in step.operands]
            attrs = bound_attrs(step, bindings)
            if clock is not None:
                clock.start(index)
            try:
                results = launcher.run(operands, attrs)
            except (ValueError, TypeError, IndexError, RuntimeError) as err:
                raise RuntimeError(f"{step.op} failed on {self.device} "
                                   f"({step.source or 'no source'}): {err}") from err
            if clock is not None:
                clock.stop(index)
            for slot, tensor in zip(step.results, results):
                values[slot] = tensor
            for slot in step.release:
                values[slot] = None
        if clock is not None:
            for times, ms in zip(step_ms, clock.milliseconds()):
                times.append(ms)
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


# GPU cycles (about 25 ms) of a spin kernel queued ahead of a profiled run: the run's launches
# queue up behind it, so each step's events time the device, not the gaps between launches.
PROFILE_HEAD_START_CYCLES = 50_000_000


class _StepClock:
    """Milliseconds per step of one run: CUDA events on a GPU (read once, after the run, so
    timing does not serialize the launches), the host clock on the CPU interpreter."""

    def __init__(self, torch, device, steps: int):
        self._events = None
        if device.type == "cuda":
            self._events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                            for _ in range(steps)]
            self._synchronize = torch.cuda.synchronize
            torch.cuda._sleep(PROFILE_HEAD_START_CYCLES)
        self._host = [[0.0, 0.0] for _ in range(steps)]

    def start(self, index: int) -> None:
        if self._events is not None:
            self._events[index][0].record()
        else:
            self._host[index][0] = time.perf_counter()

    def stop(self, index: int) -> None:
        if self._events is not None:
            self._events[index][1].record()
        else:
            self._host[index][1] = time.perf_counter()

    def milliseconds(self) -> list[float]:
        if self._events is not None:
            self._synchronize()
            return [begin.elapsed_time(end) for begin, end in self._events]
        return [(end - begin) * 1e3 for begin, end in self._host]
