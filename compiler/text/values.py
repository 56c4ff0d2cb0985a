"""Literal values of the text form, both ways: attribute values by their schema kind, inline
constant arrays, and symbolic dimensions.

The grammar reads every value the same way (numbers, names, strings, lists and dimension
expressions); what a value must be depends on where it stands, so it is checked here, with a
TextError pointing at the offending part.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import sympy
from lark import Token, Tree

from ..dims import Dim, format_dim, simplify, symbol
from ..dtypes import DType
from ..ir import TensorType
from .errors import TextError
from .literals import decode_string, float_bits, format_float, format_string

LIST_KINDS = ("ints", "floats", "dims")  # lists of int, float and dim

# The functions format_dim can print; each is built by sympy, never by evaluating text.
DIM_FUNCTIONS = {"floor": sympy.floor, "ceiling": sympy.ceiling, "Mod": sympy.Mod,
                 "Max": sympy.Max, "Min": sympy.Min}


# ---- printing ---------------------------------------------------------------------------------
def format_attribute(value: Any, kind: str) -> str:
    """An attribute value in the text form of its schema kind (``none`` when absent)."""
    if value is None:
        return "none"
    kind = kind.removesuffix("?")
    if kind in LIST_KINDS:
        element = kind.removesuffix("s")
        return "[" + ", ".join(format_attribute(v, element) for v in value) + "]"
    if kind == "dim":
        return format_dim(value)
    if kind == "float":
        return repr(float(value))
    if kind == "bool":
        return "true" if value else "false"
    if kind == "str":
        return format_string(value)
    return str(value)  # int, dtype


def format_constant(array: np.ndarray) -> str:
    """A scalar for rank 0, else the elements as one flat row-major list."""
    dtype = DType.from_numpy(array.dtype)
    if dtype == DType.bool:
        elements = ["true" if x else "false" for x in array.flat]
    elif dtype.is_float:
        elements = [format_float(x, dtype) for x in array.flat]
    else:
        elements = [str(int(x)) for x in array.flat]
    return elements[0] if array.ndim == 0 else "[" + ", ".join(elements) + "]"


# ---- reading ----------------------------------------------------------------------------------
def attribute_value(node, kind: str) -> Any:
    """The Python value of an attribute of schema kind ``kind`` (``ints``, ``float?``, ...)."""
    if kind.endswith("?") and is_name(node, "none"):
        return None
    kind = kind.removesuffix("?")
    if kind in LIST_KINDS:
        element = kind.removesuffix("s")
        items = list_items(node, f"a list ({kind})")
        return tuple(attribute_value(item, element) for item in items)
    return _SCALAR_READERS[kind](node)


def constant_array(node, type: TensorType) -> np.ndarray:
    """The array of an inline constant of ``type``: a scalar for rank 0, else a flat list."""
    shape = tuple(type.shape)
    if type.rank == 0:
        items = [node]
    else:
        items = list_items(node, f"a flat list of {int(np.prod(shape))} elements")
        if len(items) != int(np.prod(shape)):
            raise TextError(f"{type} holds {int(np.prod(shape))} elements, the list has "
                            f"{len(items)}", node)
    dtype = type.dtype
    if dtype.is_float:
        bits = [float_bits(float_text(item), dtype) for item in items]
        bits_type = np.uint16 if dtype.itemsize == 2 else np.uint32
        flat = np.array(bits, dtype=bits_type).view(dtype.numpy)
    elif dtype == DType.bool:
        flat = np.array([to_bool(item) for item in items], dtype=np.bool_)
    else:
        flat = np.array([_in_range(item, dtype) for item in items], dtype=dtype.numpy)
    return flat.reshape(shape)


def is_name(node, name: str) -> bool:
    return isinstance(node, Token) and node.type == "NAME" and node == name


def list_items(node, expected: str) -> list:
    if not (isinstance(node, Tree) and node.data == "list"):
        raise TextError(f"expected {expected}", node)
    return node.children


def to_int(node) -> int:
    if isinstance(node, Tree) and node.data == "neg":
        return -to_int(node.children[0])
    if isinstance(node, Token) and node.type == "NUMBER" and node.isdigit():
        return int(node)
    raise TextError("expected an integer", node)


def float_text(node) -> str:
    """The text of a float literal, sign included: ``-1.5``, ``1e-05``, ``inf``, ``-nan``."""
    if isinstance(node, Tree) and node.data == "neg":
        text = float_text(node.children[0])
        return text[1:] if text.startswith("-") else "-" + text
    if isinstance(node, Token) and (node.type == "NUMBER" or is_name(node, "inf")
                                    or is_name(node, "nan")):
        return str(node)
    raise TextError("expected a number", node)


def to_float(node) -> float:
    return float(float_text(node))


def to_float32(node) -> float:
    """A float32 value (as a Python float) rounded once from the decimal text."""
    bits = float_bits(float_text(node), DType.f32)
    return float(np.asarray(bits, np.uint32).view(np.float32))


def to_bool(node) -> bool:
    if is_name(node, "true") or is_name(node, "false"):
        return node == "true"
    raise TextError("expected true or false", node)


def to_str(node) -> str:
    if isinstance(node, Token) and node.type == "STRING":
        return decode_string(node)
    raise TextError("expected a double-quoted string", node)


def to_dtype(node) -> DType:
    if not (isinstance(node, Token) and node.type == "NAME"):
        raise TextError("expected an element type such as f32", node)
    try:
        return DType.parse(node)
    except ValueError as err:
        raise TextError(str(err), node) from None


def to_dim(node) -> Dim:
    """A dimension: an integer or an expression over symbols (``8*N``, ``floor(N/2)``)."""
    return simplify(_dim_expression(node))


def _dim_expression(node) -> sympy.Expr:
    if isinstance(node, Token):
        if node.type == "NUMBER" and node.isdigit():
            return sympy.Integer(int(node))
        if node.type == "NAME":
            return symbol(str(node))
        raise TextError("expected a dimension: an integer, a name or an expression", node)
    if node.data == "call":
        function, *arguments = node.children
        if function not in DIM_FUNCTIONS:
            raise TextError(f"unknown function '{function}' in a dimension "
                            f"(known: {', '.join(DIM_FUNCTIONS)})", function)
        return DIM_FUNCTIONS[function](*(_dim_expression(a) for a in arguments))
    operator = _DIM_OPERATORS.get(node.data)
    if operator is None:
        raise TextError("expected a dimension: an integer, a name or an expression", node)
    operands = [_dim_expression(child) for child in node.children]
    if node.data == "div" and operands[1] == 0:
        raise TextError("division by zero in a dimension", node)
    return operator(*operands)


_DIM_OPERATORS: dict[str, Callable] = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow": lambda a, b: a**b,
    "neg": lambda a: -a,
}

_SCALAR_READERS: dict[str, Callable] = {
    "int": to_int,
    "float": to_float,
    "bool": to_bool,
    "str": to_str,
    "dtype": to_dtype,
    "dim": to_dim,
}


def _in_range(node, dtype: DType) -> int:
    value = to_int(node)
    low, high = dtype.int_range
    if not low <= value <= high:
        raise TextError(f"{value} is outside the range of {dtype} [{low}, {high}]", node)
    return value
