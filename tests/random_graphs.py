"""A hypothesis strategy for random valid graphs, for property tests of the text form and passes.

Graphs mix elementwise, shape, nn and quantization ops over static and symbolic shapes
(``N`` for the batch, ``H`` for an image height), with constants small (printed inline) and
large (external), float specials included, odd names and random locations.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from nimbus.compiler.dims import evaluate, symbol
from nimbus.compiler.dtypes import DType
from nimbus.compiler.ir import Builder, Graph, Location, QuantParams, TensorType

BINDINGS = {"N": 2, "H": 5}  # the sizes symbolic dims take when a graph runs
BATCH, HEIGHT = symbol("N"), symbol("H")

names = st.one_of(
    st.from_regex(r"[a-z][a-z0-9_.]{0,6}", fullmatch=True),
    st.sampled_from(["0", "7", "x", "conv1.weight", "odd name", 'q"uote', "tab\there"]),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6),
)

locations = st.builds(
    Location,
    file=st.sampled_from([None, "model.py", 'dir/odd "file".py']),
    line=st.none() | st.integers(0, 10_000),
    scope=st.sampled_from(["", "encoder.layer1", "héad", "a\nb"]),
    passes=st.lists(st.sampled_from(["fuse", "fold-batchnorm", "quantize", "Odd Pass"]),
                    max_size=3).map(tuple),
)

special_floats = st.floats(width=32, allow_nan=True, allow_infinity=True)
scales = st.floats(min_value=1 / 1024, max_value=4.0, width=32)


def _constant(draw, graph: Graph, shape: tuple[int, ...], dtype: DType = DType.f32,
              quant: QuantParams | None = None):
    """A constant of random content: drawn values when small, seeded noise when large."""
    size = int(np.prod(shape))
    if size <= 16 and dtype.is_float:
        values = np.array(draw(st.lists(special_floats, min_size=size, max_size=size)), np.float32)
        with np.errstate(over="ignore"):  # f32 values beyond f16 become inf, which is fine
            data = values.astype(dtype.numpy).reshape(shape)
    else:
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        if dtype.is_float:
            data = rng.standard_normal(shape).astype(dtype.numpy)
        else:
            low, high = dtype.int_range
            data = rng.integers(low, high, size=shape, endpoint=True).astype(dtype.numpy)
    return graph.add_constant(graph.unique_constant_name(draw(names)), data, quant)


def _static_axes(value) -> list[int]:
    return [i for i, d in enumerate(value.type.shape) if isinstance(d, int)]


# Each step adds a few nodes that read values from `pool` (f32 values) and returns new ones.
def _unary(draw, b: Builder, pool):
    x = draw(st.sampled_from(pool))
    op = draw(st.sampled_from(["relu", "sigmoid", "tanh", "neg", "abs", "gelu", "clamp",
                               "softmax", "silu", "hardswish"]))
    if op == "gelu":
        return [b.gelu(x, approximate=draw(st.sampled_from(["none", "tanh"])))]
    if op == "clamp":
        bound = st.none() | st.floats(-4, 4)
        return [b.clamp(x, min=draw(bound), max=draw(bound))]
    if op == "softmax":
        return [b.softmax(x, axis=draw(st.integers(-x.type.rank, x.type.rank - 1)))]
    return [getattr(b, op)(x)]


def _binary(draw, b: Builder, pool):
    x = draw(st.sampled_from(pool))
    same_shape = [v for v in pool if v.type == x.type]
    last = x.type.shape[-1]
    choices = ["pool"] + (["row"] if isinstance(last, int) else []) + ["scalar"]
    source = draw(st.sampled_from(choices))
    if source == "pool":
        y = draw(st.sampled_from(same_shape))
    else:
        y = _constant(draw, b.graph, (last,) if source == "row" else ())
    op = draw(st.sampled_from(["add", "sub", "mul", "maximum", "minimum"]))
    return [getattr(b, op)(x, y)]


def _reshape(draw, b: Builder, pool):
    x = draw(st.sampled_from(pool))
    first = x.type.shape[0]
    shape = draw(st.sampled_from([[-1], [first, -1]]))
    return [b.reshape(x, shape=shape)]


def _permute(draw, b: Builder, pool):
    x = draw(st.sampled_from(pool))
    return [b.permute(x, perm=draw(st.permutations(range(x.type.rank))))]


def _linear(draw, b: Builder, pool):
    candidates = [v for v in pool if isinstance(v.type.shape[-1], int)]
    if not candidates:
        return []
    x = draw(st.sampled_from(candidates))
    outputs = draw(st.integers(1, 6))
    weight = _constant(draw, b.graph, (outputs, x.type.shape[-1]))
    bias = _constant(draw, b.graph, (outputs,)) if draw(st.booleans()) else None
    return [b.linear(x, weight, bias)]


def _conv2d(draw, b: Builder, pool):
    candidates = [v for v in pool if v.type.rank == 4 and isinstance(v.type.shape[1], int)]
    if not candidates:
        return []
    x = draw(st.sampled_from(candidates))
    channels = x.type.shape[1]
    # Any divisor: one group, depthwise, and narrow groups (a vector of several groups' outputs).
    groups = draw(st.sampled_from([g for g in range(1, channels + 1) if channels % g == 0]))
    outputs = groups * draw(st.integers(1, 4))
    padding = draw(st.lists(st.integers(0, 1), min_size=4, max_size=4))
    smallest = min(evaluate(d, BINDINGS) + padding[i] + padding[i + 2]
                   for i, d in enumerate(x.type.shape[2:]))
    kernel = draw(st.integers(1, min(3, smallest)))
    weight = _constant(draw, b.graph, (outputs, channels // groups, kernel, kernel))
    bias = _constant(draw, b.graph, (outputs,)) if draw(st.booleans()) else None
    stride = draw(st.lists(st.integers(1, 2), min_size=2, max_size=2))
    return [b.conv2d(x, weight, bias, stride=stride, padding=padding, groups=groups)]


def _pool(draw, b: Builder, pool):
    candidates = [v for v in pool if v.type.rank == 4]
    if not candidates:
        return []
    x = draw(st.sampled_from(candidates))
    smallest = min(evaluate(d, BINDINGS) for d in x.type.shape[2:])
    kernel = draw(st.integers(1, min(3, smallest)))
    padding = draw(st.lists(st.integers(0, kernel // 2), min_size=4, max_size=4))
    stride = draw(st.lists(st.integers(1, 2), min_size=2, max_size=2))
    # ceil_mode needs static spatial sizes (the op says so for symbolic ones)
    ceil_mode = all(isinstance(d, int) for d in x.type.shape[2:]) and draw(st.booleans())
    if draw(st.booleans()):
        return [b.max_pool2d(x, kernel=[kernel, kernel], stride=stride, padding=padding,
                             ceil_mode=ceil_mode)]
    return [b.avg_pool2d(x, kernel=[kernel, kernel], stride=stride, padding=padding,
                         ceil_mode=ceil_mode, count_include_pad=draw(st.booleans()))]


def _attention(draw, b: Builder, pool):
    """q, k and v from the pool (one value, or q from another of the same shape), with no mask,
    an additive row over the keys (-inf included), or a boolean one."""
    candidates = [v for v in pool if v.type.rank >= 3 and isinstance(v.type.shape[-1], int)]
    if not candidates:
        return []
    x = draw(st.sampled_from(candidates))
    q = draw(st.sampled_from([v for v in pool if v.type == x.type]))
    keys = x.type.shape[-2]
    mask = None
    if isinstance(keys, int) and draw(st.booleans()):
        if draw(st.booleans()):
            mask = _constant(draw, b.graph, (keys,))
        else:
            allowed = np.array(draw(st.lists(st.booleans(), min_size=keys, max_size=keys)))
            mask = b.graph.add_constant(b.graph.unique_constant_name("mask"), allowed)
    scale = draw(st.none() | st.sampled_from([0.125, 0.5, 1.5]))
    return [b.attention(q, x, x, mask, scale=scale)]


def _batch_norm(draw, b: Builder, pool):
    candidates = [v for v in pool if v.type.rank == 4 and isinstance(v.type.shape[1], int)]
    if not candidates:
        return []
    x = draw(st.sampled_from(candidates))
    channels = (x.type.shape[1],)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    positive = (np.abs(rng.standard_normal(channels)) + 0.1).astype(np.float32)
    var = b.graph.add_constant(b.graph.unique_constant_name("var"), positive)
    return [b.batch_norm(x, _constant(draw, b.graph, channels), var,
                         _constant(draw, b.graph, channels), _constant(draw, b.graph, channels))]


def _reduce(draw, b: Builder, pool):
    x = draw(st.sampled_from(pool))
    axes = draw(st.lists(st.integers(-x.type.rank, x.type.rank - 1), min_size=1, max_size=2,
                         unique_by=lambda a: a % x.type.rank))
    op = draw(st.sampled_from(["mean", "sum"]))
    # the other steps take values of rank 1 or more
    keepdim = len(axes) == x.type.rank or draw(st.booleans())
    return [getattr(b, op)(x, axes=axes, keepdim=keepdim)]


def _matmul(draw, b: Builder, pool):
    candidates = [v for v in pool if v.type.rank >= 2 and isinstance(v.type.shape[-1], int)]
    if not candidates:
        return []
    x = draw(st.sampled_from(candidates))
    return [b.matmul(x, _constant(draw, b.graph, (x.type.shape[-1], draw(st.integers(1, 5)))))]


def _concat(draw, b: Builder, pool):
    x = draw(st.sampled_from(pool))
    same_shape = [v for v in pool if v.type == x.type]
    others = draw(st.lists(st.sampled_from(same_shape), min_size=1, max_size=2))
    return [b.concat(x, *others, axis=draw(st.integers(-x.type.rank, x.type.rank - 1)))]


def _split(draw, b: Builder, pool):
    candidates = [(v, a) for v in pool for a in _static_axes(v) if v.type.shape[a] >= 2]
    if not candidates:
        return []
    x, axis = draw(st.sampled_from(candidates))
    first = draw(st.integers(1, x.type.shape[axis] - 1))
    return list(b.split(x, axis=axis, sizes=[first, x.type.shape[axis] - first]))


def _layer_norm(draw, b: Builder, pool):
    candidates = [v for v in pool if isinstance(v.type.shape[-1], int)]
    if not candidates:
        return []
    x = draw(st.sampled_from(candidates))
    bias = _constant(draw, b.graph, (x.type.shape[-1],))
    return [b.layer_norm(x, None, bias, eps=draw(st.sampled_from([1e-5, 1e-3, 0.1])))]


def _quantize(draw, b: Builder, pool):
    x = draw(st.sampled_from(pool))
    axes = _static_axes(x)
    if axes and draw(st.booleans()):
        axis = draw(st.sampled_from(axes))
        count = x.type.shape[axis]
        scale = draw(st.lists(scales, min_size=count, max_size=count))
        q = b.quantize(x, dtype="i8", scale=scale, axis=axis)
    else:
        dtype = draw(st.sampled_from(["u8", "i8"]))
        zero_point = draw(st.integers(0, 255) if dtype == "u8" else st.integers(-128, 127))
        q = b.quantize(x, dtype=dtype, scale=[draw(scales)], zero_point=[zero_point])
    return [b.dequantize(q)]


def _quantized_constant(draw, b: Builder, pool):
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
    axis = draw(st.integers(0, len(shape) - 1))
    quant = QuantParams(draw(st.lists(scales, min_size=shape[axis], max_size=shape[axis])),
                        draw(st.lists(st.integers(-3, 3), min_size=shape[axis],
                                      max_size=shape[axis])), axis)
    return [b.dequantize(_constant(draw, b.graph, shape, DType.i8, quant))]


def _half_precision(draw, b: Builder, pool):
    x = draw(st.sampled_from(pool))
    dtype = draw(st.sampled_from([DType.f16, DType.bf16]))
    half = b.cast(x, dtype=dtype)
    last = x.type.shape[-1]
    shape = (last,) if isinstance(last, int) and draw(st.booleans()) else ()
    shifted = b.add(half, _constant(draw, b.graph, shape, dtype))
    return [b.cast(shifted, dtype=DType.f32)]


STEPS = [_unary, _binary, _reshape, _permute, _linear, _conv2d, _concat, _split, _layer_norm,
         _quantize, _quantized_constant, _half_precision, _pool, _attention, _batch_norm, _reduce,
         _matmul]


@st.composite
def graphs(draw) -> Graph:
    graph = Graph(draw(names))
    batch = draw(st.sampled_from([BATCH, 2, 3]))
    input_names = draw(st.lists(names, min_size=2, max_size=2, unique=True))
    features = draw(st.integers(1, 6))
    pool = [graph.add_input(input_names[0], TensorType(DType.f32, (batch, features)))]
    if draw(st.booleans()):
        height = draw(st.sampled_from([HEIGHT, 3, 4]))
        image = TensorType(DType.f32, (batch, draw(st.integers(1, 3)), height, 4))
        pool.append(graph.add_input(input_names[1], image))
    for _ in range(draw(st.integers(1, 12))):
        step = draw(st.sampled_from(STEPS))
        pool.extend(step(draw, Builder(graph, draw(locations)), pool))
    outputs = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3))
    output_names = draw(st.none() | st.lists(names, min_size=len(outputs),
                                             max_size=len(outputs), unique=True))
    graph.set_outputs(outputs, output_names)
    return graph


def random_inputs(graph: Graph, seed: int, bindings: dict | None = None) -> dict[str, np.ndarray]:
    """Inputs for ``graph`` with its symbolic dims bound as in ``bindings`` (default BINDINGS;
    others should be no smaller, which every graph's windows fit)."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for value in graph.inputs:
        shape = [evaluate(d, bindings or BINDINGS) for d in value.type.shape]
        inputs[value.name] = rng.standard_normal(shape).astype(value.type.dtype.numpy)
    return inputs
