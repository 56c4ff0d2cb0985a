"""Random convolution chains of the shapes the runtime fuses into one native step
(`cpu_ops/blocks.py`): inverted residual blocks (optional 1x1 expand, depthwise, 1x1 project,
optional residual) and a convolution followed by max pooling, float and int8, at sizes on both
sides of the fused kernels' thresholds. The Session (executor, then native plan) must agree
with the interpreter on the same optimized graph: exactly for int8, within float rounding."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nimbus
from nimbus.compiler.dims import symbol
from nimbus.compiler.dtypes import DType
from nimbus.compiler.interpreter import interpret
from nimbus.compiler.ir import Builder, Graph, TensorType
from nimbus.passes import DEFAULT_OPTIMIZATION, PassManager

ACTIVATIONS = ["none", "relu", "relu6", "hardswish"]
BATCH = symbol("N")


def _activate(b: Builder, x, activation: str):
    return x if activation == "none" else getattr(b, activation)(x)


def _weights(rng, shape):
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


@st.composite
def inverted_residuals(draw):
    """(graph, input shape): x -> [expand 1x1] -> depthwise -> project 1x1 [+ x]."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    channels = draw(st.integers(1, 24))
    expanded = channels * draw(st.sampled_from([1, 2, 6])) if draw(st.booleans()) else channels
    size = draw(st.sampled_from([5, 17, 40, 57]))  # 40 and 57 pass the fused block's threshold
    kernel = draw(st.sampled_from([3, 5]))
    stride = draw(st.sampled_from([1, 2]))
    padding = draw(st.lists(st.integers(0, kernel // 2), min_size=4, max_size=4))
    outputs = draw(st.sampled_from([channels, draw(st.integers(1, 24))]))
    graph = Graph("block")
    x = graph.add_input("x", TensorType(DType.f32, (BATCH, channels, size, size)))
    b = Builder(graph)

    def constant(name, shape):
        return graph.add_constant(name, _weights(rng, shape))

    def bias(name, count):  # or none
        if not draw(st.booleans()):
            return None
        return graph.add_constant(name, rng.standard_normal(count).astype(np.float32))

    e = x
    if expanded != channels or draw(st.booleans()):
        e = b.conv2d(x, constant("we", (expanded, channels, 1, 1)), bias("be", expanded))
        e = _activate(b, e, draw(st.sampled_from(ACTIVATIONS)))
    d = b.conv2d(e, constant("wd", (expanded, 1, kernel, kernel)), bias("bd", expanded),
                 stride=[stride, stride], padding=padding, groups=expanded)
    d = _activate(b, d, draw(st.sampled_from(ACTIVATIONS)))
    p = b.conv2d(d, constant("wp", (outputs, expanded, 1, 1)), bias("bp", outputs))
    if p.type.shape == x.type.shape and draw(st.booleans()):
        p = b.add(p, x)
    graph.set_outputs([p], ["y"])
    return graph, (draw(st.sampled_from([1, 2])), channels, size, size)


@st.composite
def convolutions_then_pooling(draw):
    """(graph, input shape): x -> conv kxk -> activation -> max_pool2d [-> conv 1x1]."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    channels, outputs = draw(st.integers(1, 8)), draw(st.integers(1, 40))
    size = draw(st.sampled_from([6, 15, 32]))
    kernel = draw(st.sampled_from([1, 3, 5]))
    padding = draw(st.lists(st.integers(0, kernel // 2), min_size=4, max_size=4))
    stride = draw(st.sampled_from([1, 2]))
    graph = Graph("conv_pool")
    x = graph.add_input("x", TensorType(DType.f32, (BATCH, channels, size, size)))
    b = Builder(graph)
    w = graph.add_constant("w", _weights(rng, (outputs, channels, kernel, kernel)))
    c = b.conv2d(x, w, graph.add_constant("b", rng.standard_normal(outputs).astype(np.float32)),
                 stride=[stride, stride], padding=padding)
    c = _activate(b, c, draw(st.sampled_from(ACTIVATIONS)))
    smallest = min((size + padding[i] + padding[i + 2] - kernel) // stride + 1 for i in (0, 1))
    pool = draw(st.integers(1, min(3, smallest)))
    y = b.max_pool2d(c, kernel=[pool, pool], stride=[2, 2],
                     padding=draw(st.lists(st.integers(0, pool // 2), min_size=4, max_size=4)))
    if draw(st.booleans()):  # an int8 layer after it: the int8 convolution then gives u8
        y = b.conv2d(y, graph.add_constant("w2", _weights(rng, (3, outputs, 1, 1))))
    graph.set_outputs([y], ["y"])
    return graph, (draw(st.sampled_from([1, 3])), channels, size, size)


def _check(graph, shape, seed, quantized, threads):
    rng = np.random.default_rng(seed)
    feeds = [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(2)]
    pipeline = DEFAULT_OPTIMIZATION + (",quantize" if quantized else "")
    optimized = PassManager(pipeline, data={"calibration": feeds}).run(graph.copy())
    session = nimbus.load(nimbus.compile(optimized, pipeline="").data, threads=threads)
    expected = interpret(optimized, feeds[0])["y"]
    for _ in range(2):  # the executor, then the native plan
        actual = session.run(feeds[0])["y"]
        assert actual.shape == expected.shape and actual.dtype == expected.dtype
        if quantized and expected.dtype != np.float32:
            np.testing.assert_array_equal(actual, expected)
        else:
            scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
            np.testing.assert_allclose(actual, expected, rtol=0, atol=2e-5 * scale)


SETTINGS = settings(max_examples=60, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@SETTINGS
@given(case=inverted_residuals(), seed=st.integers(0, 2**32 - 1), quantized=st.booleans(),
       threads=st.sampled_from([1, 2, 3]))
def test_inverted_residual_blocks(case, seed, quantized, threads):
    _check(*case, seed, quantized, threads)


@SETTINGS
@given(case=convolutions_then_pooling(), seed=st.integers(0, 2**32 - 1),
       quantized=st.booleans(), threads=st.sampled_from([1, 2, 3]))
def test_convolutions_then_max_pooling(case, seed, quantized, threads):
    _check(*case, seed, quantized, threads)
