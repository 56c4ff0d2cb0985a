"""The runtime's CPU op table against the compiler's op table.

Every op runs through ``nimbus.runtime.cpu_ops.run_op`` (attributes as plain JSON, operand
types as ``TensorInfo`` read back from JSON) and through the op table's reference, on random
inputs with odd shapes: integer results bit-exact, floats within 1e-5 of max|reference|, and
shapes and dtypes as the op's type rule infers.
"""

from __future__ import annotations

import gc
import json
import math
import subprocess
import sys
from dataclasses import dataclass, field

import numpy as np
import pytest
from checks import assert_matches
from nimbus.compiler.dtypes import DType
from nimbus.compiler.ir import QuantParams, TensorType
from nimbus.compiler.ops import OP_TABLE
from nimbus.runtime import cpu_ops
from nimbus.runtime.cpu_ops import KERNELS, TensorInfo, UnknownOpError, run_op
from nimbus.runtime.cpu_ops import nn as runtime_nn
from nimbus.runtime.cpu_ops import quant as runtime_quant
from nimbus.runtime.cpu_ops.elementwise import (
    ATTR_DEFAULTS,
    ELEMENTWISE_OPS,
    erf,
    erf_kernel,
    gelu_kernel,
    sigmoid,
)
from nimbus.runtime.cpu_ops.nn import conv2d_nchw
from nimbus.runtime.cpu_ops.packing import PACKED_WEIGHTS

rng = np.random.default_rng(20240611)


