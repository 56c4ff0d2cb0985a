"""The PyTorch frontend: ``from_torch(module, example_inputs) -> Graph``.

torch.export traces the module with a dynamic batch and decomposes it to core ATen; each ATen
op then goes through a small converter (the ``aten_*`` modules) into IR nodes.
"""

from __future__ import annotations

import torch

from ..ir import Graph
from .converter import convert_program
from .errors import ConversionError, UnsupportedOpsError
from .export import bind_example_inputs, export_program

__all__ = ["ConversionError", "UnsupportedOpsError", "from_torch"]


def from_torch(module: torch.nn.Module, example_inputs, dynamic_batch: bool = True) -> Graph:
    """Convert ``module`` to an IR graph whose inputs are named after forward's parameters.

    ``example_inputs`` is a tensor, a tuple of tensors or a dict keyed by parameter name. With
    ``dynamic_batch`` axis 0 of every input is the symbolic batch ``N``; otherwise every shape
    is the example's. Raises UnsupportedOpsError listing every op that cannot be converted.
    """
    inputs = bind_example_inputs(module, example_inputs)
    program = export_program(module, inputs, dynamic_batch)
    return convert_program(program, list(inputs), type(module).__name__)
