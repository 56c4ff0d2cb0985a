"""Text to Graph: the grammar (grammar.lark) gives a syntax tree, which is read statement by
statement into a Graph through Graph.add_input / add_constant / add_node, so every result type
is inferred by the op table and then checked against the type the text declares.

Value names in the text (``%0``, ``%h``) are only labels; a label is defined once and used
after its definition. Every error carries the line and column it is about.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from ..ir import UNKNOWN_LOCATION, Graph, Location, QuantParams, TensorType, Value
from ..ops import OP_TABLE, OpDef, OpError, get_op
from ..verifier import verify
from .errors import IRParseError, TextError, did_you_mean, position
from .literals import decode_name, decode_string, format_name
from .values import (attribute_value, constant_array, is_name, list_items, to_dim, to_dtype,
                     to_float32, to_int)

GRAMMAR = Path(__file__).with_name("grammar.lark")

# How a syntax error names what it expected, for terminals that are patterns.
_EXPECTED_TEXT = {
    "VALUE_NAME": "a %value",
    "GLOBAL_NAME": "an @name",
    "OUTPUT_NAME": "an output name",
    "PASS_NAME": "a pass name",
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": "a string",
    "$END": "the end of the text",
}

QUANT_FIELDS = ("axis", "scale", "zp")


@functools.lru_cache(maxsize=1)
def _lark() -> Lark:
    return Lark(GRAMMAR.read_text(encoding="utf-8"), start="graph", parser="lalr",
                lexer="contextual", propagate_positions=True, maybe_placeholders=False)


def parse_ir(text: str, constants: Mapping[str, np.ndarray] | None = None, *,
             filename: str = "<ir>") -> Graph:
    """The graph that ``text`` describes; ``constants`` holds the arrays of constants printed
    as ``external``, by name. Raises IRParseError, located, for anything that is not valid."""
    try:
        tree = _lark().parse(text)
    except UnexpectedInput as err:
        line, column = _error_position(err, text)
        raise _located(_syntax_message(err), text, filename, line, column) from None
    try:
        return _GraphReader(constants or {}).read(tree)
    except TextError as err:
        raise _located(err.detail, text, filename, *position(err.at)) from None


def _located(detail: str, text: str, filename: str, line: int, column: int) -> IRParseError:
    lines = text.split("\n")
    source_line = lines[line - 1].rstrip("\r") if 0 < line <= len(lines) else ""
    return IRParseError(detail, filename, line, column, source_line)


def _error_position(err: UnexpectedInput, text: str) -> tuple[int, int]:
    if isinstance(err, UnexpectedToken) and err.token.type == "$END" or err.line < 1:
        last_line = text.split("\n")[-1]
        return text.count("\n") + 1, len(last_line) + 1
    return err.line, err.column


def _syntax_message(err: UnexpectedInput) -> str:
    if isinstance(err, UnexpectedCharacters):
        found, expected = f"character {err.char!r}", err.allowed
    elif isinstance(err, UnexpectedToken):
        found = "end of text" if err.token.type == "$END" else f"'{err.token}'"
        expected = err.accepts or err.expected
    else:
        found, expected = "end of text", err.expected
    names = sorted({_expected_text(name) for name in expected or ()})
    return f"unexpected {found}" + (f"; expected {', '.join(names)}" if names else "")


def _expected_text(terminal: str) -> str:
    if terminal in _EXPECTED_TEXT:
        return _EXPECTED_TEXT[terminal]
    return f"'{_lark().get_terminal(terminal).pattern.value}'"


class _GraphReader:
    """Builds a Graph from the syntax tree, one statement at a time, in source order."""

    def __init__(self, external: Mapping[str, np.ndarray]):
        self.external = external
        self.graph = Graph()
        self.values: dict[str, Value] = {}
        self.definitions: dict[str, Token] = {}  # label -> where it is defined
        self.node_labels: dict[str, Token] = {}  # labels nodes define, for use-before-definition

    def read(self, tree: Tree) -> Graph:
        name_token, *items = tree.children
        self.graph.name = decode_name(name_token)
        for node in (item for item in items if item.data == "node"):
            for token in node.children[0].children:
                self.node_labels.setdefault(decode_name(token), token)
        outputs = []
        for item in items:
            if item.data == "parameter":
                self._parameter(*item.children)
            elif item.data == "output":
                outputs.append((item.children[0], item.children[1], self._type(item.children[1])))
            elif item.data == "constant":
                self._constant(*item.children)
            elif item.data == "node":
                self._node(item)
            else:
                self._returns(item, outputs)
        verify(self.graph)
        return self.graph

    # ---- statements -------------------------------------------------------------------------
    def _parameter(self, token: Token, type_tree: Tree) -> None:
        value_type = self._type(type_tree)
        self._check_new(token)
        self._define(token, self.graph.add_input(decode_name(token), value_type))

    def _constant(self, token: Token, type_tree: Tree, value) -> None:
        name = decode_name(token)
        constant_type = self._type(type_tree)
        if name in self.graph.constants:
            raise TextError(f"constant @{format_name(name)} is already defined", token)
        if not constant_type.is_static:
            raise TextError(f"a constant needs a static shape, not {constant_type}", type_tree)
        if is_name(value, "external"):
            data = self._external(name, constant_type, value)
        else:
            data = constant_array(value, constant_type)
        self.graph.add_constant(name, data, constant_type.quant)

    def _external(self, name: str, declared: TensorType, at: Token) -> np.ndarray:
        if name not in self.external:
            raise TextError(f"constant @{format_name(name)} is external, but no array named "
                            f"'{name}' was given", at)
        data = np.asarray(self.external[name])
        try:
            actual = TensorType.of_array(data, declared.quant)
        except (TypeError, ValueError) as err:
            raise TextError(f"the array given for @{format_name(name)}: {err}", at) from None
        if actual != declared:
            raise TextError(f"the array given for @{format_name(name)} is {actual}, the text "
                            f"declares {declared}", at)
        return data

    def _node(self, tree: Tree) -> None:
        results, op_token, operand_tree, *rest = tree.children
        attribute_tree = rest.pop(0) if rest[0].data == "attributes" else None
        type_trees = rest.pop(0).children
        labels = results.children
        for token in labels:
            self._check_new(token)
        op = self._op(op_token)
        operands = [self._operand(token) for token in operand_tree.children]
        attrs = self._op_attributes(op, attribute_tree)
        declared = [self._type(t) for t in type_trees]
        loc = self._location(rest[0]) if rest else UNKNOWN_LOCATION
        try:
            node = self.graph.add_node(op.name, operands, attrs, loc)
        except OpError as err:
            raise TextError(str(err), op_token) from None
        inferred = [r.type for r in node.results]
        if len(labels) != len(inferred):
            raise TextError(f"{op.name} gives {len(inferred)} result(s), {len(labels)} name(s) "
                            f"are bound", results)
        if len(declared) != len(inferred):
            raise TextError(f"{op.name} gives {len(inferred)} result(s), {len(declared)} type(s) "
                            f"are declared", type_trees[0])
        for type_tree, declared_type, inferred_type in zip(type_trees, declared, inferred):
            if declared_type != inferred_type:
                raise TextError(f"declared type {declared_type} does not match {inferred_type}, "
                                f"the type {op.name} infers", type_tree)
        for token, result in zip(labels, node.results):
            self._define(token, result)

    def _returns(self, tree: Tree, outputs: list) -> None:
        values = [self._reference(token) for token in tree.children]
        if len(values) != len(outputs):
            raise TextError(f"the header declares {len(outputs)} output(s), return gives "
                            f"{len(values)}", tree)
        names: list[str] = []
        for (name_token, type_tree, declared), token, value in zip(outputs, tree.children, values):
            name = decode_name(name_token)
            if name in names:
                raise TextError(f"output name '{name}' is used twice", name_token)
            if declared != value.type:
                raise TextError(f"output '{name}' is declared {declared}, but {token} is "
                                f"{value.type}", type_tree)
            names.append(name)
        self.graph.set_outputs(values, names)

    # ---- parts ------------------------------------------------------------------------------
    def _op(self, token: Token) -> OpDef:
        try:
            return get_op(str(token))
        except OpError:
            raise TextError(f"unknown op '{token}'{did_you_mean(token, OP_TABLE)}", token) from None

    def _operand(self, token: Token) -> Value | None:
        if token.type != "NAME":
            return self._reference(token)
        if token == "none":
            return None
        raise TextError(f"expected a %value, an @constant or none, not '{token}'", token)

    def _reference(self, token: Token) -> Value:
        name = decode_name(token)
        if token.type == "GLOBAL_NAME":
            if name not in self.graph.constants:
                raise TextError(f"undefined constant @{format_name(name)}"
                                f"{did_you_mean(name, self.graph.constants)}", token)
            return self.graph.constants[name]
        if name in self.values:
            return self.values[name]
        if name in self.node_labels:
            raise TextError(f"%{format_name(name)} is used before its definition on line "
                            f"{self.node_labels[name].line}", token)
        raise TextError(f"undefined value %{format_name(name)}{did_you_mean(name, self.values)}",
                        token)

    def _check_new(self, token: Token) -> None:
        name = decode_name(token)
        if name in self.values:
            raise TextError(f"%{format_name(name)} is already defined on line "
                            f"{self.definitions[name].line}", token)

    def _define(self, token: Token, value: Value) -> None:
        self._check_new(token)
        name = decode_name(token)
        self.values[name] = value
        self.definitions[name] = token

    def _op_attributes(self, op: OpDef, tree: Tree | None) -> dict:
        attrs = {}
        for key, value in _attribute_items(tree, op.attrs, op.name).items():
            kind = op.attrs[key].kind
            try:
                attrs[key] = attribute_value(value, kind)
            except TextError as err:
                raise TextError(f"attribute '{key}' of {op.name} is {kind}: {err.detail}",
                                err.at) from None
        return attrs

    def _type(self, tree: Tree) -> TensorType:
        dtype_token, dims, *quant = tree.children
        dtype = to_dtype(dtype_token)
        shape = tuple(to_dim(d) for d in dims.children)
        quant_params = self._quant(quant[0]) if quant else None
        try:
            return TensorType(dtype, shape, quant_params)
        except ValueError as err:
            raise TextError(str(err), tree) from None

    def _quant(self, tree: Tree) -> QuantParams:
        fields = _attribute_items(tree, QUANT_FIELDS, "quantization")
        if "scale" not in fields:
            raise TextError("quantization parameters need a scale", tree)
        axis = to_int(fields["axis"]) if "axis" in fields else None
        scale = [to_float32(item) for item in _scalar_or_list(fields["scale"])]
        zero_point = [to_int(item) for item in _scalar_or_list(fields.get("zp"))] or [0]
        try:
            return QuantParams(tuple(scale), tuple(zero_point), axis)
        except ValueError as err:
            raise TextError(str(err), tree) from None

    def _location(self, tree: Tree) -> Location:
        parts = {part.data: part.children for part in tree.children}
        file = line = None
        if "source" in parts:
            file_token, line_token = parts["source"]
            file = decode_string(file_token)
            line = None if line_token == "?" else to_int(line_token)
        scope = decode_string(parts["scope"][0]) if "scope" in parts else ""
        passes = tuple(decode_string(p) if p.type == "STRING" else str(p)
                       for p in parts.get("passes", ()))
        return Location(file, line, scope, passes)


def _attribute_items(tree: Tree | None, known, owner: str) -> dict[str, object]:
    """The ``{key=value, ...}`` of ``tree`` as key -> value node; keys must be ``known``."""
    items: dict[str, object] = {}
    for attribute in tree.children if tree is not None else ():
        key_token, value = attribute.children
        key = str(key_token)
        if key not in known:
            raise TextError(f"unknown {owner} attribute '{key}'{did_you_mean(key, known)}; "
                            f"{owner} takes {', '.join(known) or 'none'}", key_token)
        if key in items:
            raise TextError(f"attribute '{key}' is given twice", key_token)
        items[key] = value
    return items


def _scalar_or_list(node) -> list:
    if node is None:
        return []
    if isinstance(node, Tree) and node.data == "list":
        return list_items(node, "a list")
    return [node]

