"""The native elementwise stack machine (fused elementwise regions in one pass) against the numpy
kernels that each op names, bit for bit: every native op, broadcasting, strided and reversed
views, casts from integer and bool inputs, NaN / infinity / signed zero, odd sizes around its
chunk and parallel piece sizes, one and two threads; expressions without a native form keep the
numpy path; malformed programs and inputs are clear errors. Again under NIMBUS_ISA for the
machine's other paths."""

import numpy as np
import pytest
from nimbus.runtime import _kernels
from nimbus.runtime.cpu_ops import fused
from other_isas import OTHER_ISAS, rerun_under

SPECIALS = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 6.0, -3.0, 3.0, 1e-40, -7.5],
                    np.float32)


def numpy_result(expr: str, inputs: list) -> np.ndarray:
    """What the executor's numpy path gives: each op's own kernel."""
    with np.errstate(all="ignore"):
        return np.asarray(fused._evaluate(fused.parse_expr(expr, len(inputs)), inputs))


def floats(rng, shape, specials: bool = True) -> np.ndarray:
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    if specials and x.size:
        flat = x.reshape(-1)
        count = min(flat.size, SPECIALS.size)
        flat[rng.permutation(flat.size)[:count]] = SPECIALS[:count]
    return x


def assert_same_bits(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal bits, signed zeros included; a NaN's sign and payload carry no meaning."""
    assert actual.dtype == np.float32 and actual.shape == expected.shape
    canonical = [np.where(np.isnan(a), np.float32(np.nan), a).astype(np.float32).view(np.int32)
                 for a in (actual, expected)]
    np.testing.assert_array_equal(*canonical)


def native(expr: str, inputs: list, threads: int = 1) -> np.ndarray:
    program = fused.native_expression(expr, tuple(x.dtype for x in inputs))
    assert program is not None, expr
    return _kernels.elementwise(program, inputs, threads)


# Every op with a native form, over two inputs of one shape.
EXPRESSIONS = [
    "add($0,$1)", "sub($0,$1)", "mul($0,$1)", "div($0,$1)", "maximum($0,$1)", "minimum($0,$1)",
    "maximum($1,$0)", "minimum($1,$0)", "neg($0)", "abs($0)", "sqrt($0)", "relu($0)",
    "relu6($0)", "hardsigmoid($0)", "reciprocal($0)", "rsqrt($0)", "clamp[min=-1.5,max=2.25]($0)",
    "clamp[min=0.0]($0)", "clamp[max=-0.0]($0)", "cast[dtype=f32]($0)",
    "mul(sub(add($0,$1),relu6($1)),div(neg($0),maximum(abs($1),$0)))",
]


@pytest.mark.parametrize("expr", EXPRESSIONS)
@pytest.mark.parametrize("shape", [(), (1,), (17,), (3, 5, 33), (2, 1100), (41, 700)])
def test_each_op_is_the_numpy_kernel_bit_for_bit(expr, shape):
    rng = np.random.default_rng([len(shape), len(expr)])
    inputs = [floats(rng, shape), floats(rng, shape)]
    expected = numpy_result(expr, inputs)
    assert_same_bits(native(expr, inputs), expected)
    assert_same_bits(native(expr, inputs, threads=2), expected)


@pytest.mark.parametrize("name", ["gelu", "gelu[approximate=tanh]", "sigmoid", "tanh", "silu",
                                  "hardswish"])
def test_activations_are_the_native_activation_kernel(name):
    rng = np.random.default_rng(7)
    x, y = floats(rng, (5, 2049), specials=False), floats(rng, (2049,), specials=False)
    expected = _kernels.activation(x * y, name.replace("[approximate=tanh]", "_tanh"))
    assert_same_bits(native(f"{name}(mul($0,$1))", [x, y], threads=2), expected)
    assert_same_bits(native(f"{name}(mul($0,$1))", [x, y]), numpy_result(f"{name}(mul($0,$1))",
                                                                          [x, y]))


@pytest.mark.parametrize("shapes", [
    [(8, 128, 768), (8, 128, 768), (1, 128, 768)],  # an embedding sum
    [(), (3, 1, 1, 7), ()],  # a scalar mask expression
    [(4, 1, 5), (3, 1), (5,)],
    [(2, 3, 4, 5), (3, 1, 5), (1, 1, 1)],
    [(1, 1), (1,), ()],
    [(0, 3), (3,), ()],
])
def test_inputs_broadcast_as_numpy_broadcasts_them(shapes):
    rng = np.random.default_rng(len(shapes[0]))
    inputs = [floats(rng, shape) for shape in shapes]
    expr = "mul(add($0,$1),sub($2,$1))"
    expected = numpy_result(expr, inputs)
    assert_same_bits(native(expr, inputs, threads=2), expected)


@pytest.mark.parametrize("channels", [1, 3, 32, 33, 255, 256, 257])
def test_short_rows_run_several_to_a_segment(channels):
    """A [1, 1, 1, C] gate, a [N, H, W, 1] column, a reversed int8 row and a strided view over
    [N, H, W, C]: rows of C elements go several to a segment, within each run of W, and parallel
    pieces start and end mid-row."""
    rng = np.random.default_rng(channels)
    shape = (2, 37, 29, channels)
    x = floats(rng, shape)
    gate = floats(rng, (1, 1, 1, channels))
    column = floats(rng, (2, 37, 29, 1))
    row = rng.integers(-100, 100, (1, 1, 29, channels), dtype=np.int8)[:, :, ::-1]
    strided = floats(rng, (2, 37, 29, 2 * channels))[..., ::2]
    expr = "add(mul(mul($0,$1),cast[dtype=f32]($3)),sub($2,$4))"
    inputs = [x, gate, column, row, strided]
    expected = numpy_result(expr, inputs)
    for threads in (1, 2):
        assert_same_bits(native(expr, inputs, threads=threads), expected)


def concat_parts(rng, channel_counts, batch, height, width) -> list:
    """[N, C_i, H, W] values in turns C-contiguous, NCHW views of NHWC memory and strided."""
    parts = []
    for i, channels in enumerate(channel_counts):
        x = floats(rng, (batch, height, width, 2 * channels))[..., ::2].transpose(0, 3, 1, 2)
        parts.append([np.ascontiguousarray(x), np.ascontiguousarray(x.transpose(0, 2, 3, 1))
                      .transpose(0, 3, 1, 2), x][i % 3])
    return parts


@pytest.mark.parametrize("channel_counts, hw", [
    ((5,), (7, 6)), ((64, 32, 32), (9, 11)), ((1, 3, 16, 17), (4, 5)),  # in turn
    ((128,) + (32,) * 11, (5, 3)), ((8,) * 6, (2, 2)),  # small parts across the threads
])
def test_elementwise_concat_is_the_expression_over_the_concatenation(channel_counts, hw):
    """DenseNet's BN -> ReLU over concatenated values, with constants per channel, of one
    value, cast from int8, in fewer dimensions: each part into its channels of the NHWC
    result, bit for bit the expression over np.concatenate."""
    rng = np.random.default_rng(list(channel_counts))
    total = sum(channel_counts)
    for batch in (1, 2):
        parts = concat_parts(rng, channel_counts, batch, *hw)
        params = [floats(rng, (1, total, 1, 1)), floats(rng, (total, 1, 1)),
                  rng.integers(-9, 9, (1, total, 1, 1), dtype=np.int8), floats(rng, (1, 1))]
        expr = "relu(add(mul($0,$1),sub($2,mul(cast[dtype=f32]($3),$4))))"
        program = fused.native_expression(expr, tuple(a.dtype for a in [parts[0], *params]))
        expected = numpy_result(expr, [np.concatenate(parts, axis=1), *params])
        for threads in (1, 2):
            actual = _kernels.elementwise_concat(program, parts, params, threads)
            assert actual.flags.c_contiguous and actual.shape == (batch, *hw, total)
            assert_same_bits(actual.transpose(0, 3, 1, 2), expected)


def test_elementwise_concat_checks_its_arguments():
    rng = np.random.default_rng(0)
    program = fused.native_expression("mul($0,$1)", (np.dtype(np.float32),) * 2)
    a, b = floats(rng, (1, 3, 4, 5)), floats(rng, (1, 2, 4, 5))
    scale = floats(rng, (1, 5, 1, 1))
    with pytest.raises(ValueError, match="share N, H and W"):
        _kernels.elementwise_concat(program, [a, floats(rng, (1, 2, 4, 6))], [scale])
    with pytest.raises(ValueError, match="one per channel"):
        _kernels.elementwise_concat(program, [a, b], [floats(rng, (1, 5, 4, 1))])
    with pytest.raises(ValueError, match="one per channel"):
        _kernels.elementwise_concat(program, [a, b], [floats(rng, (1, 4, 1, 1))])
    with pytest.raises(ValueError, match="reads 2 inputs"):
        _kernels.elementwise_concat(program, [a, b], [])
    with pytest.raises(ValueError, match="at least one part"):
        _kernels.elementwise_concat(program, [], [scale])
    with pytest.raises(TypeError, match="4-D float32"):
        _kernels.elementwise_concat(program, [a.astype(np.float64)], [scale])


def test_strided_and_reversed_views_are_read_in_place():
    rng = np.random.default_rng(3)
    base = floats(rng, (6, 40, 50))
    views = [base.transpose(2, 0, 1)[:, :, ::3], base[::-1, ::2, ::-4].transpose(2, 1, 0)[:, :5]]
    for view in views:
        y = floats(rng, (view.shape[0], 1, view.shape[2]))
        target = np.broadcast_shapes(view.shape, y.shape)
        assert not view.flags.c_contiguous
        expected = numpy_result("add(mul($0,$1),$0)", [view, y])
        assert expected.shape == target
        assert_same_bits(native("add(mul($0,$1),$0)", [view, y], threads=2), expected)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.int16, np.int8, np.uint8, np.bool_,
                                   np.float64])
