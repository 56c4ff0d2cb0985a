"""The reference interpreter: runs any graph, float or quantized, with numpy.

Its results define what a graph means; every kernel and pass is tested against it.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .dims import bind, evaluate
from .ir import Graph, Node, TensorType, Value
from .ops import get_op


class InterpreterError(RuntimeError):
    """A node failed while being interpreted; names the node, its op and its source line."""

    def __init__(self, message: str, node: Node | None = None):
        where = f" while running {node.op} ({node.loc.describe()})" if node is not None else ""
        super().__init__(f"{message}{where}")
        self.node = node


def bind_inputs(graph: Graph, inputs: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Check inputs against the graph's signature; return the values of symbolic dims."""
    expected = [v.name for v in graph.inputs]
    missing = [name for name in expected if name not in inputs]
    extra = [name for name in inputs if name not in expected]
    if missing or extra:
        raise InterpreterError(f"inputs must be exactly {expected}; missing {missing}, "
                               f"unexpected {extra}")
    bindings: dict[str, int] = {}
    for value in graph.inputs:
        array = np.asarray(inputs[value.name])
        if array.dtype != value.type.dtype.numpy:
            raise InterpreterError(f"input '{value.name}' must be {value.type.dtype}, "
                                   f"got {array.dtype}")
        if array.ndim != value.type.rank:
            raise InterpreterError(f"input '{value.name}' must have shape {value.type}, "
                                   f"got {list(array.shape)}")
        for axis, (dim, actual) in enumerate(zip(value.type.shape, array.shape)):
            problem = bind(dim, actual, bindings)
            if problem:
                raise InterpreterError(f"input '{value.name}' axis {axis}: {problem}")
    return bindings


def resolve_attrs(node: Node, bindings: Mapping[str, int]) -> dict:
    """Attributes with symbolic dims replaced by their values."""
    schema = get_op(node.op).attrs
    resolved = dict(node.attrs)
    for name, attr in schema.items():
        if attr.base_kind == "dims" and resolved[name] is not None:
            resolved[name] = tuple(evaluate(d, bindings) for d in resolved[name])
    return resolved


def _check_result(node: Node, index: int, array: np.ndarray, expected: TensorType,
                  bindings: Mapping[str, int]) -> None:
    shape = tuple(evaluate(d, bindings) for d in expected.shape)
    if array.dtype != expected.dtype.numpy or tuple(array.shape) != shape:
        raise InterpreterError(f"result {index} is {array.dtype}{list(array.shape)}, typed "
                               f"{expected} = {list(shape)}", node)


def interpret(graph: Graph, inputs: Mapping[str, np.ndarray], *,
              keep_intermediates: bool = False) -> dict[str, np.ndarray]:
    """Run ``graph`` on named inputs; return its outputs by name.

    With ``keep_intermediates`` the result also maps every node result Value to its array
    (under the key ``"values"``), which analyses such as calibration use.
    """
    bindings = bind_inputs(graph, inputs)
    env: dict[Value, np.ndarray] = {v: np.asarray(inputs[v.name]) for v in graph.inputs}
    env.update({v: v.data for v in graph.constants.values()})
    remaining_uses = _use_counts(graph) if not keep_intermediates else None
    for node in graph.nodes:
        op = get_op(node.op)
        arrays = [env[o] if o is not None else None for o in node.operands]
        types = [o.type if o is not None else None for o in node.operands]
        try:
            results = op.run_reference(arrays, resolve_attrs(node, bindings), types)
        except InterpreterError:
            raise
        except Exception as err:  # noqa: BLE001 - any numpy failure becomes a located error
            raise InterpreterError(f"{type(err).__name__}: {err}", node) from err
        if len(results) != len(node.results):
            raise InterpreterError(f"reference returned {len(results)} results", node)
        for index, (value, array) in enumerate(zip(node.results, results)):
            array = np.asarray(array)
            _check_result(node, index, array, value.type, bindings)
            env[value] = array
        if remaining_uses is not None:
            _release_dead(node, env, remaining_uses)
    outputs = {name: env[value] for name, value in zip(graph.output_names, graph.outputs)}
    if keep_intermediates:
        outputs["values"] = env  # type: ignore[assignment]
    return outputs


def _use_counts(graph: Graph) -> dict[Value, int]:
    counts: dict[Value, int] = {}
    for node in graph.nodes:
        for operand in node.operands:
            if operand is not None and operand.producer is not None:
                counts[operand] = counts.get(operand, 0) + 1
    for value in graph.outputs:
        if value.producer is not None:
            counts[value] = counts.get(value, 0) + 1
    return counts


def _release_dead(node: Node, env: dict, remaining: dict[Value, int]) -> None:
    """Drop intermediate arrays after their last use so big models run in bounded memory."""
    for operand in node.operands:
        if operand is not None and operand in remaining:
            remaining[operand] -= 1
            if remaining[operand] == 0:
                del env[operand]
