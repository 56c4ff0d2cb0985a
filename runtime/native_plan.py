"""Native plans: a small model's whole plan as one call of the native extension.

The Python executor costs about 2 us per step and 6 us per run, as much as the kernels of a
model of a few small layers (LeNet at batch 1: 25 us of executor beside 35 us of kernels). So
after the first run for a given input shape, which the executor runs while recording the
layout of what each step returned, a Session builds a ``_kernels.Program``: one prepared
native call per step (each op's ``native_step`` builder, cpu_ops/registry.py) over arrays
allocated once, in the memory layouts that the traced run's results had. Later runs of that
shape copy the inputs in, make one call without the GIL, and copy the outputs out.

The program's arrays come from an arena that reuses memory by liveness, as the executor's
freed arrays are reused: a step's results and scratch take memory whose values no later step
reads (each step's `release` list says which die after it), so the program holds about the
run's peak of live activations rather than every value at once, and its steps write to memory
that earlier steps left in cache.

A plan gets a program only when every step has a builder that accepts it and its arena is small
(MAX_PROGRAM_BYTES); otherwise, and while another thread runs the program (its arrays are
shared), the executor runs as before. The calls are the kernels the executor calls, with the
same arguments, so the results are the same bit for bit.
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np

from . import _kernels
from .cpu_ops.registry import NATIVE_STEPS, PLAN_ARENA

# The most bytes of arena a program may hold: its arrays live as long as the session, and a
# large model gains nothing (its executor share is a fraction of a percent).
MAX_PROGRAM_BYTES = 16 << 20
# The most input shapes per session that get a program.
MAX_PROGRAMS = 4


@dataclasses.dataclass(frozen=True)
class TracedLayout:
    """What a builder needs of a traced result: its shape, dtype and memory order (the trace
    keeps no values, so tracing a large model holds no memory)."""

    shape: tuple
    dtype: np.dtype
    strides: tuple

    @property
    def ndim(self) -> int:
        return len(self.shape)


class Trace:
    """What each step of one executor run returned (TracedLayout); incomplete, and empty, once
    a step returns something other than arrays."""

    def __init__(self):
        self.steps: list = []  # (step, attrs, results)
        self.complete = True

    def record(self, step, attrs: dict, operands: list, results: list) -> None:
        """Called by the executor after each step with what it read and returned."""
        if not self.complete:
            return
        if not all(isinstance(result, np.ndarray) for result in results):
            self.complete = False
            self.steps.clear()
            return
        self.steps.append((step, attrs, [TracedLayout(result.shape, result.dtype, result.strides)
                                         for result in results]))


class Arena:
    """The memory of a program's arrays: byte buffers, each free or holding values that some
    plan slot still reads. A buffer's users are the live slots whose arrays lie in it (a
    reshape's result lies in its operand's); scratch that no slot holds is free again once its
    step's calls are in the program, which runs them in order."""

    def __init__(self):
        self.bytes = 0
        self._buffers: dict[int, np.ndarray] = {}  # id -> buffer
        self._users: dict[int, int] = {}
        self._free: list[np.ndarray] = []
        self._taken: list[np.ndarray] = []  # by the step being built

    def empty(self, shape: tuple, dtype: np.dtype) -> np.ndarray:
        """A C-contiguous array in the smallest free buffer that holds it, or in a new one."""
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = count * dtype.itemsize
        if not nbytes:
            return np.empty(shape, dtype)
        fitting = [i for i, buffer in enumerate(self._free) if buffer.nbytes >= nbytes]
        if fitting:
            buffer = self._free.pop(min(fitting, key=lambda i: self._free[i].nbytes))
        else:
            buffer = np.empty(nbytes, np.uint8)  # on a cache line: the run's allocator
            self._buffers[id(buffer)] = buffer
            self._users[id(buffer)] = 0
            self.bytes += nbytes
        self._taken.append(buffer)
        return buffer[:nbytes].view(dtype).reshape(shape)

    def _buffer_of(self, array: np.ndarray) -> int | None:
        base = array
        while isinstance(base, np.ndarray) and id(base) not in self._buffers:
            base = base.base
        return id(base) if isinstance(base, np.ndarray) else None

    def hold(self, array: np.ndarray) -> None:
        """A slot now holds ``array``."""
        buffer = self._buffer_of(array)
        if buffer is not None:
            self._users[buffer] += 1

    def release(self, array: np.ndarray) -> None:
        """A slot that held ``array`` is read no more."""
        buffer = self._buffer_of(array)
        if buffer is not None:
            self._users[buffer] -= 1
            if self._users[buffer] == 0:
                self._free.append(self._buffers[buffer])

    def end_step(self) -> None:
        """The step's calls are in the program: its scratch that no slot holds is free."""
        for buffer in self._taken:
            if self._users[id(buffer)] == 0 and all(buffer is not b for b in self._free):
                self._free.append(buffer)
        self._taken = []


