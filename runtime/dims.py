"""Symbolic dimensions at run time, without sympy.

The compiler writes a dimension as an int or as the text of an expression over symbols (its
`format_dim`: ``N``, ``4*N``, ``N + 1``, ``floor(N/2)``). The runtime binds symbols from the
inputs' shapes and evaluates the expressions with a small evaluator over Python's `ast`, which
accepts only integers, bound symbols, + - * / // % **, and floor/ceiling: text from an artifact
is never passed to eval. Division is exact (fractions), so ``floor(N/2)`` is what sympy means.
"""

from __future__ import annotations

import ast
import functools
import math
import operator
from fractions import Fraction
from typing import Mapping

_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
              ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
              ast.Pow: operator.pow}
_FUNCTIONS = {"floor": math.floor, "ceiling": math.ceil}
MAX_TEXT = 256
MAX_EXPONENT = 64


class DimError(ValueError):
    """A dimension that cannot be parsed, is unbound, or does not match."""


def evaluate_dim(dim: int | str, bindings: Mapping[str, int]) -> int:
    """The integer value of a dimension once its symbols are bound."""
    if isinstance(dim, int) and not isinstance(dim, bool):
        return dim
    if not isinstance(dim, str) or len(dim) > MAX_TEXT:
        raise DimError(f"invalid dimension {str(dim)[:40]!r}")
    if dim in bindings:  # a bare symbol, the usual dynamic dim: no parse on every run
        return bindings[dim]
    value = _evaluate(_parsed(dim), bindings, dim)
    if Fraction(value).denominator != 1:
        raise DimError(f"dimension {dim} is not an integer for {dict(bindings)}")
    return int(value)


@functools.lru_cache(maxsize=1024)
def _parsed(dim: str) -> ast.AST:
    """The expression tree of a dimension's text, parsed once per text (a plan has a few)."""
    try:
        return ast.parse(dim, mode="eval").body
    except SyntaxError:
        raise DimError(f"invalid dimension {dim!r}") from None


def bind_dim(dim: int | str, actual: int, bindings: dict[str, int]) -> str | None:
    """Match a declared dimension against an actual size, extending ``bindings`` when it is a
    bare symbol not yet bound; None on success, else what does not match."""
    if isinstance(dim, str) and dim.isidentifier() and dim not in bindings:
        bindings[dim] = actual
        return None
    try:
        expected = evaluate_dim(dim, bindings)
    except DimError as err:
        return str(err)
    if expected == actual:
        return None
    declared = dim if isinstance(dim, int) else f"{dim}={expected}"
    return f"expected {declared}, got {actual}"


def _evaluate(node: ast.AST, bindings: Mapping[str, int], text: str):
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in bindings:
            raise DimError(f"dimension {text} needs a value for {node.id}")
        return bindings[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand, bindings, text)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left = _evaluate(node.left, bindings, text)
        right = _evaluate(node.right, bindings, text)
        if isinstance(node.op, ast.Pow) and not (isinstance(right, int) and 0 <= right <= MAX_EXPONENT):
            raise DimError(f"dimension {text} has an unsupported exponent")
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise DimError(f"dimension {text} divides by zero")
        if isinstance(node.op, ast.Div):
            return Fraction(left) / Fraction(right)
        return _OPERATORS[type(node.op)](left, right)
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCTIONS and len(node.args) == 1 and not node.keywords):
        return _FUNCTIONS[node.func.id](_evaluate(node.args[0], bindings, text))
    raise DimError(f"invalid dimension {text!r}")
