"""The converter table: ATen op overload -> the small function that builds its IR.

A converter is called as ``fn(cx, *args, **kwargs)`` with the FX node's arguments, every FX
node replaced by what it converted to: an IR Value for a tensor, an IR dim for a SymInt, a
tuple for a multi-result op. It returns a Value, a tuple for several results (None where the
IR builds no such result), or None when the op produces nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch.fx

# Says why one particular use of an op cannot be converted, or returns None.
Check = Callable[[torch.fx.Node], "str | None"]


@dataclass(frozen=True)
class Converter:
    fn: Callable
    check: Check | None = None
    results: tuple[int, ...] | None = None  # of a multi-result op, the results it builds


CONVERTERS: dict[Any, Converter] = {}


def converts(*targets, check: Check | None = None, results: tuple[int, ...] | None = None):
    """Register the decorated function as the converter of every target."""

    def register(fn):
        for target in targets:
            if target in CONVERTERS:
                raise ValueError(f"{target} has two converters")
            CONVERTERS[target] = Converter(fn, check, results)
        return fn

    return register


def argument(node: torch.fx.Node, index: int, name: str, default=None):
    """An FX node's argument, given by position or by keyword."""
    if index < len(node.args):
        return node.args[index]
    return node.kwargs.get(name, default)


def fake_value(arg):
    """What torch traced for an argument: the FakeTensor or SymInt of an FX node, else the arg."""
    return arg.meta.get("val") if isinstance(arg, torch.fx.Node) else arg
