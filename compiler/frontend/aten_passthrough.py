"""FX nodes that build no IR: copies and aliases (the IR has value semantics), runtime checks
that export inserts, and indexing into an op's tuple of results."""

from __future__ import annotations

import operator

import torch
import torch.fx

from .context import ConversionContext
from .table import CONVERTERS, converts

aten = torch.ops.aten


@converts(aten.clone.default, aten.alias.default, aten.detach.default, aten.lift_fresh_copy.default)
def identity(cx: ConversionContext, x, **_memory_format):
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
