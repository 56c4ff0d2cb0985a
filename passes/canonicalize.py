"""canonicalize: rewrite what export produces into the forms the rest of nimbus expects."""

from __future__ import annotations

import numpy as np

from nimbus.compiler.dims import product, simplify
from nimbus.compiler.ir import Graph, Node

from .manager import PassContext
from .registry import register_pass
from .rewrite import Absent, Const, Pat, Rule, Var, apply_rules


def _same_type_as_input(node: Node) -> bool:
    return node.results[0].type == node.operands[0].type


def _is_scalar(value, number: float) -> bool:
    return value.is_constant and value.data.size == 1 and float(value.data.reshape(())) == number


def _transposed_2d(node: Node) -> bool:
    return node.attrs["perm"] == (1, 0)


def _bias_for(m) -> bool:
    out_features = m["w"].type.shape[0]
    return tuple(m["b"].type.shape) == (out_features,) and m["b"].type.dtype == m["w"].type.dtype


def _compose_permutations(m, rw):
    inner, outer = m.node("inner").attrs["perm"], m.node("outer").attrs["perm"]
    return rw.op("permute", m["x"], perm=[inner[p] for p in outer])


def _matmul_by_constant(m, rw):
    weight = m["w"]
    return rw.op("linear", m["x"], rw.constant(f"{weight.name}.T", np.ascontiguousarray(weight.data.T)))


def _fold_bias(m, rw):
    if not _bias_for(m):
        return None
    return rw.op("linear", m["x"], m["w"], m["b"])


def _merges_leading_axes(source, flat, kept: int) -> bool:
    """``flat`` is ``source`` with every axis but the last ``kept`` merged into one."""
    head = source.type.shape[:-kept]
    return (len(flat.type.shape) == kept + 1 and simplify(flat.type.shape[0] - product(head)) == 0
            and tuple(flat.type.shape[1:]) == tuple(source.type.shape[-kept:]))


def _unflattened_linear(m, rw):
    flat, outer = m.node("flat").results[0], m.node("outer").results[0]
    leading = outer.type.shape[:-1]
    if flat.type.rank != 2 or simplify(product(leading) - flat.type.shape[0]) != 0:
        return None
    unflattened = rw.op("reshape", m["x"], shape=[*leading, flat.type.shape[1]])
    return rw.op("linear", unflattened, m["w"], m["b"])


def _unflattened_matmul(m, rw):
    a, b = m["a"], m["b"]
    leading = m.node("outer").results[0].type.shape[:-2]
    if a.type.rank != 3 or b.type.rank != 3 or a.type.shape[0] != b.type.shape[0]:
        return None
    if simplify(product(leading) - a.type.shape[0]) != 0:
        return None
    if tuple(m.node("outer").results[0].type.shape[-2:]) != (a.type.shape[1], b.type.shape[2]):
        return None
    unflattened = [rw.op("reshape", v, shape=[*leading, *v.type.shape[1:]]) for v in (a, b)]
    return rw.op("matmul", *unflattened)


IDENTITIES = [
    # reshape(x) to x's own shape -> x; likewise cast, expand, and the identity permutation
    Rule("reshape(x) -> x", Pat("reshape", Var("x"), where=_same_type_as_input), lambda m, rw: m["x"]),
    Rule("cast(x) -> x", Pat("cast", Var("x"), where=_same_type_as_input), lambda m, rw: m["x"]),
    Rule("expand(x) -> x", Pat("expand", Var("x"), where=_same_type_as_input), lambda m, rw: m["x"]),
    Rule("slice(x) -> x", Pat("slice", Var("x"), where=_same_type_as_input), lambda m, rw: m["x"]),
    Rule("permute(x){identity} -> x",
         Pat("permute", Var("x"), where=lambda n: n.attrs["perm"] == tuple(range(len(n.attrs["perm"])))),
         lambda m, rw: m["x"]),
    # x + 0, x - 0, x * 1, x / 1 -> x (when broadcasting does not change x's type)
    Rule("x + 0 -> x", Pat(("add", "sub"), Var("x"), Var("zero", where=lambda v: _is_scalar(v, 0.0)),
                          where=_same_type_as_input), lambda m, rw: m["x"]),
    Rule("x * 1 -> x", Pat(("mul", "div"), Var("x"), Var("one", where=lambda v: _is_scalar(v, 1.0)),
                          where=_same_type_as_input), lambda m, rw: m["x"]),
]

CHAINS = [
    # reshape(reshape(x)) -> reshape(x)
    Rule("reshape(reshape(x)) -> reshape(x)",
         Pat("reshape", Pat("reshape", Var("x"), single_use=True), name="outer"),
         lambda m, rw: rw.op("reshape", m["x"], shape=m.node("outer").attrs["shape"])),
    # permute(permute(x, p), q) -> permute(x, p[q])
    Rule("permute(permute(x)) -> permute(x)",
         Pat("permute", Pat("permute", Var("x"), name="inner", single_use=True), name="outer"),
         _compose_permutations),
]

UNFLATTEN = [
    # reshape(linear(reshape(x){[P, K]})){[..., O]} -> linear(reshape(x){[..., K]}): linear
    # applies to the last axis, so the leading axes need not be flattened
    Rule("reshape(linear(flatten(x))) -> linear(reshape(x))",
         Pat("reshape", Pat("linear", Pat("reshape", Var("x"), name="flat"), Const("w"),
                            Var("b", optional=True), single_use=True), name="outer"),
         _unflattened_linear),
    # reshape(matmul(a, b) over [B1*B2, M, K]){[B1, B2, M, N]} -> matmul over [B1, B2, ...]:
    # matmul batches any leading axes, so the reshapes move to the operands (and usually cancel)
    Rule("reshape(batched matmul) -> matmul of reshaped operands",
         Pat("reshape", Pat("matmul", Var("a"), Var("b"), single_use=True), name="outer"),
         _unflattened_matmul),
]

