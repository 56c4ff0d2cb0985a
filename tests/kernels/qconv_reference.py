"""The exact results of the NHWC int8 convolutions, from the op table's qconv2d reference.

Each call builds a one-node graph and runs it with the interpreter on NCHW arrays, so the
kernels are held to nimbus.compiler.ops.quant itself rather than to a second implementation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nimbus.compiler.interpreter import interpret
from nimbus.compiler.ir import Builder, Graph, QuantParams, TensorType


@dataclass(frozen=True)
class ConvProblem:
    """One convolution: NHWC activations, OIHW weights and the op's geometry attributes."""

    x: np.ndarray  # [N, H, W, C], uint8 or int8
    a_scale: float
    a_zero_point: int
    w: np.ndarray  # [O, C / groups, KH, KW] int8
    w_scales: np.ndarray
    bias: np.ndarray | None
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]
    dilation: tuple[int, int]
    groups: int

    def reference(self, dtype: str, scale: float | None = None, zero_point: int = 0,
                  activation: str = "none", residual=None) -> np.ndarray:
        """qconv2d with result `dtype` ("u8", "i8" or "f32"), as NHWC; ``residual`` is
        (NHWC values, scale, zero point) of a quantized residual."""
        graph = Graph("qconv2d")
        x_nchw = np.ascontiguousarray(self.x.transpose(0, 3, 1, 2))
        x_quant = QuantParams([self.a_scale], [self.a_zero_point])
        x = graph.add_input("x", TensorType.of_array(x_nchw, x_quant))
        w = graph.add_constant("w", self.w, QuantParams(self.w_scales, [0], axis=0))
        bias = None if self.bias is None else graph.add_constant("bias", self.bias)
        operands, feeds = [x, w, bias], {"x": x_nchw}
        if residual is not None:
            values, residual_scale, residual_zero_point = residual
            feeds["r"] = np.ascontiguousarray(values.transpose(0, 3, 1, 2))
            operands.append(graph.add_input("r", TensorType.of_array(
                feeds["r"], QuantParams([residual_scale], [residual_zero_point]))))
        attrs = {"stride": list(self.stride), "padding": list(self.padding),
                 "dilation": list(self.dilation), "groups": self.groups, "dtype": dtype,
                 "scale": scale, "zero_point": zero_point, "activation": activation}
        graph.set_outputs([Builder(graph).qconv2d(*operands, **attrs)])
        (result,) = interpret(graph, feeds).values()
        return np.ascontiguousarray(result.transpose(0, 2, 3, 1))


# Activation types -> (numpy dtype, smallest, largest value).
A_RANGES = {"u8": (np.uint8, 0, 255), "s8": (np.int8, -128, 127)}


def make_problem(geometry, a_type: str, seed, with_bias: bool = True) -> ConvProblem:
    """A random problem: geometry is (n, c, h, w, o, (kh, kw), stride, padding, dilation,
    groups); activations span their type's whole range, the zero point is random."""
    n, c, h, w, o, (kh, kw), stride, padding, dilation, groups = geometry
    rng = np.random.default_rng(seed)
    dtype, low, high = A_RANGES[a_type]
    return ConvProblem(
        x=rng.integers(low, high, size=(n, h, w, c), dtype=dtype, endpoint=True),
        a_scale=0.02,
        a_zero_point=int(rng.integers(low, high, endpoint=True)),
        w=rng.integers(-128, 127, size=(o, c // groups, kh, kw), dtype=np.int8, endpoint=True),
        w_scales=rng.uniform(0.001, 0.01, size=o).astype(np.float32),
        bias=rng.integers(-50_000, 50_000, size=o, dtype=np.int32) if with_bias else None,
        stride=stride, padding=padding, dilation=dilation, groups=groups)


def geometry_keywords(problem: ConvProblem) -> dict:
    return {"stride": problem.stride, "padding": problem.padding, "dilation": problem.dilation}
