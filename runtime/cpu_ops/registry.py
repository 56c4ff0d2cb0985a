"""The CPU backend's op -> kernel table and the one entry point that runs a kernel.

A kernel is ``fn(inputs, attrs, types) -> array | list[array]``: ``inputs`` are numpy arrays
(None for an absent optional operand), ``attrs`` the node's attributes as plain JSON data with
every attribute present (the lowering writes defaults too; dtypes are names such as "u8",
symbolic dims are already bound to ints), and ``types`` the operands' ``TensorInfo`` (None where
nothing is recorded; the quantized ops read their parameters there).

A kernel may also be prepared once per plan step when a Session loads (``preparer(op)``):
``prepare(attrs, types, operands) -> run | None`` sees the step's constant operands (absent ones
are None, those computed at run time ``RUNTIME``) and returns ``run(inputs) -> list | None``
with everything that depends only on them worked out (packed weights, requantization
multipliers, clamp bounds, geometry). That work, repeated on every run, took longer than the
native call of a small layer. ``run`` returns None for inputs it does not handle (another
dtype, an empty tensor), and the step then runs the kernel itself.

A step may also become a call of a native program (``native_step(op)``), which runs a small
model's whole plan in one call from Python (runtime/native_plan.py): ``build(program, attrs,
types, operands, runtime, results) -> arrays | None`` sees the step as one traced run executed
it (``operands``: the program's arrays, and the constants; ``runtime[i]``: whether operand i is
computed at run time; ``results``: the traced results' shapes, dtypes and strides
(native_plan.TracedLayout), which the program's arrays must match), appends its calls to the
``_kernels.Program`` and returns the arrays that will hold its results, or None for a step it
cannot express. Builders take every array they write from ``plan_empty`` / ``plan_empty_like``,
so that the plan's arrays reuse memory whose values are no longer read (native_plan.py's
arena).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from contextvars import ContextVar

import numpy as np

Kernel = Callable[[list, dict, list], "np.ndarray | list[np.ndarray]"]

Prepared = Callable[[list], "list[np.ndarray] | None"]
Preparer = Callable[[dict, list, list], "Prepared | None"]

NativeStep = Callable[[object, dict, list, list, tuple, list], "list[np.ndarray] | None"]

KERNELS: dict[str, Kernel] = {}
PREPARERS: dict[str, Preparer] = {}
NATIVE_STEPS: dict[str, NativeStep] = {}


class _Runtime:
    """An operand computed at run time, as a preparer sees it."""

    def __repr__(self) -> str:
        return "RUNTIME"


RUNTIME = _Runtime()

# How many threads the native kernels may use in the current run. A Session sets it for the
# length of one call; a context variable is private to each thread (and task), so sessions
# running concurrently in one process never see each other's setting.
NATIVE_THREADS: ContextVar[int] = ContextVar("native_threads", default=1)

# The memory of the native plan being built (native_plan.Arena), or None.
PLAN_ARENA: ContextVar = ContextVar("plan_arena", default=None)


def plan_empty(shape, dtype) -> np.ndarray:
    """A C-contiguous array for a program step to write: from the plan's arena while one is
    being built, else a new one."""
    arena = PLAN_ARENA.get()
    return np.empty(shape, dtype) if arena is None else arena.empty(tuple(shape), np.dtype(dtype))


def plan_empty_like(like) -> np.ndarray:
    """plan_empty in the memory order of ``like`` (an array or a traced result's layout: an NCHW
    view of NHWC memory stays one), as np.empty_like makes it."""
    order = sorted(range(like.ndim), key=lambda axis: -abs(like.strides[axis]))
    if order == sorted(order):
        return plan_empty(like.shape, like.dtype)
    memory = plan_empty(tuple(like.shape[axis] for axis in order), like.dtype)
    return memory.transpose(np.argsort(order))


class UnknownOpError(ValueError):
    """An op that the CPU backend has no kernel for."""


def _registrar(table: dict, what: str) -> Callable:
    """A decorator factory: ``@decorator(op)`` puts the function in ``table`` (once per op)."""

    def decorator(op_name: str) -> Callable:
        def register(fn):
            if op_name in table:
                raise ValueError(f"{what} for '{op_name}' is registered twice")
            table[op_name] = fn
            return fn

        return register

    return decorator


kernel = _registrar(KERNELS, "CPU kernel")  # @kernel(op): the op's kernel
preparer = _registrar(PREPARERS, "CPU preparer")  # @preparer(op): its preparer (see above)
native_step = _registrar(NATIVE_STEPS, "native step")  # @native_step(op): its program builder


def without_types(reference) -> Kernel:
    """A kernel from a reference-style ``fn(inputs, attrs)`` that ignores operand types."""
    return lambda inputs, attrs, types: reference(inputs, attrs)


def prepared_or(prepare: Preparer, fallback: Kernel, inputs: list, attrs: dict, types: list):
    """A kernel that has a preparer: prepared for these very operands and run, or ``fallback``
    where the preparer or its run declines them. One result comes back as an array, as kernels
    return it."""
    run = prepare(attrs, types, inputs)
    out = None if run is None else run(inputs)
    if out is None:
        return fallback(inputs, attrs, types)
    return out[0] if len(out) == 1 else out


def run_op(op: str, inputs: list, attrs: dict, types: list) -> list[np.ndarray]:
    """Run ``op``'s CPU kernel; results always come back as a list."""
    try:
        fn = KERNELS[op]
    except KeyError:
        close = difflib.get_close_matches(str(op), list(KERNELS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UnknownOpError(f"no CPU kernel for op '{op}'{hint}") from None
    return call_kernel(fn, op, list(inputs), attrs, list(types))


def call_kernel(fn: Kernel, op: str, inputs: list, attrs: dict, types: list) -> list[np.ndarray]:
    """Run ``op``'s kernel ``fn``, already looked up (a Session does it once per step); results
    come back as a list, and a KeyError for an attribute the plan lacks as a ValueError."""
    try:
        out = fn(inputs, attrs, types)
    except KeyError as err:
        name = err.args[0] if err.args else None
        if isinstance(name, str) and name not in attrs:
            raise ValueError(f"{op}: attribute '{name}' is missing (plans record every "
                             f"attribute, defaults included)") from None
        raise
    return out if isinstance(out, list) else [out]