def _drop_expand(position: int):
    """matmul broadcasts its leading axes itself, so an expand feeding it can go."""

    def rewrite(m, rw):
        operands = list(m.root.operands)
        operands[position] = m["x"]
        result = rw.op("matmul", *operands)
        return result if result.type == m.root.results[0].type else None

    return rewrite


def _keeps_matrix_axes(node: Node) -> bool:
    source, result = node.operands[0].type, node.results[0].type
    return source.rank >= 2 and tuple(source.shape[-2:]) == tuple(result.shape[-2:])


BROADCASTS = [
    # matmul(expand(x), y) -> matmul(x, y), and likewise on the right
    Rule("matmul(expand(x), y) -> matmul(x, y)",
         Pat("matmul", Pat("expand", Var("x"), single_use=True, where=_keeps_matrix_axes),
             Var("y")), _drop_expand(0)),
    Rule("matmul(y, expand(x)) -> matmul(y, x)",
         Pat("matmul", Var("y"), Pat("expand", Var("x"), single_use=True,
                                     where=_keeps_matrix_axes)), _drop_expand(1)),
]

LINEAR = [
    # matmul(x, permute(w){perm=[1,0]}) -> linear(x, w): export's addmm/mm of a Linear layer
    Rule("matmul(x, permute(w)) -> linear(x, w)",
         Pat("matmul", Var("x"), Pat("permute", Const("w"), where=_transposed_2d)),
         lambda m, rw: rw.op("linear", m["x"], m["w"])),
    # matmul(x, W) with a constant 2-D W -> linear(x, W^T)
    Rule("matmul(x, W) -> linear(x, W^T)",
         Pat("matmul", Var("x"), Const("w", where=lambda v: v.type.rank == 2)), _matmul_by_constant),
    # linear(x, w) + b -> linear(x, w, b)
    Rule("linear(x, w) + b -> linear(x, w, b)",
         Pat("add", Pat("linear", Var("x"), Const("w"), Absent(), single_use=True), Const("b"),
             commutative=True),
         _fold_bias),
]


def _live_taps(size, out_size, kernel: int, stride: int, dilation: int, before: int):
    """(first, last) kernel taps along one axis that read inside an image of `size` for some
    output position, or None where the size is symbolic or no tap is dead."""
    if not isinstance(size, int) or not isinstance(out_size, int):
        return None
    live = [tap for tap in range(kernel) if any(
        0 <= position * stride + tap * dilation - before < size for position in range(out_size))]
    if not live or (live[0] == 0 and live[-1] == kernel - 1):
        return None
    return live[0], live[-1]


def _trimmed_conv(m, rw):
    """The convolution without the kernel rows and columns that read only padding (an ASPP's
    3x3 at dilation 36 over a 14x14 map is its centre tap: a 1x1 convolution): the same sums,
    without multiplying zeros. Declined where a trimmed padding would be negative."""
    node = m.node("conv")
    a = node.attrs
    (_, _, height, width), (_, _, out_h, out_w) = node.operands[0].type.shape, node.result.type.shape
    weight = m["w"].data
    top, left, bottom, right = a["padding"]
    spans = [_live_taps(height, out_h, weight.shape[2], a["stride"][0], a["dilation"][0], top),
             _live_taps(width, out_w, weight.shape[3], a["stride"][1], a["dilation"][1], left)]
    if spans == [None, None]:
        return None
    (y0, y1), (x0, x1) = [span or (0, weight.shape[2 + axis] - 1) for axis, span in enumerate(spans)]
    dy, dx = a["dilation"]
    padding = [top - y0 * dy, left - x0 * dx, bottom - (weight.shape[2] - 1 - y1) * dy,
               right - (weight.shape[3] - 1 - x1) * dx]
    if min(padding) < 0:
        return None
    trimmed = rw.constant(f"{m['w'].name}.live", np.ascontiguousarray(weight[:, :, y0:y1 + 1,
                                                                             x0:x1 + 1]))
    dilation = [dy if y1 > y0 else 1, dx if x1 > x0 else 1]
    return rw.op("conv2d", m["x"], trimmed, m["b"], **{**a, "padding": padding,
                                                       "dilation": dilation})


TAPS = [
    Rule("conv2d taps in the padding alone -> smaller kernel",
         Pat("conv2d", Var("x"), Const("w"), Var("b", constant=True, optional=True), name="conv"),
         _trimmed_conv),
]


@register_pass("canonicalize")
def canonicalize(graph: Graph, ctx: PassContext) -> bool:
    """Rewrite to canonical forms until nothing changes: matmul by a (transposed) constant and a
    following bias add become one linear; a linear or matmul wrapped in reshapes that flatten and
    restore leading axes applies to the unflattened tensors; expands feeding a matmul (which
    broadcasts by itself) disappear; chains of reshapes or permutes
    collapse into one;
    no-op reshapes, casts, expands, slices, permutes and additions of 0 or products with 1
    disappear; kernel rows and columns of a convolution that read only padding go."""
    rules = IDENTITIES + CHAINS + BROADCASTS + LINEAR + UNFLATTEN + TAPS
    return apply_rules(graph, rules, ctx.pass_name, ctx.stats)