def randn(*shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def positive(*shape):
    return (rng.random(shape) + 0.1).astype(np.float32)


def integers(low, high, *shape, dtype=np.int8):
    return rng.integers(low, high, size=shape, endpoint=True).astype(dtype)


def u8(*shape):
    return integers(0, 255, *shape, dtype=np.uint8)


def i8(*shape):
    return integers(-128, 127, *shape, dtype=np.int8)


def weight(*shape):
    return integers(-127, 127, *shape, dtype=np.int8)


def per_channel(n, axis=0, zero_point=0):
    return QuantParams(rng.uniform(0.001, 0.01, n), [zero_point], axis=axis)


def per_tensor(scale, zero_point=0):
    return QuantParams([scale], [zero_point])


@dataclass
class Case:
    op: str
    inputs: list  # arrays, (array, QuantParams) pairs, or None for an absent operand
    attrs: dict = field(default_factory=dict)
    label: str = ""
    rtol: float = 1e-5

    @property
    def id(self) -> str:
        return f"{self.op}-{self.label}" if self.label else self.op


def cases() -> list[Case]:
    out: list[Case] = []

    def add(op, inputs, attrs=None, label="", rtol=1e-5):
        out.append(Case(op, inputs, attrs or {}, label, rtol))

    # ---- elementwise
    for op in ("relu", "relu6", "hardswish", "hardsigmoid", "tanh", "exp", "neg", "abs"):
        add(op, [randn(3, 7) * 4])
    for op in ("log", "sqrt", "rsqrt", "reciprocal"):
        add(op, [positive(5, 3)])
    add("sigmoid", [randn(2, 3, 5) * 30], label="wide")
    add("sigmoid", [(randn(4, 9) * 5).astype(np.float16)], label="f16", rtol=1e-3)
    add("silu", [randn(3, 11) * 6])
    add("gelu", [randn(3, 13) * 3], label="erf")
    add("gelu", [randn(3, 13) * 3], {"approximate": "tanh"}, label="tanh")
    add("gelu", [(randn(17) * 3).astype(np.float16)], label="f16", rtol=1e-3)
    add("erf", [np.concatenate([randn(40) * 3, [0.0, 1e-8, -2.5, 2.5, 7.0, -9.0]]).astype(np.float32)])
    add("relu", [randn(5, 3).astype(DType.bf16.numpy)], label="bf16")
    add("relu", [randn(5).astype(np.float16)], label="f16")
    add("neg", [integers(-100, 100, 6, dtype=np.int32)], label="i32")
    add("abs", [integers(-100, 100, 2, 3, dtype=np.int64)], label="i64")
    add("clamp", [randn(20)], {"min": -0.5, "max": 0.75}, label="both")
    add("clamp", [randn(20)], {"max": 0.1}, label="max")
    add("clamp", [randn(4, 5)], {"min": 0.2}, label="min")
    add("clamp", [integers(-9, 9, 7, dtype=np.int32)], {"min": -2.0, "max": 3.0}, label="i32")
    for op in ("add", "sub", "mul", "maximum", "minimum"):
        add(op, [randn(3, 1, 5), randn(4, 5)])
    add("add", [integers(-50, 50, 3, 4, dtype=np.int32), integers(-50, 50, 4, dtype=np.int32)],
        label="i32")
    add("mul", [randn(2, 3).astype(np.float16), randn(3).astype(np.float16)], label="f16")
    add("div", [randn(2, 3), positive(2, 1)])
    add("pow", [positive(3, 4), randn(4)])
    for op in ("eq", "ne", "lt", "le", "gt", "ge"):
        add(op, [randn(3, 4), randn(4)], label="f32")
        add(op, [integers(0, 3, 5, dtype=np.int64), integers(0, 3, 5, dtype=np.int64)], label="i64")
    add("logical_and", [randn(6) > 0, randn(2, 6) > 0])
    add("logical_or", [randn(6) > 0, randn(6) > 0])
    add("logical_not", [randn(3, 6) > 0])
    add("where", [randn(3, 1) > 0, randn(3, 4), randn(4)])
    add("where", [randn(5) > 0, integers(0, 9, 5, dtype=np.int32), integers(0, 9, 1, dtype=np.int32)],
        label="i32")
    add("cast", [np.array([-1.7, 0.5, 2.9, -0.2], np.float32)], {"dtype": "i64"}, label="f32-i64")
    add("cast", [randn(3, 5) * 50], {"dtype": "i8"}, label="f32-i8")
    add("cast", [integers(-9, 9, 4, dtype=np.int32)], {"dtype": "f32"}, label="i32-f32")
    add("cast", [randn(6)], {"dtype": "bool"}, label="f32-bool")
    add("cast", [randn(6)], {"dtype": "f16"}, label="f32-f16")
    # ---- reductions
    for op in ("mean", "sum", "reduce_max", "reduce_min"):
        add(op, [randn(2, 3, 5)], {"axes": [0, 2], "keepdim": True}, label="keepdim")
        add(op, [randn(3, 7)], {"axes": [-1]}, label="last")
        add(op, [randn(2, 3)], {}, label="all")
    add("sum", [integers(-9, 9, 3, 4, dtype=np.int32)], {"axes": [1]}, label="i32")
    # A global average pool on the native mean_axis: over NHWC memory (as convolutions return
    # it) and over NCHW, keeping the dims or not.
    add("mean", [randn(2, 5, 3, 17).transpose(0, 3, 1, 2)], {"axes": [2, 3], "keepdim": True},
        label="pool-nhwc")
    add("mean", [randn(3, 6, 5, 1)], {"axes": [-1, -2]}, label="pool-nchw")
    add("reduce_max", [u8(2, 5)], {"axes": [0]}, label="u8")
    # ---- data movement
    add("reshape", [randn(2, 3, 4)], {"shape": [4, -1]})
    add("permute", [randn(2, 3, 4)], {"perm": [2, 0, 1]})
    add("expand", [randn(3, 1)], {"shape": [2, -1, 4]})
    add("slice", [randn(5, 9)], {"axis": 1, "start": -7, "end": 8, "step": 2}, label="negative")
    add("slice", [randn(5, 9)], {"axis": 0, "start": 2}, label="to-end")
    add("slice", [u8(4, 6)], {"axis": -1, "start": 1, "end": 100, "step": 3}, label="u8")
    add("split", [randn(2, 7)], {"axis": 1, "sizes": [3, 4]})
    add("split", [randn(6, 2, 3)], {"axis": 0, "sizes": [1, 0, 5]}, label="empty-piece")
    add("concat", [randn(2, 3), randn(2, 1), randn(2, 2)], {"axis": 1})
    add("concat", [u8(1, 3), u8(2, 3)], {"axis": -2}, label="u8")
    add("gather", [randn(10, 4), np.array([[1, 9], [0, 0]], np.int64)], {"axis": 0})
    add("gather", [randn(3, 5, 2), np.array([-1, 4, 0], np.int32)], {"axis": 1}, label="axis1")
    add("gather", [randn(7), np.array([3, 3], np.uint8)], {}, label="u8-indices")
    add("pad", [randn(2, 3)], {"pads": [1, 0, 2, 3], "value": 0.5})
    add("pad", [integers(0, 9, 2, 2, dtype=np.int32)], {"pads": [0, 1, 1, 0]}, label="i32")
    add("full", [], {"shape": [2, 3], "value": 1.5, "dtype": "f32"})
    add("full", [], {"shape": [4], "value": 7.0, "dtype": "i32"}, label="i32")
    # ---- nn
    add("conv2d", [randn(2, 3, 9, 11), randn(4, 3, 3, 3), randn(4)], label="bias")
    add("conv2d", [randn(1, 6, 10, 7), randn(6, 2, 3, 2), None],
        {"stride": [2, 1], "padding": [1, 0, 2, 1], "dilation": [1, 2], "groups": 3}, label="grouped")
    add("conv2d", [randn(2, 5, 8, 8), randn(5, 1, 3, 3), randn(5)],
        {"padding": [1, 1, 1, 1], "groups": 5, "stride": [2, 2]}, label="depthwise")
    add("conv2d", [randn(2, 6, 9, 8), randn(6, 1, 3, 3), None],
        {"padding": [2, 0, 1, 1], "groups": 6, "stride": [2, 1], "dilation": [2, 2]},
        label="depthwise-dilated-asymmetric")
    add("conv2d", [randn(1, 3, 7, 6), randn(6, 1, 3, 2), randn(6)],
        {"padding": [1, 1, 0, 2], "groups": 3, "stride": [1, 2]}, label="depthwise-multiplier")
    add("conv2d", [randn(3, 5, 6, 7), randn(4, 5, 1, 1), randn(4)], label="1x1")
    add("conv2d", [randn(2, 5, 7, 9), randn(4, 5, 1, 1), None], {"stride": [2, 3]},
        label="1x1-strided")
    add("conv2d", [randn(1, 4, 40, 36), randn(3, 4, 3, 3), randn(3)], {"padding": [1, 1, 1, 1]},
        label="per-image-gemm")
    add("conv2d", [randn(2, 8, 6, 5), randn(6, 4, 1, 1), None], {"groups": 2}, label="grouped-1x1")
    add("linear", [randn(2, 3, 7), randn(5, 7), randn(5)], label="3d-bias")
    add("linear", [randn(4, 7), randn(5, 7)], label="2d")
    add("linear", [randn(4, 6).astype(np.float16), randn(3, 6).astype(np.float16)], label="f16",
        rtol=1e-3)
    add("matmul", [randn(2, 1, 3, 7), randn(4, 7, 5)])
    add("batch_norm", [randn(2, 3, 4, 5), randn(3), positive(3), randn(3), randn(3)], {"eps": 1e-3})
    add("batch_norm", [randn(2, 3, 5), randn(3), positive(3)], label="no-affine")
    add("layer_norm", [randn(2, 3, 4, 5), randn(4, 5), randn(4, 5)], {"axis": -2}, label="affine")
    add("layer_norm", [randn(3, 9), None, None], {"axis": 1}, label="plain")
    add("layer_norm", [randn(3, 8).astype(DType.bf16.numpy)], label="bf16")
    add("softmax", [randn(3, 4, 5) * 5], {"axis": 1})
    add("softmax", [randn(2, 7) * 50], label="last")
    add("max_pool2d", [randn(2, 3, 9, 10)],
        {"kernel": [3, 3], "stride": [2, 2], "padding": [1, 1, 1, 1]}, label="padded")
    add("max_pool2d", [randn(1, 2, 7, 8)],
        {"kernel": [2, 3], "stride": [2, 2], "ceil_mode": True, "dilation": [2, 1]}, label="ceil")
    add("max_pool2d", [(u8(1, 3, 6, 5), per_tensor(0.1, 3))],
        {"kernel": [2, 2], "stride": [2, 2], "padding": [1, 0, 0, 1]}, label="u8")
    add("max_pool2d", [(i8(2, 17, 9, 7), per_tensor(0.1, -3))],
        {"kernel": [3, 2], "stride": [1, 2], "padding": [1, 1, 0, 1], "ceil_mode": True},
        label="i8-ceil")
    add("max_pool2d", [np.where(randn(1, 5, 6, 6) > 1.5, np.float32(np.nan), randn(1, 5, 6, 6))],
        {"kernel": [3, 3], "stride": [1, 1], "padding": [1, 1, 1, 1]}, label="nan")
    add("max_pool2d", [randn(1, 3, 5, 5).astype(np.float16)], {"kernel": [2, 2], "stride": [1, 1]},
        label="f16")
    add("avg_pool2d", [randn(2, 3, 9, 10)],
        {"kernel": [3, 3], "stride": [2, 2], "padding": [1, 1, 1, 1]}, label="padded")
    add("avg_pool2d", [randn(1, 2, 7, 8)], {"kernel": [3, 3], "stride": [2, 2],
                                            "padding": [1, 1, 1, 1], "ceil_mode": True,
                                            "count_include_pad": False}, label="exclude-pad")
    add("avg_pool2d", [randn(1, 2, 8, 8)], {"kernel": [3, 3], "stride": [2, 2],
                                            "padding": [1, 1, 1, 1], "ceil_mode": True},
        label="ceil")
    add("adaptive_avg_pool2d", [randn(2, 3, 7, 10)], {"output_size": [3, 4]}, label="uneven")
    add("adaptive_avg_pool2d", [randn(1, 4, 5, 5)], {"output_size": [1, 1]}, label="global")
    add("resize", [randn(2, 3, 5, 4)], {"size": [9, 7]}, label="bilinear")
    add("resize", [randn(1, 2, 6, 6)], {"size": [3, 12], "mode": "nearest", "scale": [0.5, 2.0]},
        label="nearest scale")
    # ---- quantization
    add("quantize", [randn(3, 5) * 3], {"dtype": "u8", "scale": [0.03], "zero_point": [10]},
        label="u8")
    add("quantize", [randn(2, 3, 4) * 3], {"dtype": "i8", "scale": [0.02, 0.05, 0.1], "axis": 1},
        label="i8-axis")
    add("quantize", [(randn(7) * 3).astype(np.float16)], {"dtype": "i8", "scale": [0.1]},
        label="f16")
    add("dequantize", [(u8(3, 4), per_tensor(0.05, 128))], label="u8")
    add("quantize", [np.array(1.7, np.float32)], {"dtype": "u8", "scale": [0.5], "zero_point": [3]},
        label="0-d")
    add("dequantize", [(np.array(7, np.uint8), per_tensor(0.5, 3))], label="0-d")
    add("dequantize", [(i8(3, 4), QuantParams([0.1, 0.2, 0.3], [0, 1, -1], axis=0))], label="i8-axis")
    _quantized_layer_cases(add)
    # ---- fused
    add("fused_conv2d", [randn(2, 4, 7, 9), randn(6, 2, 3, 3), randn(6), randn(2, 6, 4, 9)],
        {"stride": [2, 1], "padding": [1, 1, 1, 1], "groups": 2, "activation": "relu"},
        label="residual-relu")
    add("fused_conv2d", [randn(1, 3, 6, 6), randn(4, 3, 1, 1), None, None],
        {"activation": "gelu"}, label="gelu")
    add("fused_conv2d", [randn(2, 6, 9, 7), randn(6, 1, 3, 3), randn(6), None],
        {"stride": [2, 2], "padding": [1, 0, 1, 1], "groups": 6, "activation": "relu6"},
        label="depthwise-relu6")
    add("fused_conv2d", [randn(2, 4, 5, 5), randn(4, 4, 1, 1), randn(4), randn(2, 4, 5, 5)],
        {"activation": "relu"}, label="1x1-residual-relu")
    # An inf or NaN weight: numpy's zero padding times inf is NaN, which the native kernels
    # (skipping padded taps, mixing weights in Winograd) would not give, so such layers run in
    # numpy.
    for label, w_shape, groups in (("depthwise", (6, 1, 3, 3), 6), ("winograd", (32, 32, 3, 3), 1),
                                   ("few-inputs", (16, 3, 3, 3), 1)):
        for special in (np.inf, np.nan):
            w = randn(*w_shape)
            w[-1, 0, -1, -1] = special
            add("fused_conv2d", [randn(2, w_shape[1] * groups, 7, 9), w, randn(w_shape[0]), None],
                {"padding": [1, 1, 1, 1], "groups": groups, "activation": "relu"},
                label=f"{label}-{special}-weight")
    for activation in ("none", "relu6", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh", "hardswish"):
        add("fused_linear", [randn(3, 5, 7), randn(4, 7), randn(4), randn(5, 4)],
            {"activation": activation}, label=activation)
    add("fused_linear", [randn(3, 7), randn(4, 7), None, None], {"activation": "relu"},
        label="no-bias")
    add("fused_matmul", [randn(2, 3, 5), randn(5, 4), randn(2, 3, 4)], {"activation": "silu"})
    add("fused_matmul", [randn(3, 5), randn(5, 2), None], {"activation": "none"}, label="plain")
    for expr, inputs in [
        ("mul($0,sigmoid(add($1,$0)))", [randn(3, 4), randn(4)]),
        ("clamp[min=0.0,max=6.0](mul($0,$0))", [randn(5) * 3]),
        ("clamp[max=0.5](neg($0))", [randn(5)]),
        ("gelu[approximate=tanh](sub($0,$1))", [randn(2, 3), randn(2, 3)]),
        ("where(gt($0,$1),erf($0),hardswish($1))", [randn(6), randn(6)]),
        ("cast[dtype=i32](mul($0,$1))", [randn(4) * 9, randn(4)]),
    ]:
        add("fused_elementwise", inputs, {"expr": expr}, label=expr)
    add("attention", [randn(2, 3, 5, 8), randn(2, 3, 7, 8), randn(2, 3, 7, 4), randn(2, 1, 1, 7)],
        label="additive")
    bool_mask = randn(5, 7) > -0.5
    bool_mask[2] = False  # a row with every score masked gives zeros
    add("attention", [randn(2, 5, 8), randn(2, 7, 8), randn(2, 7, 4), bool_mask], {"scale": 0.3},
        label="bool-masked-row")
    add("attention", [randn(1, 3, 6), randn(1, 4, 6), randn(1, 4, 5), None], label="no-mask")
    additive = np.where(randn(2, 1, 5, 7) > 0, 0.0, -np.inf).astype(np.float32)
    additive[1, 0, 3] = -np.inf  # a fully masked row of an additive mask gives zeros as well
    add("attention", [randn(2, 3, 5, 8), randn(2, 3, 7, 8), randn(2, 3, 7, 4), additive],
        label="additive-inf-rows")
    add("attention", [randn(2, 3, 6), randn(4, 6), randn(4, 5), np.array([True, False, True, True])],
        label="row-mask-2d")
    add("softmax", [randn(2, 5, 3) * 20], {"axis": 1}, label="middle-axis")
    add("layer_norm", [randn(4, 6, 768) * 3 + 5, randn(768), randn(768)], {"axis": -1},
        label="bert-row")
    return out


def _quantized_layer_cases(add) -> None:
    residual_quant = per_tensor(0.07, 90)
    # qlinear: input u8/i8, weight per channel / per tensor / asymmetric (numpy path), each epilogue
    for x_label, x, xq in (("u8", u8(5, 33), per_tensor(0.02, 7)),
                           ("i8", i8(5, 33), per_tensor(0.03, -5))):
        for w_label, wq in (("per-channel", per_channel(7)), ("per-tensor", per_tensor(0.004))):
            for out_label, attrs in (("u8", {"dtype": "u8", "scale": 0.05, "zero_point": 100}),
                                     ("i8", {"dtype": "i8", "scale": 0.08, "zero_point": -4}),
                                     ("f32", {"dtype": "f32"})):
                for activation in ("none", "relu", "relu6"):
                    add("qlinear", [(x, xq), (weight(7, 33), wq), integers(-5000, 5000, 7,
                                                                           dtype=np.int32)],
                        {**attrs, "activation": activation},
                        label=f"{x_label}-{w_label}-{out_label}-{activation}")
    for out_label, attrs in (("u8", {"dtype": "u8", "scale": 0.05, "zero_point": 100}),
                             ("f32", {"dtype": "f32"})):
        add("qlinear", [(u8(2, 3, 19), per_tensor(0.02, 7)), (weight(5, 19), per_channel(5)), None,
                        (u8(2, 3, 5), residual_quant)], {**attrs, "activation": "relu"},
            label=f"residual-{out_label}")
    add("qlinear", [(u8(4, 9), per_tensor(0.02, 7)), (weight(3, 9), per_tensor(0.01, 3)), None],
        {"dtype": "u8", "scale": 0.1, "zero_point": 0}, label="asymmetric-weight")
    add("qlinear", [(u8(4, 9), per_tensor(0.02, 7)), (u8(3, 9), per_tensor(0.01, 128)), None],
        {"dtype": "f32"}, label="u8-weight")
    add("qlinear", [(u8(0, 9), per_tensor(0.02, 7)), (weight(3, 9), per_channel(3)), None],
        {"dtype": "f32"}, label="empty-batch")
    # qconv2d: groups, depthwise, dilation, 1x1 with residual, each result dtype
    add("qconv2d", [(u8(2, 4, 7, 6), per_tensor(0.03, 128)), (weight(6, 2, 3, 3), per_channel(6)),
                    integers(-3000, 3000, 6, dtype=np.int32)],
        {"groups": 2, "padding": [1, 0, 1, 2], "stride": [2, 1], "dtype": "i8", "scale": 0.1,
         "zero_point": -3}, label="grouped-i8")
    add("qconv2d", [(u8(1, 5, 8, 9), per_tensor(0.02, 3)), (weight(5, 1, 3, 3), per_channel(5)),
                    integers(-300, 300, 5, dtype=np.int32)],
        {"groups": 5, "padding": [1, 1, 1, 1], "stride": [2, 2], "dtype": "u8", "scale": 0.02,
         "zero_point": 10, "activation": "relu6"}, label="depthwise-relu6")
    add("qconv2d", [(i8(2, 3, 9, 8), per_tensor(0.05, 0)), (weight(4, 3, 2, 3), per_tensor(0.003)),
                    None],
        {"dilation": [2, 1], "padding": [0, 1, 1, 0], "dtype": "f32", "activation": "relu"},
        label="dilated-f32")
    for out_label, attrs in (("u8", {"dtype": "u8", "scale": 0.05, "zero_point": 100}),
                             ("f32", {"dtype": "f32"})):
        add("qconv2d", [(u8(2, 3, 5, 4), per_tensor(0.02, 7)), (weight(4, 3, 1, 1), per_channel(4)),
                        integers(-99, 99, 4, dtype=np.int32), (u8(2, 4, 5, 4), residual_quant)],
            {**attrs, "activation": "relu"}, label=f"residual-{out_label}")
    # a residual in the native epilogue (one group, gathered windows), and through numpy (groups)
    add("qconv2d", [(u8(2, 5, 9, 7), per_tensor(0.02, 7)), (weight(6, 5, 3, 3), per_channel(6)),
                    None, (i8(2, 6, 9, 7), per_tensor(0.04, -3))],
        {"padding": [1, 1, 1, 1], "dtype": "i8", "scale": 0.3, "zero_point": 2,
         "activation": "relu6"}, label="3x3-residual-i8")
    add("qconv2d", [(u8(1, 4, 6, 5), per_tensor(0.02, 7)), (weight(6, 2, 3, 3), per_channel(6)),
                    None, (u8(1, 6, 6, 5), residual_quant)],
        {"groups": 2, "padding": [1, 1, 1, 1], "dtype": "u8", "scale": 0.3, "zero_point": 2},
        label="grouped-residual")
    add("qconv2d", [(u8(1, 2, 5, 5), per_tensor(0.02, 7)), (weight(3, 2, 3, 3), per_tensor(0.01, 2)),
                    None], {"dtype": "u8", "scale": 0.2, "zero_point": 5}, label="asymmetric-weight")
    # qmatmul: two activations, per tensor or per last axis
    add("qmatmul", [(u8(2, 3, 9), per_tensor(0.05, 120)), (u8(2, 9, 5), per_tensor(0.04, 130))],
        {"dtype": "f32"}, label="u8-u8-f32")
    add("qmatmul", [(i8(3, 9), per_tensor(0.05, 0)), (i8(2, 9, 4), per_channel(4, axis=2))],
        {"dtype": "u8", "scale": 0.01, "zero_point": 50, "activation": "relu"}, label="i8-axis-u8")
    add("qmatmul", [(u8(2, 4, 6), per_tensor(0.05, 120)), (i8(6, 3), per_tensor(0.02, 0))],
        {"dtype": "i8", "scale": 0.02, "zero_point": 0, "activation": "relu6"}, label="i8-relu6")
    # qattention: exact int32 products and softmax codes, so the f32 result is exact as well
    heads_mask = np.where(randn(2, 1, 1, 9) > -0.5, 0.0, -10000.0).astype(np.float32)
    add("qattention", [(u8(2, 3, 5, 8), per_tensor(0.05, 120)), (u8(2, 3, 9, 8), per_tensor(0.04, 7)),
                       (u8(2, 3, 9, 12), per_tensor(0.03, 200)), heads_mask],
        label="u8-additive", rtol=0)
    masked_row = randn(6, 7) > -0.5
    masked_row[4] = False  # a row with every score masked gives zeros
    add("qattention", [(i8(3, 6, 5), per_tensor(0.05, 3)), (i8(3, 7, 5), per_tensor(0.04, -9)),
                       (i8(3, 7, 33), per_tensor(0.02, 0)), masked_row], {"scale": 0.7},
        label="i8-bool-masked-row", rtol=0)
    add("qattention", [(u8(1, 17, 64), per_tensor(0.02, 128)), (i8(1, 40, 64), per_tensor(0.03, 0)),
                       (u8(1, 40, 16), per_tensor(0.05, 99)), None], label="mixed-no-mask", rtol=0)
    add("qattention", [(u8(2, 3, 6), per_tensor(0.1, 1)), (u8(4, 6), per_tensor(0.1, 2)),
                       (u8(4, 5), per_tensor(0.1, 3)), None], label="shared-kv", rtol=0)
    # dynamic_qlinear: float input quantized per batch
    add("dynamic_qlinear", [randn(2, 4, 9) * 3, (weight(5, 9), per_channel(5)), randn(5)],
        label="3d-bias", rtol=0)
    add("dynamic_qlinear", [positive(3, 17), (weight(4, 17), per_tensor(0.005)), None],
        label="per-tensor", rtol=0)
    add("dynamic_qlinear", [randn(3, 6), (weight(2, 6), per_tensor(0.005, 4)), None],
        label="asymmetric-weight", rtol=0)


CASES = cases()


# ---- helpers ------------------------------------------------------------------------------------
def info_of(t: TensorType | None) -> TensorInfo | None:
    """The TensorInfo a plan would record for a compiler type, read back from JSON."""
    if t is None:
        return None
    q = t.quant
    info = TensorInfo(str(t.dtype), tuple(t.shape), None if q is None else q.scale,
                      None if q is None else q.zero_point, None if q is None else q.axis)
    return TensorInfo.from_json(json.loads(json.dumps(info.to_json())))


def plan_attrs(normalized: dict) -> dict:
    """Normalized attributes as a plan stores them: plain JSON, dtypes by name."""
    return json.loads(json.dumps(normalized, default=str))


def run_both(case: Case):
    op = OP_TABLE[case.op]
    attrs = op.normalize_attrs(case.attrs)
    arrays, types = [], []
    for item in op.padded(case.inputs):
        array, quant = item if isinstance(item, tuple) else (item, None)
        arrays.append(array)
        types.append(None if array is None else TensorType.of_array(array, quant))
    inferred = op.infer(types, attrs)
    inferred = [inferred] if isinstance(inferred, TensorType) else list(inferred)
    expected = op.run_reference(arrays, attrs, types)
    actual = run_op(case.op, arrays, plan_attrs(attrs), [info_of(t) for t in types])
    return inferred, expected, actual


# ---- tests --------------------------------------------------------------------------------------
def test_every_op_in_the_table_has_a_kernel_and_nothing_else():
    assert set(OP_TABLE) - set(KERNELS) == set(), "ops without a CPU kernel"
    assert set(KERNELS) - set(OP_TABLE) == set(), "CPU kernels for ops the table lacks"
    assert cpu_ops.KERNELS is KERNELS


def test_every_op_has_a_comparison_case():
    assert set(OP_TABLE) - {case.op for case in CASES} == set()


def test_elementwise_ops_and_defaults_follow_the_table():
    table_elementwise = {name for name, op in OP_TABLE.items() if op.family == "elementwise"}
    assert ELEMENTWISE_OPS == table_elementwise
    for name, defaults in ATTR_DEFAULTS.items():
        assert defaults == {k: v.default for k, v in OP_TABLE[name].attrs.items()}, name
    with_attrs = {name for name in table_elementwise if OP_TABLE[name].attrs} - {"cast"}
    assert with_attrs == set(ATTR_DEFAULTS), "cast's dtype is required, so it has no default"


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_kernel_matches_the_reference(case):
    inferred, expected, actual = run_both(case)
    assert len(actual) == len(expected) == len(inferred), f"{case.id}: result count"
    for i, (got, want, t) in enumerate(zip(actual, expected, inferred)):
        name = f"{case.id} result {i}"
        assert got.shape == tuple(t.shape), f"{name}: shape {got.shape} != inferred {t}"
        assert got.dtype == t.dtype.numpy, f"{name}: dtype {got.dtype} != inferred {t}"
        assert_matches(got, want, name, rtol=case.rtol)


def test_native_paths_run_for_symmetric_int8_weights(monkeypatch):
    """The native kernels, not the numpy fallbacks, produce these (and still match)."""
    def refuse(*args):
        raise AssertionError("numpy fallback used")

    native = [c for c in CASES if c.op in ("qlinear", "qconv2d", "dynamic_qlinear")
              and "asymmetric" not in c.label and "u8-weight" not in c.label
              and "empty" not in c.label]
    expected = [run_both(c)[1] for c in native]
    for name in ("qlinear_reference", "qconv2d_reference", "dynamic_qlinear_reference"):
        monkeypatch.setattr(runtime_quant, name, refuse)
    for case, want in zip(native, expected):
        _, _, got = run_both(case)
        assert_matches(got[0], want[0], case.id, rtol=0)


def test_read_only_weights_are_packed_once_and_dropped_with_the_array():
    x, xq = u8(3, 10), TensorInfo("u8", (3, 10), (0.02,), (7,))
    w = weight(4, 10)
    w.flags.writeable = False
    wq = TensorInfo("i8", (4, 10), (0.01,) * 4, (0,) * 4, 0)
    attrs = {"dtype": "f32", "scale": None, "zero_point": 0, "activation": "none"}
    PACKED_WEIGHTS.clear()
    first = run_op("qlinear", [x, w, None, None], attrs, [xq, wq, None, None])[0]
    assert len(PACKED_WEIGHTS) == 3  # the packing, its epilogue multipliers, the symmetry check
    second = run_op("qlinear", [x, w, None, None], attrs, [xq, wq, None, None])[0]
    assert len(PACKED_WEIGHTS) == 3
    np.testing.assert_array_equal(first, second)
    del w
    gc.collect()
    assert len(PACKED_WEIGHTS) == 0


def test_writable_weights_are_packed_on_every_call():
    x, xq = u8(2, 6), TensorInfo("u8", (2, 6), (0.02,), (0,))
    w = weight(3, 6)
    wq = TensorInfo("i8", (3, 6), (0.01,), (0,))
    attrs = {"dtype": "f32", "scale": None, "zero_point": 0, "activation": "none"}
    before = run_op("qlinear", [x, w, None, None], attrs, [xq, wq, None, None])[0]
    w[:] = -w
    after = run_op("qlinear", [x, w, None, None], attrs, [xq, wq, None, None])[0]
    np.testing.assert_array_equal(after, -before)


def test_erf_is_accurate_without_scipy():
    x = np.concatenate([np.linspace(-7, 7, 20001), np.geomspace(1e-300, 2.0, 500),
                        [0.0, 2.5, np.nextafter(2.5, 0), 6.0, np.inf, -np.inf]])
    expected = np.array([math.erf(v) for v in x])
    assert np.max(np.abs(erf(x) - expected)) < 1e-13
    small = np.abs(expected) > 0
    assert np.max(np.abs(erf(x) - expected)[small] / np.abs(expected[small])) < 1e-13
    assert np.isnan(erf(np.array([np.nan]))[0])


def test_fast_erf_and_gelu_are_float32_accurate():
    """The rational erf of the float32 kernels, on a dense grid, against math.erf."""
    x = np.concatenate([np.linspace(-9, 9, 360001), np.geomspace(1e-30, 4.5, 2000),
                        [0.0, 4.0, -4.0, 3.999, 1e30, -1e30]]).astype(np.float32)
    x64 = x.astype(np.float64)
    exact = np.array([math.erf(v) for v in x64])
    got = erf_kernel(x)
    assert got.dtype == np.float32 and got.shape == x.shape
    assert np.max(np.abs(got - exact)) < 1e-7  # float32 spacing below 1 is 6e-8
    tiny = np.abs(x64) < 1e-3
    assert np.max(np.abs(got[tiny] - exact[tiny]) / np.maximum(np.abs(exact[tiny]), 1e-45)) < 1e-6
    exact_gelu = 0.5 * x64 * (1.0 + np.array([math.erf(v / math.sqrt(2.0)) for v in x64]))
    gelu = gelu_kernel(x)
    assert np.all(np.abs(gelu - exact_gelu) <= 1e-7 + 1e-7 * np.abs(exact_gelu))
    assert np.isnan(erf_kernel(np.array([np.nan], np.float32))[0])
    np.testing.assert_array_equal(erf_kernel(np.array([np.inf, -np.inf], np.float32)), [1, -1])
    np.testing.assert_array_equal(gelu_kernel(np.array([-1e4, 0.0, 1e4], np.float32)),
                                  [0.0, 0.0, 1e4])
    odd = randn(3, 0, 5)
    assert erf_kernel(odd).shape == odd.shape and gelu_kernel(odd).shape == odd.shape


def _direct_conv(x, w, stride, padding, dilation, groups):
    """Convolution by its definition, in float64 (independent of the im2col and tap paths)."""
    n, _, h, width = x.shape
    out_channels, group_channels, kh, kw = w.shape
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (padding[0], padding[2]),
                                           (padding[1], padding[3])))
    ho = (h + padding[0] + padding[2] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (width + padding[1] + padding[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((n, out_channels, ho, wo))
    per_group = out_channels // groups
    for o in range(out_channels):
        for c in range(group_channels):
            channel = (o // per_group) * group_channels + c
            for i in range(kh):
                for j in range(kw):
                    top, left = i * dilation[0], j * dilation[1]
                    out[:, o] += w[o, c, i, j] * padded[
                        :, channel, top:top + stride[0] * (ho - 1) + 1:stride[0],
                        left:left + stride[1] * (wo - 1) + 1:stride[1]]
    return out


CONV_SHAPES = [  # x shape, w shape, stride, padding, dilation, groups
    ((2, 5, 8, 8), (5, 1, 3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 5),
    ((1, 3, 9, 7), (3, 1, 3, 2), (1, 2), (0, 1, 2, 0), (2, 1), 3),
    ((2, 4, 6, 5), (8, 1, 3, 3), (3, 2), (2, 0, 1, 1), (2, 2), 4),
    ((1, 7, 7, 7), (7, 1, 5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 7),
    ((3, 2, 5, 9), (2, 1, 1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 2),
    ((2, 16, 14, 13), (16, 1, 3, 3), (2, 2), (0, 1, 1, 0), (1, 1), 16),
    ((3, 5, 6, 7), (4, 5, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ((2, 5, 7, 9), (4, 5, 1, 1), (2, 3), (0, 0, 0, 0), (1, 1), 1),
    ((1, 3, 40, 33), (4, 3, 3, 3), (1, 1), (1, 2, 0, 1), (1, 1), 1),
    ((2, 3, 40, 33), (4, 3, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ((2, 6, 9, 8), (4, 3, 2, 3), (2, 1), (1, 0, 2, 1), (1, 2), 2),
    ((2, 8, 6, 5), (6, 4, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 2),
    ((2, 6, 7, 7), (6, 2, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 3),
]


@pytest.mark.parametrize("shapes", CONV_SHAPES, ids=[f"conv{i}" for i in range(len(CONV_SHAPES))])
def test_conv2d_paths_match_the_definition(shapes):
    x_shape, w_shape, stride, padding, dilation, groups = shapes
    x, w = randn(*x_shape), randn(*w_shape)
    want = _direct_conv(x, w, stride, padding, dilation, groups)
    got = conv2d_nchw(x, w, stride, padding, dilation, groups)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    assert_matches(got.astype(np.float64), want, "conv2d", rtol=1e-6)
    # float64 accumulation of integers (qconv2d's reference) is exact on every path
    xi = integers(-128, 127, *x_shape, dtype=np.int32)
    wi = integers(-127, 127, *w_shape, dtype=np.int32)
    exact = conv2d_nchw(xi, wi, stride, padding, dilation, groups, accumulate=np.float64)
    np.testing.assert_array_equal(exact, _direct_conv(xi, wi, stride, padding, dilation, groups))


def test_kernels_do_not_write_into_their_inputs():
    x, w, b, r = randn(2, 4, 6, 6), randn(4, 1, 3, 3), randn(4), randn(2, 4, 6, 6)
    copies = [a.copy() for a in (x, w, b, r)]
    for a in (x, w, b, r):
        a.flags.writeable = False
    attrs = {"stride": [1, 1], "padding": [1, 1, 1, 1], "dilation": [1, 1], "groups": 4,
             "activation": "relu6"}
    out = run_op("fused_conv2d", [x, w, b, r], attrs, [None] * 4)[0]
    assert out.flags.writeable and out.transpose(0, 2, 3, 1).flags.c_contiguous  # NHWC memory
    out = run_op("fused_linear", [r, randn(3, 6), None, None], {"activation": "relu"},
                 [None] * 4)[0]
    for a, c in zip((x, w, b, r), copies):
        np.testing.assert_array_equal(a, c)
    clamped = run_op("clamp", [r], {"min": None, "max": None}, [None])[0]
    assert clamped is not r and np.shares_memory(clamped, r) is False


def test_sigmoid_never_overflows():
    x = np.array([-1e4, -100.0, 0.0, 100.0, 1e4], np.float32)
    with np.errstate(over="raise", invalid="raise"):
        result = sigmoid(x)
    np.testing.assert_allclose(result, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-30)


def test_unknown_op_is_named_with_a_suggestion():
    with pytest.raises(UnknownOpError, match=r"no CPU kernel for op 'relux' \(did you mean 'relu'\?\)"):
        run_op("relux", [randn(2)], {}, [None])


def test_missing_attribute_is_named():
    with pytest.raises(ValueError, match="softmax: attribute 'axis' is missing"):
        run_op("softmax", [randn(2, 3)], {}, [None])


def test_fused_expressions_only_take_elementwise_ops():
    with pytest.raises(ValueError, match="'conv2d', which is not an elementwise op"):
        run_op("fused_elementwise", [randn(3)], {"expr": "conv2d($0,$0)"}, [None])
    with pytest.raises(ValueError, match=r"reads \$1 of 1 inputs"):
        run_op("fused_elementwise", [randn(3)], {"expr": "add($0,$1)"}, [None])


# ---- TensorInfo ---------------------------------------------------------------------------------
@pytest.mark.parametrize("info", [
    TensorInfo("f32", (2, 3)),
    TensorInfo("bf16", ("N", 7, "4*N")),
    TensorInfo("u8", (1, 3), (0.05,), (128,)),
    TensorInfo("i8", (4, 2), (0.1, 0.2, 0.3, 0.4), (0, 0, 0, 0), 0),
    TensorInfo("i8", (768, 3), tuple(np.linspace(1e-3, 2, 768).tolist()),
               tuple(range(-128, 128)) * 3, 0),
    TensorInfo("bool", ()),
])
def test_tensor_info_round_trips_through_json(info):
    text = json.dumps(info.to_json())
    assert TensorInfo.from_json(json.loads(text)) == info
    assert (info.quant is info) == (info.scale is not None)


def test_tensor_info_takes_numpy_scalars_and_ints():
    info = TensorInfo("u8", (2,), (np.float32(0.5), 3), (np.uint8(7), 255), 0)
    assert info.quant is info


@pytest.mark.parametrize("data, error", [
    ([1, 2], "must be an object"),
    ({"dtype": "f32", "shape": [], "extra": 1}, "unknown field 'extra'"),
    ({"shape": [1]}, "lacks 'dtype'"),
    ({"dtype": "f64", "shape": [1]}, "unknown dtype 'f64'"),
    ({"dtype": 3, "shape": [1]}, "unknown dtype 3"),
    ({"dtype": "f32", "shape": "2x3"}, "shape must be a list"),
    ({"dtype": "f32", "shape": [2, -1]}, "dim 1 must be a non-negative integer"),
    ({"dtype": "f32", "shape": [True]}, "dim 0 must be a non-negative integer"),
    ({"dtype": "f32", "shape": [2.0]}, "dim 0 must be a non-negative integer"),
    ({"dtype": "f32", "shape": ["N; rm -rf"]}, "dim 0 is not a symbolic dim"),
    ({"dtype": "f32", "shape": [""]}, "dim 0 is not a symbolic dim"),
    ({"dtype": "f32", "shape": [1] * 17}, "rank 17, more than 16"),
    ({"dtype": "u8", "shape": [2], "scale": [0.1]}, "only together"),
    ({"dtype": "u8", "shape": [2], "axis": 0}, "only together"),
    ({"dtype": "f32", "shape": [2], "scale": [0.1], "zero_point": [0]}, "on a f32 tensor"),
    ({"dtype": "u8", "shape": [2], "scale": 0.1, "zero_point": [0]}, "scale must be a list"),
    ({"dtype": "u8", "shape": [2], "scale": [], "zero_point": []}, "non-empty"),
    ({"dtype": "u8", "shape": [2], "scale": [0.0], "zero_point": [0]}, "positive finite"),
    ({"dtype": "u8", "shape": [2], "scale": [float("nan")], "zero_point": [0]}, "positive finite"),
    ({"dtype": "u8", "shape": [2], "scale": [1e39], "zero_point": [0]}, "positive finite"),
    ({"dtype": "u8", "shape": [2], "scale": ["0.1"], "zero_point": [0]}, "positive finite"),
    ({"dtype": "u8", "shape": [2], "scale": [10**400], "zero_point": [0]}, "positive finite"),
    ({"dtype": "u8", "shape": [2], "scale": [float("inf")], "zero_point": [0]}, "positive finite"),
    ({"dtype": "u8", "shape": [2], "scale": [True], "zero_point": [0]}, "positive finite"),
    # the first bad value of many is named, as one per channel would be
    ({"dtype": "i8", "shape": [3], "scale": [0.1, 2, -0.5], "zero_point": [0, 0, 0], "axis": 0},
     "got -0.5"),
    ({"dtype": "i8", "shape": [3], "scale": [0.1] * 3, "zero_point": [0, 128, 0], "axis": 0},
     "zero point 128 is not an integer in i8's range"),
    ({"dtype": "i8", "shape": [2], "scale": [0.1] * 2, "zero_point": [0, False], "axis": 0},
     "zero point False"),
    ({"dtype": "u8", "shape": [2], "scale": [0.1], "zero_point": [256]}, "range \\[0, 255\\]"),
    ({"dtype": "i8", "shape": [2], "scale": [0.1], "zero_point": [0.5]}, "not an integer"),
    ({"dtype": "i8", "shape": [2], "scale": [0.1, 0.2], "zero_point": [0]}, "2 scales but 1"),
    ({"dtype": "i8", "shape": [2], "scale": [0.1, 0.2], "zero_point": [0, 0]}, "without an axis"),
    ({"dtype": "i8", "shape": [2], "scale": [0.1], "zero_point": [0], "axis": 1}, "out of range"),
    ({"dtype": "i8", "shape": [2], "scale": [0.1], "zero_point": [0], "axis": "0"}, "out of range"),
    ({"dtype": "i8", "shape": [3], "scale": [0.1, 0.2], "zero_point": [0, 0], "axis": 0},
     "2 scales for axis 0 of size 3"),
])
def test_tensor_info_rejects_bad_data_by_name(data, error):
    with pytest.raises(ValueError, match=error):
        TensorInfo.from_json(data)


# ---- layering -----------------------------------------------------------------------------------
def test_cpu_ops_import_nothing_from_the_compiler_side():
    script = ("import json, sys\nimport nimbus.runtime.cpu_ops\n"
              "print(json.dumps(sorted(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True)
    loaded = set(json.loads(result.stdout))
    forbidden = {"torch", "scipy", "sympy", "lark", "onnx", "triton", "nimbus.compiler",
                 "nimbus.passes"}
    assert {name for name in loaded if name.split(".")[0] in forbidden
            or any(name == f or name.startswith(f + ".") for f in forbidden)} == set()


@pytest.mark.parametrize("index", [10, -11])
def test_a_gather_index_out_of_range_is_named(index):
    table = np.arange(20, dtype=np.float32).reshape(10, 2)
    with pytest.raises(IndexError, match=r"gather index out of range \[-10, 10\)"):
        run_op("gather", [table, np.array([0, index], np.int64)], {"axis": 0}, [None, None])


def test_nhwc_memory_stays_nhwc_through_elementwise_ops_and_concat():
    """An NCHW view of NHWC memory (what convolutions return) runs through the native
    activation, quantize and fused elementwise kernels in memory order, not strided passes and
    a transposing copy, and concat joins channels there: the same values as for C-order input,
    in NHWC memory again."""
    x = (randn(2, 6, 5, 7) * 3).transpose(0, 3, 1, 2)
    cases = [("silu", {}), ("hardswish", {}), ("gelu", {"approximate": "none"}),
             ("quantize", {"dtype": "u8", "scale": [0.03], "zero_point": [100], "axis": None}),
             ("quantize", {"dtype": "i8", "scale": [0.05], "zero_point": [-3], "axis": None})]
    for op, attrs in cases:
        (actual,) = run_op(op, [x], attrs, [info_of(TensorType(DType.f32, x.shape))])
        (expected,) = run_op(op, [np.ascontiguousarray(x)], attrs,
                             [info_of(TensorType(DType.f32, x.shape))])
        assert actual.transpose(0, 2, 3, 1).flags.c_contiguous, op
        np.testing.assert_array_equal(actual, expected, err_msg=op)
    # DenseNet's pre-activation over channels joined in NHWC memory, with per-channel constants.
    y = randn(2, 6, 5, 3).transpose(0, 3, 1, 2)
    for operands in ([x, y], [y, np.ascontiguousarray(x), y], [x[:, ::-2], y.astype(np.uint8)]):
        (joined,) = run_op("concat", operands, {"axis": 1}, [None] * len(operands))
        assert joined.transpose(0, 2, 3, 1).flags.c_contiguous
        np.testing.assert_array_equal(joined, np.concatenate(operands, axis=1))
    with pytest.raises(ValueError, match="must match exactly"):
        run_op("concat", [x, y[:, :, :4]], {"axis": 1}, [None] * 2)
    channels = joined.shape[1]
    scale, shift = randn(1, channels, 1, 1), randn(channels, 1, 1)
    (actual,) = run_op("fused_elementwise", [joined, scale, shift],
                       {"expr": "relu(add(mul($0,$1),$2))"}, [None] * 3)
    assert actual.transpose(0, 2, 3, 1).flags.c_contiguous
    np.testing.assert_array_equal(actual, np.maximum(joined * scale + shift, 0))


def test_bilinear_resize_as_matrix_products_matches_the_reference():
    """The kernel's two matrix products read the reference's indices and weights; an inf in
    the input takes the reference, so it reaches its neighbours only, not a whole row as NaN."""
    x = randn(2, 3, 7, 5)
    for attrs in ({"size": [16, 9], "mode": "bilinear", "align_corners": False, "scale": None},
                  {"size": [3, 12], "mode": "bilinear", "align_corners": True, "scale": None},
                  {"size": [11, 4], "mode": "bilinear", "align_corners": False,
                   "scale": [1.7, 0.9]}):
        expected = runtime_nn.resize_reference([x], attrs)
        nhwc_memory = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        for operand in (x, nhwc_memory):
            (actual,) = run_op("resize", [operand], attrs, [None])
            assert actual.flags.c_contiguous
            assert_matches(actual, expected, rtol=1e-6, name=str(attrs))
    x[0, 0, 3, 2] = np.inf
    (actual,) = run_op("resize", [x], attrs, [None])
    expected = runtime_nn.resize_reference([x], attrs)
    np.testing.assert_array_equal(np.isfinite(actual), np.isfinite(expected))
    assert np.isfinite(actual).sum() > actual.size - 40
