"""Session: load a .nimbus artifact and run its plan.

    session = nimbus.load("model.nimbus")          # or Session(bytes)
    session.inputs, session.outputs                 # names, dtypes, shapes (symbolic dims as text)
    outputs = session.run({"x": array})            # {"y": array}

The plan (nimbus.compiler.lowering) is validated when the session is made: every slot, op,
constant and type is checked, so running it can only fail on bad inputs, which get an error
naming the input, the expected and the given dtype or shape. A run keeps its activations in a
list local to the call and releases each after its last use; the weights are the artifact's
read-only arrays; so one session serves concurrent `run` calls from several threads. After the
first run of an input shape, a small model runs as one native call (native_plan.py), whose
arrays one run at a time uses: concurrent runs of that shape take the executor meanwhile.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from .allocator import CACHE_LINE_ALLOCATOR, keep_freed_memory, set_array_allocator
from .artifact import Artifact, ArtifactError, read_artifact
from .cpu_ops import KERNELS, NATIVE_THREADS, TensorInfo
from .cpu_ops.blocks import fuse_blocks
from .cpu_ops.common import numpy_dtype
from .cpu_ops.registry import PREPARERS, RUNTIME, call_kernel
from .dims import bind_dim, evaluate_dim
from .native_plan import MAX_PROGRAMS, Trace, build_native_plan

PLAN_FORMAT = 1


def c_contiguous(array) -> np.ndarray:
    """``array`` as an ndarray in C order, copied only where it is not; 0-d stays 0-d
    (ascontiguousarray would make it 1-d), and a numpy scalar becomes a 0-d array."""
    array = np.asarray(array)
    return array if array.flags.c_contiguous else np.ascontiguousarray(array)


class SessionError(ValueError):
    """Bad inputs to `Session.run`: names the input and what was expected."""


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: name, dtype and shape (ints, or text for symbolic dims)."""

    name: str
    dtype: str
    shape: tuple


@dataclass(frozen=True)
class _Step:
    op: str
    attrs: dict
    operands: tuple
    results: tuple
    types: tuple
    release: tuple
    source: str
    symbolic_attrs: tuple  # attributes holding dims that are text (symbolic) until run time
    kernel: Callable  # KERNELS[op], looked up once
    prepared: Callable | None = None  # the kernel prepared for this step (registry.PREPARERS)