class NativePlan:
    """A program with the arrays its inputs go into and its outputs come from."""

    def __init__(self, program, inputs: list[np.ndarray], outputs: list[np.ndarray],
                 step_calls: list[tuple[object, int, int]], arena_bytes: int):
        self.program = program
        self.inputs = inputs
        self.outputs = outputs
        self.arena_bytes = arena_bytes  # the memory of its steps' results and scratch
        # (plan step, first call, end call): the program's calls that each step added
        self.step_calls = step_calls
        self._lock = threading.Lock()

    def run(self, inputs: list[np.ndarray], threads: int) -> list[np.ndarray] | None:
        """The outputs for these inputs, or None while another thread runs the program."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            for target, value in zip(self.inputs, inputs):
                np.copyto(target, value)
            self.program.run(threads)
            return [np.array(output, order="C") for output in self.outputs]
        finally:
            self._lock.release()

    def profile(self, inputs: list[np.ndarray], threads: int,
                repeats: int) -> list[tuple[object, float]] | None:
        """(plan step, median milliseconds of its calls) in plan order over `repeats` runs of
        the program on these inputs, or None while another thread runs it."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            for target, value in zip(self.inputs, inputs):
                np.copyto(target, value)
            call_ms = self.program.profile(threads, repeats)
        finally:
            self._lock.release()
        return [(step, sum(call_ms[first:end])) for step, first, end in self.step_calls]


def build_native_plan(trace: Trace, constants: list, input_slots: list[int],
                      inputs: list[np.ndarray], output_slots: list[int]) -> NativePlan | None:
    """The native plan of a traced run, or None where a step has no native form; ``constants``
    are the plan's constant slots (None for values computed at run time)."""
    if not trace.complete:
        return None
    arena = Arena()
    token = PLAN_ARENA.set(arena)
    try:
        return _build(trace, constants, input_slots, inputs, output_slots, arena)
    finally:
        PLAN_ARENA.reset(token)


def _build(trace: Trace, constants: list, input_slots: list[int], inputs: list[np.ndarray],
           output_slots: list[int], arena: Arena) -> NativePlan | None:
    program = _kernels.Program()
    arrays = list(constants)
    input_arrays = [np.empty_like(value) for value in inputs]
    for slot, array in zip(input_slots, input_arrays):
        arrays[slot] = array
    outputs = set(output_slots)
    step_calls = []
    for step, attrs, results in trace.steps:
        build = NATIVE_STEPS.get(step.op)
        if build is None:
            return None
        first_call = len(program)
        operands = [None if slot is None else arrays[slot] for slot in step.operands]
        runtime = tuple(slot is not None and constants[slot] is None for slot in step.operands)
        try:
            built = build(program, attrs, list(step.types), operands, runtime, results)
        except (ValueError, TypeError):  # an operand the step's native call does not take
            return None
        if built is None or len(built) != len(results):
            return None
        for slot, array, traced in zip(step.results, built, results):
            if array.shape != traced.shape or array.dtype != traced.dtype:
                return None
            arrays[slot] = array
            arena.hold(array)
        arena.end_step()
        for slot in step.release:
            if slot not in outputs and constants[slot] is None and arrays[slot] is not None:
                arena.release(arrays[slot])
                arrays[slot] = None
        if arena.bytes > MAX_PROGRAM_BYTES:
            return None
        step_calls.append((step, first_call, len(program)))
    return NativePlan(program, input_arrays, [arrays[slot] for slot in output_slots], step_calls,
                      arena.bytes)
