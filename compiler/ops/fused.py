"""Fused ops: what the `fuse` pass produces. Each is an ordinary op with reference semantics,
so the interpreter runs a fused graph and kernels are tested against it.

- fused_conv2d / fused_linear / fused_matmul: act(layer(x, w) + bias + residual).
- fused_elementwise: a region of elementwise ops as a small expression over its inputs,
  e.g. ``mul($0,sigmoid($1))`` or ``clamp[min=0.0,max=6.0](add($0,$1))``; only elementwise ops
  from this table may appear, so a kernel template can render any region.
- attention: softmax(q @ k^T * scale + mask) @ v, with rows whose scores are all masked giving
  zeros (PyTorch's scaled_dot_product_attention does the same).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nimbus.runtime.cpu_ops.fused import ACTIVATIONS, layer_epilogue
from nimbus.runtime.cpu_ops.fused import tokenize_expr
from nimbus.runtime.cpu_ops.fused import attention_reference as _attention_reference

from ..dtypes import DType
from ..ir import TensorType
from .common import broadcast_shapes, elements, in_float32, require_float, require_same_dtype
from .nn import CONV_ATTRS, conv2d_infer, conv2d_nchw, linear_infer, matmul_infer
from .registry import Attr, OpError, define, get_op


def activation_of(op: str, attrs: dict) -> str | None:
    """The activation name for a unary node, or None if it is not a fusable activation."""
    for name, spec in ACTIVATIONS.items():
        if spec is not None and spec[0] == op and all(attrs.get(k) == v for k, v in spec[1].items()):
            return name
    return None


def _epilogue_infer(layer_shape, types, a, first_fused_operand: int) -> TensorType:
    dtype = require_same_dtype(types, "fused operands")
    require_float(types[0], "input")
    if a["activation"] not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}")
    residual = types[first_fused_operand]
    if residual is not None and broadcast_shapes(layer_shape, residual.shape) != tuple(layer_shape):
        raise ValueError(f"residual {residual} does not broadcast to the result {list(layer_shape)}")
    return TensorType(dtype, layer_shape)


ACTIVATION_ATTR = {"activation": Attr("str", "none", f"one of {', '.join(ACTIVATIONS)}")}


define("fused_conv2d", "act(conv2d(input, weight) + bias + residual).",
       operands=("input", "weight", "bias?", "residual?"), family="fused",
       attrs={**CONV_ATTRS, **ACTIVATION_ATTR},
       infer=lambda types, a: _epilogue_infer(conv2d_infer(types[:3], a), types, a, 3),
       reference=in_float32(lambda xs, a: layer_epilogue(
           conv2d_nchw(xs[0], xs[1], a["stride"], a["padding"], a["dilation"], a["groups"]),
           xs[2], xs[3], a["activation"], (1, -1, 1, 1))),
       flops=lambda types, results, a: 2 * elements(results[0]) * types[1].shape[1]
       * types[1].shape[2] * types[1].shape[3])

define("fused_linear", "act(input @ weight^T + bias + residual).",
       operands=("input", "weight", "bias?", "residual?"), family="fused", attrs=ACTIVATION_ATTR,
       infer=lambda types, a: _epilogue_infer(linear_infer(types[:3]), types, a, 3),
       reference=in_float32(lambda xs, a: layer_epilogue(np.matmul(xs[0], xs[1].T), xs[2], xs[3],
                                                    a["activation"], (-1,))),
       flops=lambda types, results, a: 2 * elements(results[0]) * types[1].shape[1])

define("fused_matmul", "act(a @ b + residual), batched like matmul.",
       operands=("a", "b", "residual?"), family="fused", attrs=ACTIVATION_ATTR,
       infer=lambda types, a: _epilogue_infer(matmul_infer(types[:2]), types, a, 2),
       reference=in_float32(lambda xs, a: layer_epilogue(np.matmul(xs[0], xs[1]), None, xs[2],
                                                    a["activation"], None)),
       flops=lambda types, results, a: 2 * elements(results[0]) * types[0].shape[-1])


# ---- elementwise regions ------------------------------------------------------------------------
@dataclass(frozen=True)
class Expr:
    """A node of a fused elementwise expression: an input reference or an op application."""

    input: int | None = None
    op: str | None = None
    attrs: tuple = ()
    args: tuple = ()

    def __str__(self) -> str:
        if self.input is not None:
            return f"${self.input}"
        attrs = ""
        if self.attrs:
            attrs = "[" + ",".join(f"{k}={_attr_text(v)}" for k, v in self.attrs) + "]"
        return f"{self.op}{attrs}({','.join(str(a) for a in self.args)})"

    def ops(self) -> list[str]:
        if self.input is not None:
            return []
        return [self.op] + [op for arg in self.args for op in arg.ops()]


def _attr_text(value) -> str:
    if isinstance(value, DType):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def parse_expr(text: str, num_inputs: int) -> Expr:
    """Parse and validate a fused expression: only elementwise ops, inputs $0..$n-1 each used."""
    expr, rest = _parse_term(tokenize_expr(text), text)
    if rest:
        raise ValueError(f"trailing text in fused expression {text!r}")
    used = _inputs_of(expr)
    if used != set(range(num_inputs)):
        raise ValueError(f"fused expression uses inputs {sorted(used)}, has {num_inputs}")
    return expr


def _parse_term(tokens: list[str], text: str):
    if not tokens:
        raise ValueError(f"incomplete fused expression {text!r}")
    head, tokens = tokens[0], tokens[1:]
    if head.startswith("$"):
        return Expr(input=int(head[1:])), tokens
    op = get_op(head)
    if op.family != "elementwise":
        raise ValueError(f"op '{head}' is not elementwise and cannot appear in a fused region")
    attrs = {}
    if tokens and tokens[0] == "[":
        tokens = tokens[1:]
        while tokens and tokens[0] != "]":
            key, eq, value, tokens = tokens[0], tokens[1], tokens[2], tokens[3:]
            if eq != "=":
                raise ValueError(f"expected '=' in fused expression {text!r}")
            if key not in op.attrs:
                op.normalize_attrs({key: None})  # raises the table's unknown-attribute error
            attrs[key] = _attr_value(value, op.attrs[key])
            if tokens and tokens[0] == ",":
                tokens = tokens[1:]
        tokens = tokens[1:]
    if not tokens or tokens[0] != "(":
        raise ValueError(f"expected '(' after '{head}' in fused expression {text!r}")
    tokens = tokens[1:]
    args = []
    while True:
        arg, tokens = _parse_term(tokens, text)
        args.append(arg)
        if tokens and tokens[0] == ",":
            tokens = tokens[1:]
            continue
        if tokens and tokens[0] == ")":
            tokens = tokens[1:]
            break
        raise ValueError(f"expected ',' or ')' in fused expression {text!r}")
    op.check_operand_count(len(args))
    normalized = op.normalize_attrs(attrs)
    shown = tuple((k, v) for k, v in normalized.items() if v != op.attrs[k].default)
    return Expr(op=head, attrs=shown, args=tuple(args)), tokens


def _attr_value(text: str, schema):
    kind = schema.base_kind
    if text == "none":
        return None
    if kind == "float":
        return float(text)
    if kind == "int":
        return int(text)
    return text


def _inputs_of(expr: Expr) -> set[int]:
    if expr.input is not None:
        return {expr.input}
    return set().union(*(_inputs_of(a) for a in expr.args))


def _expr_type(expr: Expr, types) -> TensorType:
    if expr.input is not None:
        return TensorType(types[expr.input].dtype, types[expr.input].shape)
    op = get_op(expr.op)
    arg_types = [_expr_type(a, types) for a in expr.args]
    try:
        result = op.infer(arg_types, op.normalize_attrs(dict(expr.attrs)))
    except (ValueError, TypeError) as err:
        raise OpError(expr.op, f"in fused expression: {err}") from None
    return result if isinstance(result, TensorType) else result[0]


def _expr_eval(expr: Expr, arrays):
    if expr.input is not None:
        return arrays[expr.input]
    op = get_op(expr.op)
    args = [_expr_eval(a, arrays) for a in expr.args]
    return op.run_reference(args, op.normalize_attrs(dict(expr.attrs)), [None] * len(args))[0]


def _fused_elementwise_infer(types, a):
    expr = parse_expr(a["expr"], len(types))
    if str(expr) != a["expr"]:
        raise ValueError(f"expression {a['expr']!r} is not canonical (expected {str(expr)!r})")
    return _expr_type(expr, types)


define("fused_elementwise", "A region of elementwise ops evaluated in one pass over the data.",
       operands=("inputs*",), family="fused",
       attrs={"expr": Attr("str", doc="the region, e.g. mul($0,sigmoid($1))")},
       infer=_fused_elementwise_infer,
       reference=lambda xs, a: _expr_eval(parse_expr(a["expr"], len(xs)), xs),
       flops=lambda types, results, a: elements(results[0])
       * len(parse_expr(a["expr"], len(types)).ops()))


# ---- attention ----------------------------------------------------------------------------------
def attention_infer(types, a):
    q, k, v, mask = types
    dtype = require_same_dtype([q, k, v], "attention q, k, v")
    require_float(q, "q")
    if min(q.rank, k.rank, v.rank) < 2 or q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"attention needs q [.., L, D], k [.., S, D], v [.., S, E]; got {q}, {k}, {v}")
    batch = broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    scores = (*batch, q.shape[-2], k.shape[-2])
    if mask is not None:
        if mask.dtype != DType.bool and mask.dtype != dtype:
            raise ValueError(f"mask must be bool or {dtype}, got {mask}")
        if broadcast_shapes(scores, mask.shape) != scores:
            raise ValueError(f"mask {mask} does not broadcast to the scores {list(scores)}")
    return TensorType(dtype, (*batch, q.shape[-2], v.shape[-1]))


define("attention", "softmax(q @ k^T * scale + mask) @ v; a bool mask keeps where true; rows "
       "masked entirely give zeros.",
       operands=("q", "k", "v", "mask?"), family="fused",
       attrs={"scale": Attr("float?", None, "score scale; default 1/sqrt(head dim)")},
       infer=attention_infer, reference=in_float32(_attention_reference),
       flops=lambda types, results, a: 4 * elements(results[0]) * types[1].shape[-2])
