"""Symbolic sizes from torch.export as IR dims.

torch names its shape symbols after internal counters (``s77``); the IR calls the batch ``N``.
Sizes arrive as SymInts whose ``.node.expr`` is a sympy expression, possibly using torch's own
integer functions (FloorDiv), which are rewritten into plain sympy before renaming.
"""

from __future__ import annotations

from collections.abc import Iterable

import sympy
import torch
from torch.utils._sympy.functions import CleanDiv, FloorDiv

from ..dims import Dim, simplify, symbol

BATCH = "N"


class SymbolNames:
    """Maps torch's shape symbols to IR symbols: the batch symbols to ``N``, others keep their name."""

    def __init__(self, batch_symbols: Iterable[sympy.Symbol] = ()):
        self.renames = {s: symbol(BATCH) for s in batch_symbols}

    def dim(self, size) -> Dim:
        """An IR dim for an int, a SymInt or a torch sympy expression."""
        if isinstance(size, torch.SymInt):
            size = size.node.expr
        if isinstance(size, int):
            return size
        expr = size.replace(FloorDiv, lambda a, b: sympy.floor(a / b))
        expr = expr.replace(CleanDiv, lambda a, b: a / b)
        renames = {s: self.renames.get(s, symbol(s.name)) for s in expr.free_symbols}
        return simplify(expr.xreplace(renames))

    def shape(self, tensor: torch.Tensor) -> tuple[Dim, ...]:
        return tuple(self.dim(size) for size in tensor.shape)


def same_dim(a: Dim, b: Dim) -> bool:
    if a == b:
        return True
    if isinstance(a, int) and isinstance(b, int):
        return False
    return sympy.simplify(sympy.sympify(a) - b) == 0