class Session:
    """A loaded artifact, ready to run on the CPU."""

    def __new__(cls, source=None, target: str = "cpu", *args, **kwargs):
        if cls is Session and target == "cuda":  # the CUDA backend; imports torch/triton lazily
            from .cuda import CudaSession

            return super().__new__(CudaSession)
        return super().__new__(cls)

    def __init__(self, source: str | Path | bytes | Artifact, target: str = "cpu",
                 threads: int | None = None):
        if threads is not None and (type(threads) is not int or threads < 1):
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        # The native kernels' worker pool never runs more than one thread per core.
        self.threads = threads or len(os.sched_getaffinity(0))
        if target != "cpu":
            raise ValueError(f"target '{target}' is not available in this runtime; use 'cpu'")
        self.artifact = source if isinstance(source, Artifact) else read_artifact(source)
        keep_freed_memory()
        plan = self.artifact.plan
        try:
            self._load_plan(plan)
            self._prepare_steps()
        except (KeyError, TypeError, ValueError, IndexError, AttributeError,
                ArithmeticError) as err:
            if isinstance(err, ArtifactError):
                raise
            raise ArtifactError(f"invalid plan: {err}") from None

    # ---- metadata -----------------------------------------------------------------------------
    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec(name, info.dtype, tuple(info.shape)) for name, _, info in self._inputs]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec(name, info.dtype, tuple(info.shape)) for name, _, info in self._outputs]

    @property
    def manifest(self) -> dict:
        return self.artifact.manifest

    @property
    def native_shapes(self) -> list[tuple]:
        """The input shapes (one tuple per input) whose runs are one native call
        (native_plan.py): those run once already, whose plan every step could join."""
        return [shapes for shapes, plan in self._native_plans.items() if plan is not None]

    # ---- running ------------------------------------------------------------------------------
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on named inputs; returns its outputs by name."""
        return _with_run_allocator(self._run, feeds)

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        bindings: dict[str, int] = {}
        self._check_names(feeds)
        inputs = [self._checked_input(name, feeds[name], info, bindings)
                  for name, _, info in self._inputs]
        # One native call for the whole plan once a run of this shape has been traced
        # (native_plan.py); the executor for the first run, and whenever none applies.
        shapes = tuple(array.shape for array in inputs)
        native = self._native_plans.get(shapes)
        if native is not None:
            try:
                outputs = native.run(inputs, self.threads)
            except (ValueError, IndexError):  # bad data (a token id past the table): the
                outputs = None  # executor runs it again and names the step that fails
            if outputs is not None:
                return dict(zip(self._output_names, outputs))
        trace = Trace() if shapes not in self._native_plans \
            and len(self._native_plans) < self._native_plan_limit else None
        values = self._initial_values(inputs)
        token = NATIVE_THREADS.set(self.threads)
        try:
            self._execute(values, bindings, trace)
        finally:
            NATIVE_THREADS.reset(token)
        if trace is not None:
            self._native_plans[shapes] = build_native_plan(
                trace, self._constant_slots, [slot for _, slot, _ in self._inputs], inputs,
                [slot for _, slot, _ in self._outputs])
        # Kernels may hand back views in another memory order (NCHW views of NHWC results);
        # callers get plain C-contiguous arrays.
        return {name: c_contiguous(values[slot]) for name, slot, _ in self._outputs}

    def profile(self, feeds: Mapping[str, np.ndarray], repeats: int = 10) -> list[dict]:
        """Where a run's time goes: `repeats` runs on `feeds`, made as `run` makes them, one row
        per plan step in plan order: {"op", "source", "ms", "native"} with the median
        milliseconds of that step. "native" says whether the step ran as calls of these shapes'
        native plan (timed in C++ around its calls) or on the Python executor (timed from the
        previous step's end, the executor's fixed cost per step included)."""
        if repeats < 1:
            raise ValueError(f"repeats must be at least 1, got {repeats}")
        return _with_run_allocator(self._profile, feeds, repeats)

    def _profile(self, feeds: Mapping[str, np.ndarray], repeats: int) -> list[dict]:
        self._run(feeds)  # builds these shapes' native plan where one applies
        bindings: dict[str, int] = {}
        inputs = [self._checked_input(name, feeds[name], info, bindings)
                  for name, _, info in self._inputs]
        native = self._native_plans.get(tuple(array.shape for array in inputs))
        step_ms = None if native is None else native.profile(inputs, self.threads, repeats)
        if step_ms is not None:
            return [{"op": step.op, "source": step.source, "ms": ms, "native": True}
                    for step, ms in step_ms]
        clock = _StepClock(len(self._steps))
        token = NATIVE_THREADS.set(self.threads)
        try:
            for _ in range(repeats):
                values = self._initial_values(inputs)
                clock.start()
                self._execute(values, bindings, clock)
        finally:
            NATIVE_THREADS.reset(token)
        return [{"op": step.op, "source": step.source, "ms": float(np.median(times)),
                 "native": False} for step, times in zip(self._steps, clock.samples)]

    def _initial_values(self, inputs: list[np.ndarray]) -> list:
        """The value slots of a run: the constants, and the inputs in their slots."""
        values: list = list(self._constant_slots)
        for (_, slot, _), array in zip(self._inputs, inputs):
            values[slot] = array
        return values

    def _execute(self, values: list, bindings: dict, trace: Trace | _StepClock | None = None) -> None:
        # Kernels are looked up at load: this loop is the executor's fixed cost per step, which
        # decides small models. `trace` records what each step read and returned (a Trace), or
        # when it ended (profile's _StepClock).
        for step in self._steps:
            operands = [None if s is None else values[s] for s in step.operands]
            try:
                results = None if step.prepared is None else step.prepared(operands)
                if results is None:
                    results = call_kernel(step.kernel, step.op, operands,
                                          bound_attrs(step, bindings), list(step.types))
            except (ValueError, TypeError, IndexError, ArithmeticError) as err:
                raise RuntimeError(f"{step.op} failed ({step.source or 'no source'}): {err}") from err
            if trace is not None:
                trace.record(step, bound_attrs(step, bindings), operands, results)
            for slot, array in zip(step.results, results):
                values[slot] = array
            for slot in step.release:
                values[slot] = None

    def _check_names(self, feeds: Mapping) -> None:
        names = [name for name, _, _ in self._inputs]
        if len(feeds) == len(names) and all(name in feeds for name in names):
            return
        missing = [n for n in names if n not in feeds]
        unknown = [n for n in feeds if n not in names]
        if missing or unknown:
            raise SessionError(f"inputs must be exactly {names}; missing {missing}, unexpected {unknown}")

    @staticmethod
    def _check_shape(name: str, shape: tuple, info: TensorInfo, bindings: dict) -> None:
        """The input's shape against its declared one, binding symbolic dims (N) on the way."""
        if len(shape) != len(info.shape):
            raise SessionError(f"input '{name}' must have shape {list(info.shape)}, got {list(shape)}")
        for axis, (dim, actual) in enumerate(zip(info.shape, shape)):
            if type(dim) is int and dim == actual:  # a static dim: no call on every run
                continue
            problem = bind_dim(dim, actual, bindings)
            if problem:
                raise SessionError(f"input '{name}' axis {axis} ({list(info.shape)}): {problem}")

    def _checked_input(self, name: str, array, info: TensorInfo, bindings: dict) -> np.ndarray:
        array = np.asarray(array)
        expected = numpy_dtype(info.dtype)
        if array.dtype != expected:
            raise SessionError(f"input '{name}' must be {info.dtype} ({expected}), got {array.dtype}")
        self._check_shape(name, array.shape, info, bindings)
        return c_contiguous(array)

    # ---- plan validation ----------------------------------------------------------------------
    def _load_plan(self, plan) -> None:
        if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
            raise ArtifactError(f"the artifact's plan is not plan format {PLAN_FORMAT}")
        count = plan["values"]
        if type(count) is not int or not 0 <= count <= 1 << 24:
            raise ArtifactError("plan.values must be a slot count")

        def slot(value, where):
            if type(value) is not int or not 0 <= value < count:
                raise ArtifactError(f"{where}: slot {value!r} is outside [0, {count})")
            return value

        defined = set()
        constant_slots: list = [None] * count
        for entry in plan["constants"]:
            name = entry["tensor"]
            if name not in self.artifact.tensors:
                raise ArtifactError(f"plan constant '{name}' is not among the artifact's tensors")
            index = slot(entry["value"], f"constant '{name}'")
            constant_slots[index] = self.artifact.tensors[name]
            defined.add(index)
        self._inputs = []
        for entry in plan["inputs"]:
            index = slot(entry["value"], f"input '{entry['name']}'")
            self._inputs.append((str(entry["name"]), index, TensorInfo.from_json(entry["type"])))
            defined.add(index)
        steps = []
        for number, entry in enumerate(plan["steps"]):
            where = f"step {number} ({entry.get('op')!r})"
            if entry["op"] not in KERNELS:
                raise ArtifactError(f"{where}: this runtime has no kernel for op '{entry['op']}'")
            if not isinstance(entry["attrs"], dict):
                raise ArtifactError(f"{where}: attrs must be an object")
            operands = tuple(None if s is None else slot(s, where) for s in entry["operands"])
            if any(s is not None and s not in defined for s in operands):
                raise ArtifactError(f"{where} reads a slot no earlier step writes")
            results = tuple(slot(s, where) for s in entry["results"])
            defined.update(results)
            types = tuple(None if t is None else TensorInfo.from_json(t) for t in entry["types"])
            if len(types) != len(operands):
                raise ArtifactError(f"{where}: one type per operand expected")
            release = tuple(slot(s, where) for s in entry["release"])
            symbolic = tuple(name for name, v in entry["attrs"].items()
                             if isinstance(v, list) and any(isinstance(d, str) for d in v))
            steps.append(_Step(entry["op"], entry["attrs"], operands, results, types, release,
                               str(entry.get("source", "")), symbolic, KERNELS[entry["op"]]))
        self._outputs = []
        for entry in plan["outputs"]:
            index = slot(entry["value"], f"output '{entry['name']}'")
            if index not in defined:
                raise ArtifactError(f"output '{entry['name']}' is never computed")
            self._outputs.append((str(entry["name"]), index, TensorInfo.from_json(entry["type"])))
        self._steps = steps
        self._constant_slots = constant_slots
        self._output_names = [name for name, _, _ in self._outputs]
        self._native_plans: dict[tuple, object] = {}  # input shapes -> NativePlan or None
        self._native_plan_limit = MAX_PROGRAMS  # 0: every run on the executor

    def _prepare_steps(self) -> None:
        """Prepares the kernel of each step whose attributes are known before a run (no symbolic
        dims), given its constant operands: what a small layer's kernel would otherwise redo on
        every run (packing lookups, multipliers, bounds) took longer than its native call. Then
        fuses the steps that run better as one (cpu_ops.blocks)."""
        for index, step in enumerate(self._steps):
            prepare = PREPARERS.get(step.op)
            if prepare is None or step.symbolic_attrs:
                continue
            operands = [None if s is None else RUNTIME if self._constant_slots[s] is None
                        else self._constant_slots[s] for s in step.operands]
            prepared = prepare(step.attrs, list(step.types), operands)
            if prepared is not None:
                self._steps[index] = dataclasses.replace(step, prepared=prepared)
        self._steps = fuse_blocks(self._steps, self._constant_slots,
                                  [slot for _, slot, _ in self._outputs])


