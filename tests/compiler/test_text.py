"""The text form: exact round trips (hand-written and property-based), external constants on
disk, and parse errors that point at the line and column they are about."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import sympy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nimbus.compiler.dims import floordiv, symbol
from nimbus.compiler.dtypes import DType
from nimbus.compiler.interpreter import interpret
from nimbus.compiler.ir import Builder, Graph, Location, TensorType
from nimbus.compiler.ops import OP_TABLE
from nimbus.compiler.text import IRParseError, load_ir, parse_ir, print_ir, save_ir
from random_graphs import graphs, random_inputs

N, M = symbol("N"), symbol("M")
rng = np.random.default_rng(7)

# Canonical text (exactly what the printer emits) touching every attribute kind, quantized
# types per tensor and per axis, symbolic dims, multi-result and variadic ops, absent optional
# operands, locations, quoted names, and inline constants of every dtype with float specials.
EVERYTHING = """\
graph @everything(%x: f32[N,16], %img: f32[2,3,N,8], %"odd input": bool[N,16]) -> (output: u8[N,4]{scale=0.05, zp=3}, "odd output": f32[N+1,4], c: f16[8*N,2], m: f32[N,1], mp: f32[2,3,floor(N/2),4], cv: f32[2,3,N,8], sm: f32[N,32], fl: i64[N,2], dq: f32[4,16], qa: i8[N,6]{axis=1, scale=[0.5, 0.25, 0.125, 1.0, 2.0, 4.0]}, ln2: bool[N,16], mask: bool[2], rs: f32[2,3,4,16]) {
  const @"weight/0": f32[4,16] = external
  const @w.q: i8[4,16]{axis=0, scale=[0.1, 0.2, 0.3, 0.4], zp=[0, 1, -1, 0]} = external
  const @bias: i32[4] = [1, -2, 3, 2147483647]
  const @half: f16[3] = [0.1, 6.55e+04, -inf]
  const @brain: bf16[2] = [0.1, nan]
  const @mask: bool[2] = [true, false]
  const @idx: i64[3] = [-9223372036854775808, 0, 9223372036854775807]
  const @ln.bias: f32[16] = [0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0, 1.125, 1.25, 1.375, 1.5, 1.625, 1.75, -0.0]
  const @k: f32[3,1,3,3] = external
  %0 = quantize(%x) {dtype=u8, scale=[0.0235], zero_point=[128]} : u8[N,16]{scale=0.0235, zp=128}
  %1 = qlinear(%0, @w.q, @bias) {scale=0.05, zero_point=3, activation="relu"} : u8[N,4]{scale=0.05, zp=3} loc("model.py":12 "encoder.fc" [quantize, fuse])
  %2 = layer_norm(%x, none, @ln.bias) {eps=0.001} : f32[N,16] loc("model.py":13)
  %3 = linear(%2, @"weight/0") : f32[N,4] loc("encoder.fc2")
  %4 = gelu(%3) {approximate="tanh"} : f32[N,4] loc([fuse])
  %5 = clamp(%4) {max=6.0} : f32[N,4] loc("gen.py":?)
  %6 = pad(%5) {pads=[0, 0, 1, 0], value=-inf} : f32[N+1,4]
  %7 = reshape(%x) {shape=[N, 2, 8]} : f32[N,2,8]
  %8 = reshape(%7) {shape=[-1, 2]} : f32[8*N,2]
  %9 = cast(%8) {dtype=f16} : f16[8*N,2]
  %10 = mean(%x) {axes=[1], keepdim=true} : f32[N,1]
  %11 = max_pool2d(%img) {kernel=[2, 2], stride=[2, 2]} : f32[2,3,floor(N/2),4]
  %12 = conv2d(%img, @k) {padding=[1, 1, 1, 1], groups=3} : f32[2,3,N,8]
  %13, %14 = split(%x) {axis=1, sizes=[10, 6]} : f32[N,10], f32[N,6]
  %15 = concat(%13, %14, %x) {axis=-1} : f32[N,32]
  %16 = softmax(%15) {axis=0} : f32[N,32]
  %17 = full() {shape=[N, 2], value=1.5, dtype=i64} : i64[N,2]
  %18 = dequantize(@w.q) : f32[4,16]
  %19 = quantize(%14) {dtype=i8, scale=[0.5, 0.25, 0.125, 1.0, 2.0, 4.0], axis=1} : i8[N,6]{axis=1, scale=[0.5, 0.25, 0.125, 1.0, 2.0, 4.0]}
  %20 = logical_not(%"odd input") : bool[N,16]
  %21 = resize(%12) {size=[4, 16], scale=[0.5, 2.0]} : f32[2,3,4,16]
  return %1, %6, %9, %10, %11, %12, %16, %17, %18, %19, %20, @mask, %21
}
"""

EXTERNAL = {
    "weight/0": rng.standard_normal((4, 16)).astype(np.float32),
    "w.q": rng.integers(-127, 128, (4, 16)).astype(np.int8),
    "k": rng.standard_normal((3, 1, 3, 3)).astype(np.float32),
}


def bits(array: np.ndarray) -> np.ndarray:
    """The raw bytes of an array as unsigned integers, so -0.0 and 0.0 differ."""
    return np.ascontiguousarray(array).view(f"u{array.dtype.itemsize}")


def assert_same_constants(actual: Graph, expected: Graph) -> None:
    """Bit-identical constants, except that any nan matches any nan (payloads may change)."""
    assert list(actual.constants) == list(expected.constants)
    for name, value in expected.constants.items():
        got = actual.constants[name]
        assert got.type == value.type, name
        nan = np.isnan(value.data.astype(np.float32)) if value.type.dtype.is_float else False
        if value.type.dtype.is_float:
            assert np.array_equal(np.isnan(got.data.astype(np.float32)), nan), name
        assert np.array_equal(np.where(nan, 0, bits(got.data)), np.where(nan, 0, bits(value.data)))


def round_trip(graph: Graph, **options) -> Graph:
    """Print, parse and print again; the two texts must be identical."""
    text = print_ir(graph, **options)
    external = {name: value.data for name, value in graph.constants.items()}
    parsed = parse_ir(text, external)
    assert print_ir(parsed, **options) == text
    assert_same_constants(parsed, graph)
    return parsed


# ---- hand-written round trips --------------------------------------------------------------
def test_canonical_text_round_trips_exactly():
    graph = parse_ir(EVERYTHING, EXTERNAL)
    assert print_ir(graph) == EVERYTHING
    by_op = {node.op: node for node in graph.nodes}  # the last node of each op
    assert by_op["clamp"].attrs == {"min": None, "max": 6.0}
    assert by_op["cast"].attrs["dtype"] == DType.f16
    assert by_op["pad"].attrs["value"] == -np.inf
    assert by_op["layer_norm"].operands[1] is None
    assert by_op["conv2d"].operands[2] is None  # trailing absent bias, left out in the text
    assert graph.nodes[7].attrs["shape"] == (N, 2, 8)
    assert by_op["reshape"].attrs["shape"] == (-1, 2)
    assert by_op["qlinear"].loc == Location("model.py", 12, "encoder.fc", ("quantize", "fuse"))
    assert by_op["clamp"].loc == Location("gen.py", None)
    assert graph.output_names[:2] == ["output", "odd output"]
    assert graph.constants["idx"].data.tolist() == [-2**63, 0, 2**63 - 1]
    assert graph.constants["brain"].data.dtype == DType.bf16.numpy
    assert np.isnan(graph.constants["brain"].data[1].astype(np.float32))
    assert graph.constants["half"].data.tolist() == [np.float16(0.1), 65504.0, -np.inf]
    assert np.signbit(graph.constants["ln.bias"].data[-1])
    assert graph.constants["w.q"].type.quant.zero_point == (0, 1, -1, 0)


def test_the_canonical_text_uses_every_attribute_kind_of_the_op_table():
    graph = parse_ir(EVERYTHING, EXTERNAL)
    node_lines = [line for line in EVERYTHING.splitlines() if line.startswith("  %")]
    printed = set()
    for node, line in zip(graph.nodes, node_lines):
        call = line.split(" : ")[0]
        printed |= {attr.kind for name, attr in OP_TABLE[node.op].attrs.items()
                    if f"{name}=" in call}
    declared = {attr.kind for op in OP_TABLE.values() for attr in op.attrs.values()}
    assert declared <= printed


def test_layout_comments_and_labels_are_not_part_of_the_graph():
    text = """
    # a comment on its own line
    graph @"g" (%x : f32[N, 4])   ->   (y: f32[N,4]) {   # trailing comment
      const @w:f32[4,4]=[1,0,0,0, 0,1,0,0, 0,0,1,0, 0,0,0,1]
      %h=linear(%x,@w)
          :f32[N,4]
      %out = layer_norm(%h, none, none) {eps=1} : f32[N,4] loc( "m.py" : 3 )
      return %out
    }"""
    graph = parse_ir(text)
    assert graph.nodes[1].attrs["eps"] == 1.0  # a float attribute accepts an integer literal
    assert print_ir(graph) == """\
