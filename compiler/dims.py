"""Symbolic dimensions.

A dimension is a plain ``int`` or a sympy expression over named symbols (``N`` for a dynamic
batch, ``8*N`` after a reshape that folds heads into the batch). Integers stay plain ``int`` so
that the common, static case costs nothing.
"""

from __future__ import annotations

from typing import Mapping, Union

import sympy

Dim = Union[int, sympy.Expr]


def symbol(name: str) -> sympy.Symbol:
    """The symbol for a named dimension; sizes are positive integers."""
    return sympy.Symbol(name, integer=True, positive=True)


def simplify(dim) -> Dim:
    """Canonical form: a Python int when the value is known, else a sympy expression."""
    if isinstance(dim, bool):
        raise TypeError("a dimension cannot be a bool")
    if isinstance(dim, int):
        return dim
    expr = sympy.sympify(dim)
    if expr.is_Integer:
        return int(expr)
    return expr


def is_static(dim: Dim) -> bool:
    return isinstance(dim, int)


def format_dim(dim: Dim) -> str:
    """Text of a dimension; parses back to the same expression (see the text grammar)."""
    if isinstance(dim, int):
        return str(dim)
    return sympy.sstr(dim, order="lex").replace(" ", "")


def evaluate(dim: Dim, bindings: Mapping[str, int]) -> int:
    """The integer value of a dimension once its symbols are bound."""
    if isinstance(dim, int):
        return dim
    missing = sorted(s.name for s in dim.free_symbols if s.name not in bindings)
    if missing:
        raise ValueError(f"dimension {format_dim(dim)} needs a value for {', '.join(missing)}")
    value = dim.subs({symbol(name): v for name, v in bindings.items()})
    if not value.is_Integer:
        raise ValueError(f"dimension {format_dim(dim)} is not an integer for {dict(bindings)}")
    return int(value)


def bind(dim: Dim, actual: int, bindings: dict[str, int]) -> str | None:
    """Match a declared dimension against an actual size, extending ``bindings``.

    Returns None on success or a message saying what does not match. Only dimensions that are a
    bare symbol bind a new name; compound expressions are checked once their symbols are known.
    """
    if isinstance(dim, int):
        return None if dim == actual else f"expected {dim}, got {actual}"
    if isinstance(dim, sympy.Symbol) and dim.name not in bindings:
        bindings[dim.name] = actual
        return None
    try:
        expected = evaluate(dim, bindings)
    except ValueError as err:
        return str(err)
    return None if expected == actual else f"expected {format_dim(dim)}={expected}, got {actual}"


def product(dims) -> Dim:
    total: Dim = 1
    for d in dims:
        total = simplify(total * d)
    return total


def same(a: Dim, b: Dim) -> bool:
    """Whether two dimensions are equal for every value of their symbols: the difference is
    expanded first, since sympy keeps 4*N*(H + 1) - N*(4*H + 4) unexpanded."""
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return sympy.expand(sympy.sympify(a) - b) == 0


def floordiv(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a // b
    # Cancelled first: sympy's floor keeps 4*N*(2*f + 2)/(f + 1) whole (f a floor of H), which
    # is 8*N, an integer without floor (a polynomial with integer coefficients in integer dims).
    quotient = sympy.cancel(sympy.sympify(a) / b)
    numerator, denominator = sympy.fraction(quotient)
    if denominator == 1 and (numerator.is_Integer
                             or all(c.is_Integer for c in sympy.Poly(numerator).coeffs())):
        return simplify(numerator)
    return simplify(sympy.floor(quotient))
