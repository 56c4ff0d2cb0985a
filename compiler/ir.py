"""The IR: a typed SSA graph of op nodes over values.

A ``Graph`` owns its input values, named constants (weights) and nodes in execution order. Every
``Value`` has a ``TensorType``; a value is a graph input, a constant, or the result of exactly one
node. What an op means (operands, attributes, types, reference semantics, cost) lives only in the
op table (``compiler.ops``); this module is the container and its queries.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .dims import Dim, format_dim, simplify
from .dtypes import DType


@dataclass(frozen=True)
class QuantParams:
    """Affine quantization: real = scale * (q - zero_point), per tensor or along ``axis``."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None = None

    def __post_init__(self):
        scale = tuple(float(np.float32(s)) for s in np.atleast_1d(self.scale))
        zero_point = tuple(int(z) for z in np.atleast_1d(self.zero_point))
        if len(zero_point) == 1 and len(scale) > 1:
            zero_point = zero_point * len(scale)
        if len(scale) != len(zero_point):
            raise ValueError(f"{len(scale)} scales but {len(zero_point)} zero points")
        if self.axis is None and len(scale) != 1:
            raise ValueError("per-tensor quantization takes one scale; give an axis for more")
        if any(not (s > 0 and np.isfinite(s)) for s in scale):
            raise ValueError(f"quantization scales must be positive and finite, got {scale}")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "zero_point", zero_point)

    @property
    def per_axis(self) -> bool:
        return self.axis is not None

    def scale_array(self) -> np.ndarray:
        return np.asarray(self.scale, dtype=np.float32)

    def zero_point_array(self) -> np.ndarray:
        return np.asarray(self.zero_point, dtype=np.int32)

    def __str__(self) -> str:
        parts = []
        if self.axis is not None:
            parts.append(f"axis={self.axis}")
        parts.append("scale=" + _format_list([_format_float(s) for s in self.scale], self.axis))
        if any(self.zero_point):
            parts.append("zp=" + _format_list([str(z) for z in self.zero_point], self.axis))
        return "{" + ", ".join(parts) + "}"


def _format_list(items: list[str], axis: int | None) -> str:
    return "[" + ", ".join(items) + "]" if axis is not None else items[0]


def _format_float(x: float) -> str:
    """Shortest text that parses back to the same float32."""
    return str(np.float32(x))


@dataclass(frozen=True)
class TensorType:
    dtype: DType
    shape: tuple[Dim, ...]
    quant: QuantParams | None = None

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(simplify(d) for d in self.shape))
        if self.quant is not None:
            if not self.dtype.is_integer:
                raise ValueError(f"quantization parameters on a {self.dtype} tensor")
            axis = self.quant.axis
            if axis is not None:
                if not 0 <= axis < len(self.shape):
                    raise ValueError(f"quantization axis {axis} out of range for rank {self.rank}")
                size = self.shape[axis]
                if isinstance(size, int) and size != len(self.quant.scale):
                    raise ValueError(
                        f"{len(self.quant.scale)} scales for axis {axis} of size {size}"
                    )

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def num_elements(self) -> Dim:
        total: Dim = 1
        for d in self.shape:
            total = simplify(total * d)
        return total

    def with_shape(self, shape: Sequence[Dim]) -> "TensorType":
        return dataclasses.replace(self, shape=tuple(shape))

    def with_dtype(self, dtype: DType, quant: QuantParams | None = None) -> "TensorType":
        return TensorType(dtype, self.shape, quant)

    def __str__(self) -> str:
        text = f"{self.dtype}[{','.join(format_dim(d) for d in self.shape)}]"
        if self.quant is not None:
            text += str(self.quant)
        return text

    @staticmethod
    def of_array(array: np.ndarray, quant: QuantParams | None = None) -> "TensorType":
        return TensorType(DType.from_numpy(array.dtype), tuple(int(d) for d in array.shape), quant)


@dataclass(frozen=True)
class Location:
    """Where a node came from: the user's source line and module, then the passes that touched it."""

    file: str | None = None
    line: int | None = None
    scope: str = ""
    passes: tuple[str, ...] = ()

    @property
    def known(self) -> bool:
        return self.file is not None or bool(self.scope) or bool(self.passes)

    def touched_by(self, pass_name: str) -> "Location":
        if self.passes and self.passes[-1] == pass_name:
            return self
        return dataclasses.replace(self, passes=self.passes + (pass_name,))

    def describe(self) -> str:
        where = f"{self.file}:{self.line}" if self.file else "<unknown source>"
        if self.scope:
            where += f" ({self.scope})"
        if self.passes:
            where += f" via {', '.join(self.passes)}"
        return where

    @staticmethod
    def merge(locations: Iterable["Location"]) -> "Location":
        """The location of a node built from several: the first known source, all passes."""
        locations = list(locations)
        first = next((loc for loc in locations if loc.file), locations[0] if locations else None)
        if first is None:
            return Location()
        passes: list[str] = []
        for loc in locations:
            passes.extend(p for p in loc.passes if p not in passes)
        return dataclasses.replace(first, passes=tuple(passes))


