"""Walks an exported FX graph and builds the IR Graph, one converter per ATen op.

Before building anything, every node is checked against the converter table so that one error
lists all that is unsupported. While building, each IR result type is compared with what torch
traced for the node, which catches converter bugs at the op that has them.
"""

from __future__ import annotations

import torch
import torch.fx
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind

from ..ir import Graph, Location, TensorType, Value

# Importing each family module registers its converters.
from . import (  # noqa: F401
    aten_creation,
    aten_elementwise,
    aten_nn,
    aten_passthrough,
    aten_reduce,
    aten_shape,
)
from .context import ConversionContext
from .errors import ConversionError, UnsupportedOpsError
from .locations import source_line
from .symbols import SymbolNames, same_dim
from .table import CONVERTERS
from .torch_types import has_ir_dtype, ir_dtype, to_numpy

# FX nodes traced to these compute sizes, not tensors; they become IR dims, never IR nodes.
SYMBOLIC = (torch.SymInt, torch.SymBool, torch.SymFloat, int, float, bool)
CONSTANT_KINDS = (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)


def convert_program(program: ExportedProgram, input_names: list[str], graph_name: str) -> Graph:
    """The IR graph of ``program``; its user inputs are named ``input_names``, in order."""
    folded: dict[torch.fx.Node, torch.Tensor] = {}
    unsupported = find_unsupported(program, folded)
    if unsupported:
        raise UnsupportedOpsError(unsupported)
    user_inputs = [node for node in program.graph.nodes if node.op == "placeholder"
                   and _input_spec(program, node).kind == InputKind.USER_INPUT]
    batch_symbols = [s for s in map(_batch_symbol, user_inputs) if s is not None]
    cx = ConversionContext(Graph(graph_name), SymbolNames(batch_symbols))
    names = dict(zip(user_inputs, input_names))
    values: dict[torch.fx.Node, object] = {}
    for node in program.graph.nodes:
        if node.op == "placeholder":
            values[node] = _placeholder(cx, program, node, names.get(node))
        elif node in folded:
            values[node] = cx.graph.add_constant(cx.graph.unique_constant_name(node.name),
                                                 to_numpy(folded[node]))
            _check_against_trace(cx, node, values[node])
        elif node.op == "call_function":
            values[node] = _convert_node(cx, node, values)
        elif node.op == "output":
            cx.graph.set_outputs([values[arg] for arg in node.args[0]])
    cx.graph.remove_unused_constants()
    return cx.graph


def find_unsupported(program: ExportedProgram, folded: dict) -> list[tuple[str, Location, str]]:
    """(what, Location, source text) for everything the frontend cannot convert, once per line.
    An op without a converter whose inputs are constants alone goes into ``folded`` instead,
    with the tensor torch computes for it (see StaticValues)."""
    found: dict[tuple, tuple[str, Location, str]] = {}
    static = StaticValues(program)
    for node in program.graph.nodes:
        reason = _unsupported(program, node)
        if reason is not None and node.op == "call_function":
            value = static.value(node)
            if value is not None:
                folded[node] = value
                continue
        if reason is not None:
            line = source_line(node)
            found.setdefault((reason, line.loc.file, line.loc.line), (reason, line.loc, line.code))
    return list(found.values())


def _unsupported(program: ExportedProgram, node: torch.fx.Node) -> str | None:
    if node.op == "placeholder":
        spec = _input_spec(program, node)
        if spec.kind != InputKind.USER_INPUT and spec.kind not in CONSTANT_KINDS:
            return f"{spec.kind.name.lower()} input {node.name}"
        dtype = _dtype_without_ir_type(node.meta.get("val"))
        return f"{spec.target or node.name} ({dtype} tensor)" if dtype else None
    if node.op == "output":
        return _unsupported_outputs(program, node)
    if node.op != "call_function":
        return f"{node.op} {node.target}"
    if isinstance(node.meta.get("val"), SYMBOLIC):
        return None
    name = op_name(node.target)
    converter = CONVERTERS.get(node.target)
    if converter is None:
        return name
    reason = converter.check(node) if converter.check is not None else None
    if reason is None:
        dtype = _dtype_without_ir_type(node.meta.get("val"))
        reason = f"{dtype} result" if dtype else None
    return f"{name} ({reason})" if reason else None


