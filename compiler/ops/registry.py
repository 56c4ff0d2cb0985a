"""The op table's machinery: attribute schemas, op definitions, lookup and type inference.

Each op is declared once, in one of the family modules beside this one, with ``define(...)``:
its operands, attributes, type/shape rule, numpy reference and FLOP count sit on adjacent lines.
The printer, parser, verifier, interpreter and cost model all read that one entry.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..dims import Dim, simplify
from ..dtypes import DType
from ..ir import TensorType, Value

REQUIRED = object()


class OpError(ValueError):
    """An op was used with operands or attributes it does not accept."""

    def __init__(self, op: str, message: str):
        super().__init__(f"{op}: {message}")
        self.op = op
        self.detail = message


@dataclass(frozen=True)
class Attr:
    """An attribute's kind, default and meaning.

    Kinds: int, float, bool, str, dtype, ints, floats, dims (ints that may be symbolic), and
    the same with a trailing ``?`` for an attribute that may be absent (None).
    """

    kind: str
    default: Any = REQUIRED
    doc: str = ""

    @property
    def base_kind(self) -> str:
        return self.kind.rstrip("?")

    @property
    def optional(self) -> bool:
        return self.kind.endswith("?")

    def normalize(self, value):
        """The canonical Python value for this kind, or raise TypeError/ValueError."""
        if value is None:
            if self.optional:
                return None
            raise TypeError("must be given")
        kind = self.base_kind
        if kind == "int":
            return _as_int(value)
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
                raise TypeError(f"expected a number, got {value!r}")
            return float(value)
        if kind == "bool":
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"expected true or false, got {value!r}")
            return bool(value)
        if kind == "str":
            if not isinstance(value, str):
                raise TypeError(f"expected a string, got {value!r}")
            return value
        if kind == "dtype":
            return value if isinstance(value, DType) else DType.parse(str(value))
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise TypeError(f"expected a list, got {value!r}")
        if kind == "ints":
            return tuple(_as_int(v) for v in value)
        if kind == "floats":
            return tuple(Attr("float").normalize(v) for v in value)
        if kind == "dims":
            return tuple(simplify(v) if not isinstance(v, (int, np.integer)) else _as_int(v)
                         for v in value)
        raise AssertionError(f"unknown attribute kind {self.kind}")


def _as_int(value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"expected an integer, got {value!r}")
    return int(value)


InferFn = Callable[[list, dict], "TensorType | list[TensorType]"]
ReferenceFn = Callable[[list, dict], "np.ndarray | list[np.ndarray]"]
FlopsFn = Callable[[list, list, dict], Dim]


@dataclass(frozen=True)
class OpDef:
    """Everything nimbus knows about one op.

    ``operands`` names each operand; ``name?`` marks an optional one (None when absent) and a
    last ``name*`` takes any number. ``infer`` maps operand types and attributes to result
    types; ``reference`` maps numpy arrays and attributes (symbolic dims already bound) to
    results, and defines the op's semantics (ops that read quantization parameters also get
    the operand types); ``flops`` counts arithmetic for the cost model.
    """

    name: str
    doc: str
    operands: tuple[str, ...]
    attrs: Mapping[str, Attr]
    infer: InferFn
    reference: ReferenceFn
    flops: FlopsFn
    family: str = ""
    reference_takes_types: bool = False

    def run_reference(self, arrays: list, attrs: dict, operand_types: list) -> list[np.ndarray]:
        """Results of the reference implementation, always as a list."""
        if self.reference_takes_types:
            out = self.reference(arrays, attrs, operand_types)
        else:
            out = self.reference(arrays, attrs)
        return out if isinstance(out, list) else [out]

    @property
    def variadic(self) -> bool:
        return bool(self.operands) and self.operands[-1].endswith("*")

    def operand_names(self) -> list[str]:
        return [o.rstrip("?*") for o in self.operands]

    def check_operand_count(self, count: int) -> None:
        fixed = [o for o in self.operands if not o.endswith("*")]
        required = sum(not o.endswith("?") for o in fixed)
        if count < required or (not self.variadic and count > len(fixed)):
            expected = f"{required}" if required == len(fixed) else f"{required} to {len(fixed)}"
            if self.variadic:
                expected = f"at least {required}"
            raise OpError(self.name, f"takes {expected} operands ({', '.join(self.operands)}), "
                                     f"got {count}")

    def padded(self, operands: Sequence) -> list:
        """Operands with absent trailing optional ones filled in as None (nodes store all)."""
        operands = list(operands)
        if not self.variadic:
            operands += [None] * (len(self.operands) - len(operands))
        return operands

    def normalize_attrs(self, attrs: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(attrs) - set(self.attrs))
        if unknown:
            raise OpError(self.name, f"unknown attribute '{unknown[0]}'"
                                     f"{_suggest(unknown[0], self.attrs)}; "
                                     f"attributes: {', '.join(self.attrs) or 'none'}")
        result = {}
        for name, schema in self.attrs.items():
            if name in attrs:
                value = attrs[name]
            elif schema.default is REQUIRED:
                raise OpError(self.name, f"attribute '{name}' ({schema.kind}) is required")
            else:
                value = schema.default
            try:
                result[name] = schema.normalize(value)
            except (TypeError, ValueError) as err:
                raise OpError(self.name, f"attribute '{name}' ({schema.kind}): {err}") from None
        return result


def _suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


OP_TABLE: dict[str, OpDef] = {}


def define(name: str, doc: str, *, operands: Sequence[str], infer: InferFn, reference: ReferenceFn,
           flops: FlopsFn, attrs: Mapping[str, Attr] | None = None, family: str = "",
           reference_takes_types: bool = False) -> OpDef:
    """Declare an op; each name is declared exactly once."""
    if name in OP_TABLE:
        raise ValueError(f"op '{name}' is declared twice")
    op = OpDef(name, doc, tuple(operands), dict(attrs or {}), infer, reference, flops, family,
               reference_takes_types)
    OP_TABLE[name] = op
    return op


def get_op(name: str) -> OpDef:
    try:
        return OP_TABLE[name]
    except KeyError:
        raise OpError(name, f"unknown op{_suggest(name, OP_TABLE)}") from None


def infer_node(op_name: str, operands: Sequence[Value | None], attrs: Mapping[str, Any]):
    """Normalized attributes and result types for a node, or an OpError saying what is wrong.

    ``operands`` may leave out trailing optional operands.
    """
    op = get_op(op_name)
    op.check_operand_count(len(operands))
    operands = op.padded(operands)
    for i, (spec, value) in enumerate(zip(_expanded_specs(op, len(operands)), operands)):
        if value is None and not spec.endswith("?"):
            raise OpError(op.name, f"operand {i} ({spec.rstrip('*')}) is required")
    normalized = op.normalize_attrs(attrs)
    types = [v.type if v is not None else None for v in operands]
    try:
        result = op.infer(types, normalized)
    except OpError:
        raise
    except (ValueError, TypeError, IndexError) as err:
        raise OpError(op.name, str(err)) from None
    return normalized, [result] if isinstance(result, TensorType) else list(result)


def _expanded_specs(op: OpDef, count: int) -> list[str]:
    if not op.variadic:
        return list(op.operands)
    fixed = list(op.operands[:-1])
    return fixed + [op.operands[-1]] * (count - len(fixed))


def cost(op_name: str, operand_types: list, result_types: list, attrs: dict) -> tuple[Dim, Dim]:
    """(FLOPs, bytes moved) of one node: bytes are every operand read and result written once."""
    op = get_op(op_name)
    moved: Dim = 0
    for t in [*operand_types, *result_types]:
        if t is not None:
            moved = simplify(moved + t.num_elements() * t.dtype.itemsize)
    return simplify(op.flops(operand_types, result_types, attrs)), moved