def test_casts_to_float32_read_other_dtypes(dtype):
    rng = np.random.default_rng(5)
    mask = rng.integers(-100, 100, (3, 1, 1, 130)).astype(dtype)
    if dtype == np.int64:
        mask.flat[:2] = [2**62 + 12345, -(2**53) - 1]  # rounds to nearest, as numpy does
    one, low = np.array(1.0, np.float32), np.array(-3.4e38, np.float32)
    expr = "mul(sub($0,cast[dtype=f32]($1)),$2)"
    assert_same_bits(native(expr, [one, mask, low]), numpy_result(expr, [one, mask, low]))


def test_expressions_without_a_native_form_keep_numpy():
    f32, f16, i64 = np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.int64)
    assert fused.native_expression("exp($0)", (f32,)) is None
    assert fused.native_expression("pow($0,$1)", (f32, f32)) is None
    assert fused.native_expression("where(gt($0,$1),$0,$1)", (f32, f32)) is None
    assert fused.native_expression("add($0,$1)", (f32, f16)) is None  # numpy upcasts to f32...
    assert fused.native_expression("add($0,$1)", (f32, i64)) is None  # ...and to float64
    assert fused.native_expression("cast[dtype=i64]($0)", (f32,)) is None
    deep = "$0"
    for _ in range(20):
        deep = f"add($0,mul($0,{deep}))"
    assert fused.native_expression(deep, (f32,)) is None  # more registers than it has
    # The kernel takes the numpy path for them, with the same results as before.
    x = np.linspace(-3, 3, 11, dtype=np.float32)
    np.testing.assert_array_equal(fused.fused_elementwise([x], {"expr": "exp($0)"}, [None]),
                                  np.exp(x))
    half = x.astype(np.float16)
    assert fused.fused_elementwise([x, half], {"expr": "add($0,$1)"}, [None]).dtype == np.float32


