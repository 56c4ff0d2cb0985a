"""pytest plugin: every Triton launch of the kernel tests compiles for a GPU instead of running.

    NIMBUS_COMPILE_REPORT=report.json python -m pytest -p compile_for_gpu tests/kernels/triton

The interpreter that the CPU tests use runs kernels as Python: it never meets what the GPU
compiler refuses (a helper whose returns differ in type under Triton 3.6, say). Here Triton
compiles every launch down to machine code for an sm_90 target (H100/H200), with no GPU: a
stand-in driver answers the device queries, launches become `warmup` compilations (once per
variant: operand dtypes and keyword arguments), and tuned kernels take their first config. Results are never computed, so the tests'
own checks fail; the report lists only the exceptions Triton raised, and which kernels compiled.
"""

from __future__ import annotations

import json
import os

os.environ["TRITON_INTERPRET"] = "0"  # before any kernel module is imported

from triton.backends.compiler import GPUTarget
from triton.runtime import driver
from triton.runtime.jit import JITFunction

TARGET = GPUTarget("cuda", 90, 32)


class CompileOnlyDriver:
    """The driver queries a launch makes before it compiles, answered for one sm_90 device."""

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return TARGET


compiled: set[str] = set()
triton_errors: list[dict] = []


def _variant(fn, args, kwargs) -> tuple:
    """What changes the compiled code beyond integer specialization: operand dtypes and the
    keyword arguments (the launchers pass every tl.constexpr by keyword)."""
    dtypes = tuple(str(a.dtype) if hasattr(a, "dtype") else type(a).__name__ for a in args)
    return fn.__name__, dtypes, tuple(sorted((k, repr(v)) for k, v in kwargs.items()))


seen_variants: set[tuple] = set()


def _compile_only(self, *args, grid, warmup, **kwargs):
    variant = _variant(self.fn, args, kwargs)
    if variant in seen_variants:  # the same code at another size: compiling again finds nothing new
        return None
    seen_variants.add(variant)
    kernel = _launch(self, *args, grid=grid, warmup=True, **kwargs)
    compiled.add(self.fn.__name__)
    return kernel


def _tuned(kernel, key, tensor, launch):
    from nimbus.kernels.triton.autotune import SPACES

    launch(SPACES[kernel][0])  # what the interpreter runs; configs change block sizes, not code paths
    return SPACES[kernel][0]


def pytest_configure(config):
    global _launch
    driver.set_active(CompileOnlyDriver())
    _launch = JITFunction.run
    JITFunction.run = _compile_only
    import importlib
    import sys

    from nimbus.kernels.triton import KERNEL_MODULES

    for name in KERNEL_MODULES:
        importlib.import_module(f"nimbus.kernels.triton.{name}")
    for name, module in list(sys.modules.items()):  # launchers imported `tuned` by name
        if name.startswith("nimbus.kernels.triton") and hasattr(module, "tuned"):
            module.tuned = _tuned


def pytest_runtest_makereport(item, call):
    error = call.excinfo
    if error is not None and type(error.value).__module__.startswith("triton"):
        cause = error.value.__cause__  # a CompilationError's root cause, e.g. a type mismatch
        message = str(error.value)[-1500:] + (f"\ncaused by {cause!r}"[:500] if cause else "")
        triton_errors.append({"test": item.nodeid, "type": type(error.value).__name__,
                              "message": message})


def library_kernels() -> set[str]:
    """The launchable kernels: every JIT function of the library named *_kernel."""
    import sys

    return {name for module_name, module in list(sys.modules.items())
            if module_name.startswith("nimbus.kernels.triton")
            for name, value in vars(module).items()
            if isinstance(value, JITFunction) and name.endswith("_kernel")}


def pytest_sessionfinish(session):
    import triton

    report = {"triton": triton.__version__, "compiled": sorted(compiled),
              "not_compiled": sorted(library_kernels() - compiled), "errors": triton_errors}
    with open(os.environ["NIMBUS_COMPILE_REPORT"], "w") as out:
        json.dump(report, out, indent=1)
