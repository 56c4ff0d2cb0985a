"""canonicalize: rewrite what export produces into the forms the rest of nimbus expects."""

from __future__ import annotations

import numpy as np

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


@register_pass("canonicalize")
def canonicalize(graph: Graph, ctx: PassContext) -> bool:
    """Rewrite to canonical forms until nothing changes: matmul by a (transposed) constant and a
    following bias add become one linear; chains of reshapes or permutes collapse into one;
    no-op reshapes, casts, expands, slices, permutes and additions of 0 or products with 1
    disappear."""
    return apply_rules(graph, IDENTITIES + CHAINS + LINEAR, ctx.pass_name, ctx.stats)