def _with_run_allocator(function, *args):
    """function(*args) with the arrays it makes from CACHE_LINE_ALLOCATOR (runtime/allocator.py);
    the caller's allocator is back when it returns or raises."""
    previous = set_array_allocator(CACHE_LINE_ALLOCATOR)
    try:
        return function(*args)
    finally:
        set_array_allocator(previous)


class _StepClock:
    """A trace of the executor's runs that keeps each step's milliseconds, from the previous
    step's record (or the run's start) to its own."""

    def __init__(self, steps: int):
        self.samples: list[list[float]] = [[] for _ in range(steps)]
        self._index = 0
        self._last = 0.0

    def start(self) -> None:
        self._index = 0
        self._last = time.perf_counter()

    def record(self, step, attrs: dict, operands: list, results: list) -> None:
        now = time.perf_counter()
        self.samples[self._index].append((now - self._last) * 1e3)
        self._index += 1
        self._last = now


def bound_attrs(step: _Step, bindings: Mapping[str, int]) -> dict:
    """The step's attributes with symbolic dims evaluated for this run's bindings."""
    if not step.symbolic_attrs:
        return step.attrs
    return dict(step.attrs, **{name: [evaluate_dim(d, bindings) for d in step.attrs[name]]
                               for name in step.symbolic_attrs})


def load(source: str | Path | bytes, target: str = "cpu", threads: int | None = None) -> Session:
    """Open an artifact (path or bytes) as a Session; `threads` caps the native kernels' threads
    (default: the cores this process may run on)."""
    return Session(source, target, threads)