UNKNOWN_LOCATION = Location()


class Value:
    """An SSA value: a graph input, a named constant, or one result of a node."""

    __slots__ = ("type", "name", "producer", "index", "data")

    def __init__(self, type: TensorType, name: str | None = None, producer: "Node | None" = None,
                 index: int = 0, data: np.ndarray | None = None):
        self.type = type
        self.name = name
        self.producer = producer
        self.index = index
        self.data = data

    @property
    def is_constant(self) -> bool:
        return self.data is not None

    @property
    def is_input(self) -> bool:
        return self.producer is None and self.data is None

    def __repr__(self) -> str:
        if self.is_constant:
            return f"@{self.name}: {self.type}"
        if self.is_input:
            return f"%{self.name}: {self.type}"
        return f"<{self.producer.op} result {self.index}: {self.type}>"


class Node:
    """One op application. ``operands`` may hold None for an absent optional operand."""

    __slots__ = ("op", "operands", "attrs", "results", "loc")

    def __init__(self, op: str, operands: Sequence[Value | None], attrs: Mapping[str, Any],
                 result_types: Sequence[TensorType], loc: Location = UNKNOWN_LOCATION):
        self.op = op
        self.operands = list(operands)
        self.attrs = dict(attrs)
        self.results = [Value(t, producer=self, index=i) for i, t in enumerate(result_types)]
        self.loc = loc

    @property
    def result(self) -> Value:
        if len(self.results) != 1:
            raise ValueError(f"{self.op} has {len(self.results)} results, not one")
        return self.results[0]

    def __repr__(self) -> str:
        return f"<Node {self.op} at {self.loc.describe()}>"


