"""Native plans: a small model's whole plan as one call of the native extension.

The Python executor costs about 2 us per step and 6 us per run, as much as the kernels of a
model of a few small layers (LeNet at batch 1: 25 us of executor beside 35 us of kernels). So
after the first run for a given input shape, which the executor runs while recording what each
step read and returned, a Session builds a ``_kernels.Program``: one prepared native call per
step (each op's ``native_step`` builder, cpu_ops/registry.py) over arrays allocated once, in
the memory layouts that the traced run's results had. Later runs of that shape copy the inputs
in, make one call without the GIL, and copy the outputs out.

A plan gets a program only when every step has a builder that accepts it and its arrays are
small (MAX_PROGRAM_BYTES); otherwise, and while another thread runs the program (its arrays are
shared), the executor runs as before. The calls are the kernels the executor calls, with the
same arguments, so the results are the same bit for bit.
"""

from __future__ import annotations

import threading

import numpy as np

from . import _kernels
from .cpu_ops.registry import NATIVE_STEPS

# The most bytes of step results a program may hold: its arrays live as long as the session,
# and a large model gains nothing (its executor share is a fraction of a percent).
MAX_PROGRAM_BYTES = 16 << 20
# The most input shapes per session that get a program.
MAX_PROGRAMS = 4


class Trace:
    """What each step of one executor run read and returned, while its results stay within
    MAX_PROGRAM_BYTES: past that the plan gets no program, and the trace lets its arrays go."""

    def __init__(self):
        self.steps: list = []  # (step, attrs, operands, results)
        self.complete = True
        self._bytes = 0

    def record(self, step, attrs: dict, operands: list, results: list) -> None:
        """Called by the executor after each step with what it read and returned."""
        if not self.complete:
            return
        arrays = all(isinstance(result, np.ndarray) for result in results)
        self._bytes += sum(result.nbytes for result in results) if arrays else 0
        if not arrays or self._bytes > MAX_PROGRAM_BYTES:
            self.complete = False
            self.steps.clear()
            return
        self.steps.append((step, attrs, operands, results))


class NativePlan:
    """A program with the arrays its inputs go into and its outputs come from."""

    def __init__(self, program, inputs: list[np.ndarray], outputs: list[np.ndarray],
                 step_calls: list[tuple[object, int, int]]):
        self.program = program
        self.inputs = inputs
        self.outputs = outputs
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
    program = _kernels.Program()
    arrays = list(constants)
    for slot, value in zip(input_slots, inputs):
        arrays[slot] = np.empty_like(value)
    step_calls = []
    for step, attrs, _, results in trace.steps:
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
        step_calls.append((step, first_call, len(program)))
    return NativePlan(program, [arrays[slot] for slot in input_slots],
                      [arrays[slot] for slot in output_slots], step_calls)
