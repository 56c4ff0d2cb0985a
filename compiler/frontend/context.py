"""What converters build with: the graph under construction and the FX node being converted."""

from __future__ import annotations

import numpy as np
import torch
import torch.fx

from ..dims import Dim
from ..dtypes import DType
from ..ir import UNKNOWN_LOCATION, Graph, Location, Value
from .symbols import SymbolNames
from .torch_types import ir_dtype


class ConversionContext:
    def __init__(self, graph: Graph, symbols: SymbolNames):
        self.graph = graph
        self.symbols = symbols
        self.node: torch.fx.Node | None = None
        self.loc: Location = UNKNOWN_LOCATION
        self._scalars: dict[tuple[bytes, DType], Value] = {}

    def emit(self, op: str, *operands: Value | None, **attrs) -> Value | list[Value]:
        """Append an IR node at the current source location; one result comes back bare."""
        node = self.graph.add_node(op, operands, attrs, self.loc)
        return node.results[0] if len(node.results) == 1 else node.results

    def scalar(self, value, dtype: DType) -> Value:
        """A 0-d constant, shared by every use of the same value in the same dtype."""
        array = np.asarray(value).astype(dtype.numpy)
        key = (array.tobytes(), dtype)
        if key not in self._scalars:
            self._scalars[key] = self.constant("scalar", array)
        return self._scalars[key]

    def constant(self, stem: str, array: np.ndarray) -> Value:
        return self.graph.add_constant(self.graph.unique_constant_name(stem), array)

    def cast(self, value: Value, dtype: DType) -> Value:
        return value if value.type.dtype == dtype else self.emit("cast", value, dtype=dtype)

    def operand(self, value: Value | bool | int | float, dtype: DType) -> Value:
        """A tensor operand or a Python scalar as a Value of ``dtype``."""
        if isinstance(value, Value):
            return self.cast(value, dtype)
        return self.scalar(value, dtype)

    @property
    def result(self) -> torch.Tensor:
        """What torch traced for the current node's (first) result."""
        value = self.node.meta["val"]
        return value[0] if isinstance(value, (tuple, list)) else value

    @property
    def result_dtype(self) -> DType:
        return ir_dtype(self.result.dtype)

    @property
    def result_shape(self) -> tuple[Dim, ...]:
        return self.symbols.shape(self.result)