class Graph:
    """A function from named inputs to named outputs."""

    def __init__(self, name: str = "main"):
        self.name = name
        self.inputs: list[Value] = []
        self.constants: dict[str, Value] = {}
        self.nodes: list[Node] = []
        self.outputs: list[Value] = []
        self.output_names: list[str] = []
        # value -> the earlier value it stands for, kept as passes replace values; analyses
        # that compare a rewritten graph with the original (the accuracy ledger) follow it.
        self.origins: dict[Value, Value] = {}

    # ---- building -------------------------------------------------------------------------
    def add_input(self, name: str, type: TensorType) -> Value:
        if any(v.name == name for v in self.inputs):
            raise ValueError(f"duplicate input name '{name}'")
        value = Value(type, name=name)
        self.inputs.append(value)
        return value

    def add_constant(self, name: str, data: np.ndarray, quant: QuantParams | None = None) -> Value:
        if name in self.constants:
            raise ValueError(f"duplicate constant name '{name}'")
        data = np.asarray(data, order="C")  # ascontiguousarray would make 0-d arrays 1-d
        value = Value(TensorType.of_array(data, quant), name=name, data=data)
        self.constants[name] = value
        return value

    def unique_constant_name(self, stem: str) -> str:
        if stem not in self.constants:
            return stem
        i = 1
        while f"{stem}_{i}" in self.constants:
            i += 1
        return f"{stem}_{i}"

    def add_node(self, op: str, operands: Sequence[Value | None], attrs: Mapping[str, Any] | None = None,
                 loc: Location = UNKNOWN_LOCATION, *, before: Node | None = None) -> Node:
        """Append (or insert before ``before``) a node; attributes get defaults, results get types."""
        from .ops import get_op, infer_node  # the op table depends on this module

        attrs, result_types = infer_node(op, operands, attrs or {})
        operands = get_op(op).padded(operands)
        node = Node(op, operands, attrs, result_types, loc)
        if before is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(self.nodes.index(before), node)
        return node

    def set_outputs(self, values: Sequence[Value], names: Sequence[str] | None = None) -> None:
        names = list(names) if names is not None else default_output_names(len(values))
        if len(names) != len(values) or len(set(names)) != len(names):
            raise ValueError(f"output names {names} must be unique, one per output")
        self.outputs = list(values)
        self.output_names = names

    # ---- queries --------------------------------------------------------------------------
    def uses(self) -> dict[Value, list[Node]]:
        """Use lists for every value (graph outputs count as a use by None)."""
        users: dict[Value, list] = {}
        for node in self.nodes:
            for operand in node.operands:
                if operand is not None:
                    users.setdefault(operand, []).append(node)
        for value in self.outputs:
            users.setdefault(value, []).append(None)
        return users

    def values(self) -> Iterator[Value]:
        yield from self.inputs
        yield from self.constants.values()
        for node in self.nodes:
            yield from node.results

    def topological_order(self) -> list[Node]:
        """Nodes ordered so that every operand is defined first (stable for an ordered graph)."""
        producers = {r: n for n in self.nodes for r in n.results}
        order: list[Node] = []
        state: dict[Node, int] = {}  # 1 = on the stack, 2 = done
        for root in self.nodes:
            stack = [(root, 0)]
            while stack:
                node, i = stack.pop()
                if i == 0:
                    if state.get(node) == 2:
                        continue
                    if state.get(node) == 1:
                        raise ValueError(f"cycle through {node}")
                    state[node] = 1
                deps = [producers[o] for o in node.operands if o is not None and o in producers]
                pending = [d for d in deps[i:] if state.get(d) != 2]
                if pending:
                    next_dep = pending[0]
                    if state.get(next_dep) == 1:
                        raise ValueError(f"cycle through {next_dep}")
                    stack.append((node, deps.index(next_dep, i) + 1))
                    stack.append((next_dep, 0))
                    continue
                state[node] = 2
                order.append(node)
        return order

    def sort(self) -> None:
        self.nodes = self.topological_order()

    # ---- editing --------------------------------------------------------------------------
    def replace_all_uses(self, old: Value, new: Value) -> None:
        for node in self.nodes:
            node.operands = [new if o is old else o for o in node.operands]
        self.outputs = [new if o is old else o for o in self.outputs]
        self.record_origin(new, old)

    def record_origin(self, new: Value, old: Value) -> None:
        """``new`` computes what ``old`` did (perhaps approximately, perhaps quantized)."""
        if new is not old and new not in self.origins:
            self.origins[new] = self.origin(old)

    def origin(self, value: Value) -> Value:
        return self.origins.get(value, value)

    def remove_node(self, node: Node) -> None:
        self.nodes.remove(node)

    def remove_unused_constants(self) -> int:
        used = {o for n in self.nodes for o in n.operands if o is not None} | set(self.outputs)
        unused = [name for name, value in self.constants.items() if value not in used]
        for name in unused:
            del self.constants[name]
        return len(unused)

    def copy(self) -> "Graph":
        """A structural copy; constant arrays are shared (treat them as immutable)."""
        clone = Graph(self.name)
        mapping: dict[Value, Value] = {}
        for value in self.inputs:
            mapping[value] = clone.add_input(value.name, value.type)
        for name, value in self.constants.items():
            copied = Value(value.type, name=name, data=value.data)
            clone.constants[name] = copied
            mapping[value] = copied
        for node in self.nodes:
            operands = [mapping[o] if o is not None else None for o in node.operands]
            new = Node(node.op, operands, node.attrs, [r.type for r in node.results], node.loc)
            mapping.update(zip(node.results, new.results))
            clone.nodes.append(new)
        clone.set_outputs([mapping[v] for v in self.outputs], self.output_names)
        clone.origins = {mapping[new]: mapping.get(old, old) for new, old in self.origins.items()
                         if new in mapping}
        return clone

    def assign(self, other: "Graph") -> None:
        """Make this graph the same as ``other`` (whose parts it takes over)."""
        self.__dict__.update(other.__dict__)

    def verify(self) -> None:
        from .verifier import verify

        verify(self)

    def __str__(self) -> str:
        from .text import print_ir

        return print_ir(self)


def default_output_names(count: int) -> list[str]:
    return ["output"] if count == 1 else [f"output{i}" for i in range(count)]


class Builder:
    """Builds nodes by op name: ``b = Builder(g); y = b.relu(b.conv2d(x, w, bias, stride=[2, 2]))``.

    Ops with one result return that Value, others a list. ``loc`` applies to every node built.
    """

    def __init__(self, graph: Graph, loc: Location = UNKNOWN_LOCATION):
        self.graph = graph
        self.loc = loc

    def __getattr__(self, op: str):
        def build(*operands: Value | None, **attrs):
            node = self.graph.add_node(op, operands, attrs, self.loc)
            return node.results[0] if len(node.results) == 1 else node.results

        return build
