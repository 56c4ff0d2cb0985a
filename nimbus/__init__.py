"""nimbus: a model compiler for cloud inference.

A PyTorch model goes in; a small, verified artifact comes out, and a small runtime serves it.
``import nimbus`` stays light: the compiler (torch, lark, sympy) is imported on first use of a
compiler function, so a serving container with only the runtime's dependencies can import it.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public name -> (module, attribute); resolved lazily by __getattr__ below.
_LAZY_API = {
    "from_torch": ("nimbus.compiler.frontend", "from_torch"),
    "print_ir": ("nimbus.compiler.text", "print_ir"),
    "parse_ir": ("nimbus.compiler.text", "parse_ir"),
    "save_ir": ("nimbus.compiler.text", "save_ir"),
    "load_ir": ("nimbus.compiler.text", "load_ir"),
    "interpret": ("nimbus.compiler.interpreter", "interpret"),
    "verify": ("nimbus.compiler.verifier", "verify"),
    "run_passes": ("nimbus.passes", "run_passes"),
    "compile": ("nimbus.compiler.compile", "compile"),
    "load": ("nimbus.runtime.session", "load"),
    "Session": ("nimbus.runtime.session", "Session"),
    "Graph": ("nimbus.compiler.ir", "Graph"),
    "TensorType": ("nimbus.compiler.ir", "TensorType"),
    "DType": ("nimbus.compiler.dtypes", "DType"),
}

__all__ = sorted(_LAZY_API) + ["__version__"]


def __getattr__(name: str):
    try:
        module_name, attribute = _LAZY_API[name]
    except KeyError:
        raise AttributeError(f"module 'nimbus' has no attribute '{name}'") from None
    value = getattr(importlib.import_module(module_name), attribute)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return __all__
