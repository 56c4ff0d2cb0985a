"""FX nodes that build no IR: copies and aliases (the IR has value semantics), runtime checks
that export inserts, and indexing into an op's tuple of results."""

from __future__ import annotations

import operator

import torch
import torch.fx

from .context import ConversionContext
from .table import CONVERTERS, argument, converts, fake_value

aten = torch.ops.aten


@converts(aten.clone.default, aten.alias.default, aten.detach.default, aten.lift_fresh_copy.default)
def identity(cx: ConversionContext, x, **_memory_format):
    return x


def _expression(value):
    """An int, or a SymInt's sympy expression: comparable with == without guarding on it."""
    value = fake_value(value)
    return value.node.expr if isinstance(value, torch.SymInt) else value


def _same_elements(node: torch.fx.Node) -> str | None:
    """as_strided that views x's own elements in x's own order: the same shape, and x's stride
    along every axis longer than 1 (adaptive_avg_pool2d's decomposition over channels-last
    data restrides its [N, C, 1, 1] mean so). Other views have no IR form."""
    x = fake_value(node.args[0])
    size = [_expression(d) for d in argument(node, 1, "size")]
    stride = [_expression(d) for d in argument(node, 2, "stride")]
    offset = _expression(argument(node, 3, "storage_offset", None))
    if size != [_expression(d) for d in x.shape]:
        return f"as_strided to shape {size}, not its input's {list(x.shape)}"
    if offset is not None and offset != _expression(x.storage_offset()):
        return "as_strided with another storage offset than its input's"
    moved = [axis for axis, (length, step, own) in enumerate(zip(size, stride, x.stride()))
             if length != 1 and step != _expression(own)]
    if moved:
        return f"as_strided with other strides than its input's along axes {moved}"
    return None


@converts(aten.as_strided.default, check=_same_elements)
def same_elements(cx: ConversionContext, x, size, stride, storage_offset=None):
    return x


@converts(aten._assert_tensor_metadata.default, aten._assert_scalar.default,
          aten.sym_constrain_range.default, aten.sym_constrain_range_for_size.default)
def runtime_check(cx: ConversionContext, *args, **kwargs):
    return None


def _built_result(node: torch.fx.Node) -> str | None:
    """Multi-result ops build only the results inference needs (not max_pool2d's indices)."""
    source, index = node.args
    converter = CONVERTERS.get(getattr(source, "target", None))
    if converter is not None and converter.results is not None and index not in converter.results:
        return f"result {index} of {source.target}"
    return None


@converts(operator.getitem, check=_built_result)
def getitem(cx: ConversionContext, results, index):
    return results[index]
