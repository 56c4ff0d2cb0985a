"""fold-constants: evaluate nodes whose operands are all constants."""

from __future__ import annotations

import numpy as np

from nimbus.compiler.ir import Graph
from nimbus.compiler.ops import get_op

from .manager import PassContext
from .registry import register_pass
from .rewrite import remove_dead_nodes


@register_pass("fold-constants")
def fold_constants(graph: Graph, ctx: PassContext, *, max_elements: int = 16) -> bool:
    """Replace every node whose operands are all constants by constants computed with the
    reference interpreter's op implementations. Results with symbolic shapes stay, and so does
    every result that takes more bytes than its operands, unless it has at most `max-elements`
    elements (scalars and shape-like values, which later rewrites may need as constants): such a
    node decodes stored data (a codebook lookup of shared weights, a dequantize of int8 weights,
    an expand or cast of a constant), and folding it would only grow the artifact and undo the
    compression that created it, however small the layer.

    Options:
    max-elements: largest result, in elements, folded when it takes more bytes than its operands
    """
    folded = 0
    for node in list(graph.nodes):
        operands = [o for o in node.operands if o is not None]
        if not all(o.is_constant for o in operands):
            continue
        if not all(r.type.is_static for r in node.results):
            continue
        size = sum(int(np.prod(r.type.shape)) for r in node.results)
        stored = sum(int(np.prod(r.type.shape)) * r.type.dtype.itemsize for r in node.results)
        operand_bytes = sum(o.data.nbytes for o in {id(o): o for o in operands}.values())
        if size > max_elements and stored > operand_bytes:
            continue
        op = get_op(node.op)
        arrays = [o.data if o is not None else None for o in node.operands]
        types = [o.type if o is not None else None for o in node.operands]
        results = op.run_reference(arrays, node.attrs, types)
        stem = f"{operands[0].name}.{node.op}" if operands else node.op
        for value, array in zip(node.results, results):
            constant = graph.add_constant(graph.unique_constant_name(stem), np.asarray(array),
                                          value.type.quant)
            graph.replace_all_uses(value, constant)
        folded += 1
    if folded:
        remove_dead_nodes(graph)
        graph.remove_unused_constants()
    ctx.count("nodes-folded", folded)
    return bool(folded)