class StaticValues:
    """What a node computes where it depends on parameters, buffers and literals alone, run in
    torch on demand: Swin's attention mask, built by slice assignments (slice_scatter, copy) on
    zeros, and its cyclic shift's indices (fmod of an arange) have no IR ops, but they are
    constants of the model. Only ops without an IR form are replaced so; seeded random ops,
    uninitialized memory and symbolic shapes have no static value, nor do results of more than
    MAX_ELEMENTS elements."""

    MAX_ELEMENTS = 1 << 24

    def __init__(self, program: ExportedProgram):
        self.program = program
        self.values: dict[torch.fx.Node, torch.Tensor | None] = {}

    def value(self, node: torch.fx.Node) -> torch.Tensor | None:
        # Depth first without recursion: the inputs of a deep model's last op reach far back.
        stack = [node]
        while stack:
            top = stack[-1]
            if top in self.values:
                stack.pop()
                continue
            pending = [source for source in _inputs(top) if source not in self.values] \
                if self._may_be_static(top) else []
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            self.values[top] = self._compute(top)
        return self.values[node]

    def _may_be_static(self, node: torch.fx.Node) -> bool:
        traced = node.meta.get("val")
        return node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload) \
            and isinstance(traced, torch.Tensor) and traced.numel() <= self.MAX_ELEMENTS \
            and all(isinstance(d, int) for d in traced.shape) \
            and torch.Tag.nondeterministic_seeded not in node.target.tags \
            and "empty" not in node.target.name()

    def _compute(self, node: torch.fx.Node) -> torch.Tensor | None:
        """The node's value once every input's is known (None: not static)."""
        if node.op == "placeholder":
            spec = _input_spec(self.program, node)
            if spec.kind not in CONSTANT_KINDS:
                return None
            return _constant_tensor(self.program, spec.target)
        if not self._may_be_static(node) or any(self.values[source] is None
                                                 for source in _inputs(node)):
            return None
        args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), self.values.get)
        try:
            with torch.no_grad():
                result = node.target(*args, **kwargs)
        except Exception:  # then the op is reported as unsupported, with its line
            return None
        return result if isinstance(result, torch.Tensor) else None


def _inputs(node: torch.fx.Node) -> list[torch.fx.Node]:
    found: list[torch.fx.Node] = []
    torch.fx.node.map_arg((node.args, node.kwargs), found.append)
    return found


def _unsupported_outputs(program: ExportedProgram, node: torch.fx.Node) -> str | None:
    for spec in program.graph_signature.output_specs:
        if spec.kind != OutputKind.USER_OUTPUT:
            return f"{spec.kind.name.lower()} of {spec.target} (forward changes model state)"
    for arg in node.args[0]:
        if not isinstance(arg, torch.fx.Node) or not isinstance(arg.meta.get("val"), torch.Tensor):
            return f"output {arg} (graph outputs must be tensors)"
    return None


def _dtype_without_ir_type(traced) -> torch.dtype | None:
    for value in traced if isinstance(traced, (tuple, list)) else [traced]:
        if isinstance(value, torch.Tensor) and not has_ir_dtype(value.dtype):
            return value.dtype
    return None


def op_name(target) -> str:
    return str(target) if isinstance(target, torch._ops.OpOverload) else target.__name__


def _input_spec(program: ExportedProgram, node: torch.fx.Node):
    return next(spec for spec in program.graph_signature.input_specs if spec.arg.name == node.name)


def _batch_symbol(node: torch.fx.Node):
    """The symbol sizing axis 0 of an input: the batch (static shapes have none)."""
    traced = node.meta["val"]
    if traced.dim() and isinstance(traced.shape[0], torch.SymInt):
        return traced.shape[0].node.expr
    return None


def _placeholder(cx: ConversionContext, program: ExportedProgram, node: torch.fx.Node,
                 user_name: str | None) -> Value:
    traced = node.meta["val"]
    if user_name is not None:
        return cx.graph.add_input(user_name, TensorType(ir_dtype(traced.dtype),
                                                        cx.symbols.shape(traced)))
    target = _input_spec(program, node).target
    return cx.graph.add_constant(target, to_numpy(_constant_tensor(program, target)))


def _constant_tensor(program: ExportedProgram, target: str) -> torch.Tensor:
    # Parameters and persistent buffers live in the state dict; the rest in `constants`.
    return program.state_dict[target] if target in program.state_dict \
        else program.constants[target]


def _convert_node(cx: ConversionContext, node: torch.fx.Node, values: dict):
    traced = node.meta.get("val")
    if isinstance(traced, SYMBOLIC):
        return cx.symbols.dim(traced) if isinstance(traced, (torch.SymInt, int)) else None
    line = source_line(node)
    cx.node, cx.loc = node, line.loc
    args = torch.fx.node.map_arg(node.args, values.get)
    kwargs = torch.fx.node.map_arg(node.kwargs, values.get)
    try:
        result = CONVERTERS[node.target].fn(cx, *args, **kwargs)
    except ConversionError:
        raise
    except Exception as err:  # whatever went wrong, name the op and the source line
        raise ConversionError(op_name(node.target), line.loc,
                              f"{type(err).__name__}: {err}") from err
    _check_against_trace(cx, node, result)
    return result


def _check_against_trace(cx: ConversionContext, node: torch.fx.Node, result) -> None:
    """The IR's inferred types must be what torch traced: dtype and every (symbolic) dim."""
    traced = node.meta.get("val")
    several = isinstance(traced, (tuple, list)) and isinstance(result, tuple)
    for value, expected in zip(result, traced) if several else [(result, traced)]:
        if value is None or expected is None:
            continue
        problem = _type_mismatch(cx, value, expected)
        if problem:
            raise ConversionError(op_name(node.target), cx.loc, problem)


def _type_mismatch(cx: ConversionContext, value, expected) -> str | None:
    if not isinstance(value, Value) or not isinstance(expected, torch.Tensor):
        return f"the converter gave {value!r} where torch traced {expected!r}"
    shape = cx.symbols.shape(expected)
    dtype = ir_dtype(expected.dtype)
    same = value.type.dtype == dtype and len(shape) == value.type.rank and \
        all(same_dim(a, b) for a, b in zip(value.type.shape, shape))
    if same:
        return None
    return f"the IR infers {value.type} but torch traced {TensorType(dtype, shape)} (frontend bug)"