graph @g(%x: f32[N,4]) -> (y: f32[N,4]) {
  const @w: f32[4,4] = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
  %0 = linear(%x, @w) : f32[N,4]
  %1 = layer_norm(%0) {eps=1.0} : f32[N,4] loc("m.py":3)
  return %1
}
"""


def test_scalar_constants_print_as_a_scalar():
    text = """\
graph @g(%x: f32[N]) -> (output: f32[N]) {
  const @scalar: f32[] = 0.125
  %0 = mul(%x, @scalar) : f32[N]
  return %0
}
"""
    assert print_ir(parse_ir(text)) == text


@pytest.mark.parametrize("dim", [
    N, 8 * N, N + 1, floordiv(N, 2), sympy.Mod(N, 3), -N + 3, 2 * M * N, N**2, N / 2, 3 * N / 2,
    3 * floordiv(N + 1, 2) - 1, sympy.Max(N, 2), sympy.ceiling(N / 3), M * (N + 1),
    -(N + 1) * M, 1 / N, sympy.Rational(3, 2), sympy.Symbol("batch_size", integer=True,
                                                            positive=True) * 4,
])
def test_symbolic_dims_round_trip(dim):
    graph = Graph()
    x = graph.add_input("x", TensorType(DType.f32, (dim, 3)))
    graph.set_outputs([Builder(graph).relu(x)])
    assert round_trip(graph).inputs[0].type.shape[0] == x.type.shape[0]


def test_absent_optional_operands_print_as_none_except_at_the_end():
    graph = Graph()
    x = graph.add_input("x", TensorType(DType.f32, (N, 3, 4, 4)))
    consts = [graph.add_constant(name, np.full(3, i, np.float32))
              for i, name in enumerate(["mean", "var", "bias"])]
    b = Builder(graph)
    normed = b.batch_norm(x, consts[0], consts[1], None, consts[2])
    trailing = b.batch_norm(normed, consts[0], consts[1], None, None)
    graph.set_outputs([trailing])
    text = print_ir(graph)
    assert "batch_norm(%x, @mean, @var, none, @bias)" in text
    assert "batch_norm(%0, @mean, @var)" in text
    assert round_trip(graph).nodes[1].operands[3:] == [None, None]


@pytest.mark.parametrize("loc,text", [
    (Location("model.py", 23, "conv1", ("fold-batchnorm", "fuse")),
     ' loc("model.py":23 "conv1" [fold-batchnorm, fuse])'),
    (Location("model.py", 23), ' loc("model.py":23)'),
    (Location("gen.py"), ' loc("gen.py":?)'),
    (Location(scope='blocks.0."attn"'), r' loc("blocks.0.\"attn\"")'),
    (Location(passes=("fuse", "Odd Pass")), ' loc([fuse, "Odd Pass"])'),
    (Location(), ""),
])
def test_locations(loc, text):
    graph = Graph()
    x = graph.add_input("x", TensorType(DType.f32, (2,)))
    graph.set_outputs([Builder(graph, loc).relu(x)])
    assert print_ir(graph).splitlines()[1] == "  %0 = relu(%x) : f32[2]" + text
    assert round_trip(graph).nodes[0].loc == loc
    assert "loc(" not in print_ir(graph, locations=False)


def test_names_that_need_quotes():
    graph = Graph('my "graph"')
    x = graph.add_input("input one", TensorType(DType.f32, (2,)))
    digits = graph.add_input("0", TensorType(DType.f32, (2,)))
    w = graph.add_constant("layer\n1.wéight", np.ones(2, np.float32))
    b = Builder(graph)
    graph.set_outputs([b.add(b.add(x, w), digits)], ["out put"])
    text = print_ir(graph)
    assert text.startswith('graph @"my \\"graph\\""(%"input one": f32[2], %0: f32[2]) '
                           '-> ("out put": f32[2]) {')
    assert '%1 = add(%"input one", @"layer\\n1.wéight")' in text  # %0 is the input's name
    parsed = round_trip(graph)
    assert [v.name for v in parsed.inputs] == ["input one", "0"]
    assert list(parsed.constants) == ["layer\n1.wéight"]


def test_inline_and_external_constants():
    graph = Graph()
    x = graph.add_input("x", TensorType(DType.f32, (16,)))
    small = graph.add_constant("small", np.arange(16, dtype=np.float32))
    large = graph.add_constant("large", np.arange(17, dtype=np.float32))
    b = Builder(graph)
    graph.set_outputs([b.add(x, small), b.relu(large)])
    text = print_ir(graph)
    assert "const @small: f32[16] = [0.0, 1.0," in text
    assert "const @large: f32[17] = external" in text
    assert "external" not in print_ir(graph, inline_limit=17)
    assert "const @small: f32[16] = external" in print_ir(graph, inline_limit=0)
    round_trip(graph)
    round_trip(graph, inline_limit=1000)


SPECIAL_FLOATS = [0.0, -0.0, 1.0, -1.5, 0.1, 1 / 3, 1e-3, 1e30, -1e-30, np.inf, -np.inf, np.nan]


@pytest.mark.parametrize("dtype", [DType.f32, DType.f16, DType.bf16])
def test_float_constants_keep_their_bits(dtype):
    info = np.finfo(np.float32 if dtype == DType.bf16 else dtype.numpy)
    extremes = [info.max, info.min, info.tiny, info.smallest_subnormal]
    values = np.array(SPECIAL_FLOATS + extremes, np.float64)
    width = 16 if dtype.itemsize == 2 else 32
    random_bits = rng.integers(0, 2**width, 3000, dtype=np.uint64).astype(f"u{dtype.itemsize}")
    with np.errstate(over="ignore"):
        array = np.concatenate([values.astype(np.float32).astype(dtype.numpy),
                                random_bits.view(dtype.numpy)])
    graph = Graph()
    graph.add_input("x", TensorType(DType.f32, (1,)))
    graph.add_constant("c", array)
    graph.set_outputs(graph.inputs)
    round_trip(graph, inline_limit=array.size)


def test_every_finite_f16_value_reads_back_exactly():
    values = np.arange(2**16, dtype=np.uint16).view(np.float16)
    graph = Graph()
    graph.add_input("x", TensorType(DType.f32, (1,)))
    graph.add_constant("all", values[np.isfinite(values)])
    graph.set_outputs(graph.inputs)
    round_trip(graph, inline_limit=2**16)


def test_save_and_load_keep_large_constants_beside_the_text(tmp_path):
    graph = parse_ir(EVERYTHING, EXTERNAL)
    big = {
        "f32": rng.standard_normal(40).astype(np.float32),
        "bf16": rng.standard_normal(40).astype(DType.bf16.numpy),
        "f16": np.array([np.nan, -0.0] + [1.5] * 30, np.float16),
        "flags": rng.random(20) > 0.5,
        "ids": rng.integers(-2**63, 2**63 - 1, 20, dtype=np.int64),
    }
    for name, array in big.items():
        graph.add_constant(name, array)
    path = tmp_path / "model.nir"
    save_ir(graph, path)
    assert path.read_text(encoding="utf-8") == print_ir(graph)
    assert (tmp_path / "model.nir.safetensors").exists()
    loaded = load_ir(path)
    assert print_ir(loaded) == print_ir(graph)
    assert_same_constants(loaded, graph)


def test_save_without_large_constants_writes_only_the_text(tmp_path):
    path = tmp_path / "small.nir"
    save_ir(parse_ir(GOOD.replace("external", "[" + ", ".join(["0.5"] * 36) + "]")), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.nir", "small.nir.safetensors"]
    graph = parse_ir(GOOD.replace("f32[6,6] = external", "f32[6] = [1, 2, 3, 4, 5, 6]")
                     .replace("linear(%x, @w)", "mul(%x, @w)"))
    save_ir(graph, tmp_path / "tiny.nir")
    assert not (tmp_path / "tiny.nir.safetensors").exists()
    assert print_ir(load_ir(tmp_path / "tiny.nir")) == print_ir(graph)


# ---- property: random graphs ----------------------------------------------------------------
@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(graph=graphs(), seed=st.integers(0, 2**32 - 1))
def test_random_graphs_round_trip_and_run_the_same(graph, seed):
    parsed = round_trip(graph)
    inputs = random_inputs(graph, seed)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # nan and inf constants are allowed
        expected = interpret(graph, inputs)
        actual = interpret(parsed, inputs)
    assert list(actual) == list(expected)
    for name, array in expected.items():
        assert actual[name].dtype == array.dtype and actual[name].shape == array.shape, name
        assert np.array_equal(actual[name], array, equal_nan=array.dtype.kind == "f"), name


# ---- errors -----------------------------------------------------------------------------------
GOOD = """\
graph @g(%x: f32[N,6], %m: bool[N]) -> (y: f32[N,6]) {
  const @w: f32[6,6] = external
  %0 = linear(%x, @w) : f32[N,6]
  %1 = softmax(%0) {axis=1} : f32[N,6]
  return %1
}
"""
WEIGHTS = {"w": np.eye(6, dtype=np.float32)}


def parse_error(text: str, constants=WEIGHTS) -> IRParseError:
    with pytest.raises(IRParseError) as info:
        parse_ir(text, constants, filename="model.nir")
    return info.value


def assert_points_at(error: IRParseError, text: str, line: int, at: str, detail: str):
    """The error is on ``line``, at the first occurrence of ``at`` in it, says ``detail`` and
    shows the line with a caret under that column."""
    source_line = text.split("\n")[line - 1]
    column = source_line.index(at) + 1
    assert (error.line, error.column) == (line, column)
    assert detail in error.detail
    assert str(error) == (f"model.nir:{line}:{column}: {error.detail}\n"
                          f"{source_line}\n{' ' * (column - 1)}^")


def test_good_text_parses():
    assert print_ir(parse_ir(GOOD, WEIGHTS)) == GOOD


def test_unknown_op_names_the_op_and_suggests_one():
    text = GOOD.replace("softmax(%0) {axis=1}", "relux(%0)")
    error = parse_error(text)
    assert isinstance(error, ValueError)
    assert str(pickle.loads(pickle.dumps(error))) == str(error)
    assert str(error) == ("model.nir:4:8: unknown op 'relux' (did you mean 'relu'?)\n"
                          "  %1 = relux(%0) : f32[N,6]\n"
                          "       ^")


# (text replaced, replacement, line of the error, where on that line the caret is, message)
ERRORS = [
    ("{axis=1}", "{axs=1}", 4, "axs", "unknown softmax attribute 'axs' (did you mean 'axis'?)"),
    ("{axis=1}", "{axis=1, axis=0}", 4, "axis=0", "attribute 'axis' is given twice"),
    ("{axis=1}", "{axis=1.5}", 4, "1.5", "attribute 'axis' of softmax is int: expected an integer"),
    ("{axis=1}", '{axis="1"}', 4, '"1"', "expected an integer"),
    ("linear(%x, @w)", "linear(%z, @w)", 3, "%z", "undefined value %z"),
    ("linear(%x, @w)", "linear(%x, @ww)", 3, "@ww", "undefined constant @ww (did you mean 'w'?)"),
    ("softmax(%0)", "softmax(%2)", 4, "%2", "undefined value %2"),
    ("linear(%x, @w)", "linear(%1, @w)", 3, "%1", "%1 is used before its definition on line 4"),
    ("%1 = softmax", "%0 = softmax", 4, "%0", "%0 is already defined on line 3"),
    ("%0 = linear", "%m = linear", 3, "%m", "%m is already defined on line 1"),
    ("{axis=1} : f32[N,6]", "{axis=1} : f32[N,5]", 4, "f32",
     "declared type f32[N,5] does not match f32[N,6], the type softmax infers"),
    ("{axis=1} : f32[N,6]", "{axis=1} : f32[N,6], f32[N,6]", 4, "f32",
     "softmax gives 1 result(s), 2 type(s) are declared"),
    ("%1 = softmax", "%1, %2 = softmax", 4, "%1", "softmax gives 1 result(s), 2 name(s) are bound"),
    ("linear(%x, @w)", "linear(%x)", 3, "linear", "linear: takes 2 to 3 operands"),
    ("linear(%x, @w)", "linear(%x, @w, %m, %m)", 3, "linear", "linear: takes 2 to 3 operands"),
    ("linear(%x, @w)", "linear(%x, nothing)", 3, "nothing",
     "expected a %value, an @constant or none, not 'nothing'"),
    ("linear(%x, @w)", "linear(%m, @w)", 3, "linear", "linear: "),
    ("softmax(%0) {axis=1}", "reshape(%0)", 4, "reshape", "attribute 'shape' (dims) is required"),
    ("(%x: f32[N,6],", "(%x: f33[N,6],", 1, "f33", "unknown dtype 'f33'"),
    ("(%x: f32[N,6],", "(%x: f32[N,1.5],", 1, "1.5", "expected a dimension"),
    ("(%x: f32[N,6],", "(%x: f32[N,flor(N)],", 1, "flor",
     "unknown function 'flor' in a dimension"),
    ("(y: f32[N,6])", "(y: f32[N,7])", 1, "f32[N,7]", "output 'y' is declared f32[N,7], but %1 is"),
    ("(y: f32[N,6])", "(y: f32[N,6], z: f32[N,6])", 5, "return", "the header declares 2 output(s)"),
    ("= external", "= [1, 2]", 2, "[1, 2]", "f32[6,6] holds 36 elements, the list has 2"),
    ("{axis=1} : f32", "{axis=1} ; f32", 4, ";", "unexpected character ';'"),
    ("(%0) {axis=1}", "(%0 {axis=1}", 4, "{", "unexpected '{'; expected ')', ','"),
]


@pytest.mark.parametrize("old,new,line,at,detail", ERRORS)
def test_errors_point_at_their_cause(old, new, line, at, detail):
    assert old in GOOD
    text = GOOD.replace(old, new)
    assert_points_at(parse_error(text), text, line, at, detail)


def test_output_names_are_unique():
    text = GOOD.replace("(y: f32[N,6])", "(y: f32[N,6], y: f32[N,6])").replace("%1\n", "%1, %1\n")
    assert_points_at(parse_error(text), text, 1, "y: f32[N,6])", "output name 'y' is used twice")


def test_an_unfinished_text_points_past_its_end():
    text = GOOD.removesuffix("}\n")
    error = parse_error(text)
    assert (error.line, error.column) == (6, 1)
    assert error.detail == "unexpected end of text; expected ',', '}'"


def test_external_constants_must_be_given_and_match():
    assert_points_at(parse_error(GOOD, {}), GOOD, 2, "external",
                     "constant @w is external, but no array named 'w' was given")
    wrong = {"w": np.eye(6, dtype=np.float16)}
    assert_points_at(parse_error(GOOD, wrong), GOOD, 2, "external",
                     "the array given for @w is f16[6,6], the text declares f32[6,6]")


def test_bad_constant_and_quantization_values():
    text = GOOD.replace("const @w: f32[6,6] = external",
                        "const @q: i8[2]{scale=[0.5], zero=[1]} = [1, 300]")
    assert_points_at(parse_error(text), text, 2, "zero", "unknown quantization attribute 'zero'")
    text = GOOD.replace("const @w: f32[6,6] = external", "const @q: i8[2] = [1, 300]")
    assert_points_at(parse_error(text), text, 2, "300", "300 is outside the range of i8")
    text = GOOD.replace("const @w: f32[6,6] = external", "const @q: f32[2]{scale=0.5} = [1, 2]")
    assert_points_at(parse_error(text), text, 2, "f32", "quantization parameters on a f32 tensor")
