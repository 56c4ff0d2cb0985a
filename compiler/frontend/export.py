"""torch.export with a dynamic batch, then decomposition to core ATen.

Example inputs are bound to the parameters of ``forward`` by name, so graph inputs carry those
names whether the examples came as a tensor, a tuple or a dict.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Mapping

import torch
from torch.export import Dim, ExportedProgram

from .symbols import BATCH

aten = torch.ops.aten

# Ops the IR has as single ops: decomposing them would leave a fusion pass to rebuild them.
KEPT_WHOLE = (aten.hardswish.default, aten.hardsigmoid.default, aten.silu.default)


def bind_example_inputs(module: torch.nn.Module, example_inputs) -> dict[str, torch.Tensor]:
    """The example tensors keyed by the names of forward's parameters, in signature order."""
    signature = inspect.signature(module.forward)
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    try:
        if isinstance(example_inputs, Mapping):
            bound = signature.bind(**example_inputs)
        else:
            bound = signature.bind(*example_inputs)
    except TypeError as err:
        raise ValueError(f"example inputs do not match forward{signature}: {err}") from None
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise ValueError(f"forward's variadic parameter '{name}' gives its inputs no "
                             f"names; give forward one parameter per input")
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"example input '{name}' is a {type(value).__name__}, not a tensor")
    return dict(bound.arguments)


def export_program(module: torch.nn.Module, inputs: dict[str, torch.Tensor],
                   dynamic_batch: bool) -> ExportedProgram:
    """Export ``module`` in eval mode (its training flags are restored afterwards)."""
    dynamic_shapes = None
    if dynamic_batch:
        # torch specializes dims of size 1, so a batch-1 example is exported as two copies.
        inputs = {name: torch.cat([t, t]) if t.dim() and t.shape[0] == 1 else t
                  for name, t in inputs.items()}
        # One shared Dim: every input's axis 0 is the same batch, and export fails loudly if
        # the model fixes it to a constant.
        batch = Dim(BATCH)
        dynamic_shapes = {name: {0: batch} if t.dim() else None for name, t in inputs.items()}
    with _eval_mode(module):
        program = torch.export.export(module, (), kwargs=inputs, dynamic_shapes=dynamic_shapes)
    table = torch.export.default_decompositions()
    for op in KEPT_WHOLE:
        table.pop(op)
    with warnings.catch_warnings():
        # torch's own decomposition copies its pytree specs through a deprecated LeafSpec check
        # and warns about it on every compile; nothing in the caller's code can act on that.
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        return program.run_decompositions(table)


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module):
    training = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for m, flag in training.items():
            m.training = flag
