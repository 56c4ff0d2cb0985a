"""Elementwise ATen ops: activations, arithmetic and comparisons with torch's type promotion,
logic, select, clamp and casts.

The IR wants both operands of a binary op in one dtype: operands are cast to the dtype torch
computes in, and Python scalars become shared 0-d constants of that dtype.
"""

from __future__ import annotations

import torch
import torch.fx

from ..dtypes import DType
from .context import ConversionContext
from .table import converts, fake_value
from .torch_types import promoted_dtype

aten = torch.ops.aten

UNARY = {
    aten.relu.default: "relu",
    aten.sigmoid.default: "sigmoid",
    aten.tanh.default: "tanh",
    aten.silu.default: "silu",
    aten.hardswish.default: "hardswish",
    aten.hardsigmoid.default: "hardsigmoid",
    aten.exp.default: "exp",
    aten.log.default: "log",
    aten.sqrt.default: "sqrt",
    aten.rsqrt.default: "rsqrt",
    aten.reciprocal.default: "reciprocal",
    aten.erf.default: "erf",
    aten.neg.default: "neg",
    aten.abs.default: "abs",
}

ARITHMETIC = {
    aten.add.Tensor: "add",
    aten.add.Scalar: "add",
    aten.sub.Tensor: "sub",
    aten.sub.Scalar: "sub",
    aten.mul.Tensor: "mul",
    aten.mul.Scalar: "mul",
    aten.div.Tensor: "div",
    aten.div.Scalar: "div",
    aten.pow.Tensor_Tensor: "pow",
    aten.pow.Tensor_Scalar: "pow",
    aten.pow.Scalar: "pow",
    aten.maximum.default: "maximum",
    aten.minimum.default: "minimum",
}

COMPARISONS = {
    aten.eq.Tensor: "eq",
    aten.eq.Scalar: "eq",
    aten.ne.Tensor: "ne",
    aten.ne.Scalar: "ne",
    aten.lt.Tensor: "lt",
    aten.lt.Scalar: "lt",
    aten.le.Tensor: "le",
    aten.le.Scalar: "le",
    aten.gt.Tensor: "gt",
    aten.gt.Scalar: "gt",
    aten.ge.Tensor: "ge",
    aten.ge.Scalar: "ge",
}

LOGICAL = {
    aten.logical_and.default: "logical_and",
    aten.logical_or.default: "logical_or",
}

# `mask & other` on bool tensors is bitwise in torch and logical in the IR.
BITWISE_ON_BOOL = {
    aten.bitwise_and.Tensor: "logical_and",
    aten.bitwise_or.Tensor: "logical_or",
}


def _no_symbolic_operands(node: torch.fx.Node) -> str | None:
    for arg in node.args:
        if isinstance(fake_value(arg), (torch.SymInt, torch.SymFloat)):
            return "a symbolic size used as a tensor value"
    return None


def _bool_operands_only(node: torch.fx.Node) -> str | None:
    for arg in node.args:
        value = fake_value(arg)
        if isinstance(value, torch.Tensor) and value.dtype != torch.bool:
            return f"bitwise op on {value.dtype}"
    return None


def _unary(ir_op: str):
    def convert(cx: ConversionContext, x):
        # Float functions of integer tensors compute in the float result dtype.
        return cx.emit(ir_op, cx.cast(x, cx.result_dtype))

    return convert


def _arithmetic(ir_op: str):
    def convert(cx: ConversionContext, a, b, *, alpha=1):
        # The result dtype is the computation dtype: torch promotes int * float to float, and
        # true division of integers divides in float.
        dtype = cx.result_dtype
        a, b = cx.operand(a, dtype), cx.operand(b, dtype)
        if alpha != 1:
            b = cx.emit("mul", b, cx.scalar(alpha, dtype))
        return cx.emit(ir_op, a, b)

    return convert


def _comparison(ir_op: str):
    def convert(cx: ConversionContext, a, b):
        dtype = promoted_dtype(a, b)
        return cx.emit(ir_op, cx.operand(a, dtype), cx.operand(b, dtype))

    return convert


def _logical(ir_op: str):
    def convert(cx: ConversionContext, a, b):
        return cx.emit(ir_op, cx.operand(a, DType.bool), cx.operand(b, DType.bool))

    return convert


for _target, _ir_op in UNARY.items():
    converts(_target)(_unary(_ir_op))
for _target, _ir_op in ARITHMETIC.items():
    converts(_target, check=_no_symbolic_operands)(_arithmetic(_ir_op))
for _target, _ir_op in COMPARISONS.items():
    converts(_target, check=_no_symbolic_operands)(_comparison(_ir_op))
for _target, _ir_op in LOGICAL.items():
    converts(_target)(_logical(_ir_op))
for _target, _ir_op in BITWISE_ON_BOOL.items():
    converts(_target, check=_bool_operands_only)(_logical(_ir_op))


@converts(aten.gelu.default)
def gelu(cx: ConversionContext, x, *, approximate="none"):
    return cx.emit("gelu", x, approximate=approximate)


@converts(aten.logical_not.default)
@converts(aten.bitwise_not.default, check=_bool_operands_only)
def logical_not(cx: ConversionContext, x):
    return cx.emit("logical_not", cx.cast(x, DType.bool))


@converts(aten.where.self)
def where(cx: ConversionContext, condition, a, b):
    dtype = cx.result_dtype
    return cx.emit("where", cx.operand(condition, DType.bool), cx.operand(a, dtype),
                   cx.operand(b, dtype))


@converts(aten.clamp.default)
def clamp(cx: ConversionContext, x, min=None, max=None):
    return cx.emit("clamp", cx.cast(x, cx.result_dtype), min=min, max=max)


@converts(aten.hardtanh.default)
def hardtanh(cx: ConversionContext, x, min_val=-1.0, max_val=1.0):
    if (min_val, max_val) == (0, 6):
        return cx.emit("relu6", x)
    return cx.emit("clamp", x, min=min_val, max=max_val)


@converts(aten._to_copy.default)
def to_copy(cx: ConversionContext, x, **_placement):
    # Device, layout and memory format mean nothing in the IR; only the dtype matters.
    return cx.cast(x, cx.result_dtype)