def test_bad_programs_and_inputs_are_clear_errors():
    def step(name, index=0):
        return (name, index, 0.0, 0.0)

    with pytest.raises(ValueError, match="step 1 pops 2 values of 1"):
        _kernels.ElementwiseProgram([step("input"), step("add")])
    with pytest.raises(ValueError, match="must leave one value, leaves 2"):
        _kernels.ElementwiseProgram([step("input"), step("input", 1)])
    with pytest.raises(ValueError, match="must leave one value, leaves 0"):
        _kernels.ElementwiseProgram([])
    with pytest.raises(ValueError, match="unknown elementwise step 'exp'"):
        _kernels.ElementwiseProgram([step("input"), step("exp")])
    with pytest.raises(ValueError, match="input index must be in"):
        _kernels.ElementwiseProgram([step("input", -1)])
    with pytest.raises(ValueError, match="more than 16 registers"):
        _kernels.ElementwiseProgram([step("input")] * 17 + [step("add")] * 16)
    program = _kernels.ElementwiseProgram([step("input"), step("input", 1), step("add")])
    assert program.inputs == 2 and len(program) == 3
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="reads 2 inputs, got 1"):
        _kernels.elementwise(program, [x])
    with pytest.raises(ValueError, match="do not broadcast together"):
        _kernels.elementwise(program, [x, np.zeros((4,), np.float32)])
    with pytest.raises(TypeError, match="must be float32/64, int8/16/32/64, uint8 or bool"):
        _kernels.elementwise(program, [x, np.zeros(3, np.complex64)])
    with pytest.raises(ValueError, match="threads"):
        _kernels.elementwise(program, [x, x], threads=0)
    plan = _kernels.Program()
    with pytest.raises(ValueError, match="needs its out array"):
        plan.elementwise(program, [x, x], None)
    with pytest.raises(ValueError, match=r"out must be a writable array of shape \(2, 3\)"):
        plan.elementwise(program, [x, x], np.zeros((3, 2), np.float32))
    out = np.empty((2, 3), np.float32)
    plan.elementwise(program, [x + 1, x + 2], out)
    plan.run(threads=2)
    np.testing.assert_array_equal(out, np.full((2, 3), 3, np.float32))


@pytest.mark.parametrize("isa", OTHER_ISAS)
def test_every_isa_path(isa):
    rerun_under(__file__, isa, "test_every_isa_path")
