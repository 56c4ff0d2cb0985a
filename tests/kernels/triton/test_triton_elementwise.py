"""Rendered fused elementwise kernels against the op table's fused_elementwise reference.

Tolerances: float32 results max|a-b| / max|b| <= 1e-5 (the kernel's exp/log/erf/sqrt differ from
numpy's by a few ulps); float16 results 1e-2; bool and integer results bit-exact.

The module under test never imports the compiler (the CUDA runtime serves without it): it
validates and types regions with its own copy of the elementwise ops' rules, which the tests
here hold to the op table. The tests themselves may use the compiler.
"""

from __future__ import annotations

import inspect
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from nimbus.compiler.dtypes import DType
from nimbus.compiler.interpreter import interpret
from nimbus.compiler.ir import Builder, Graph, TensorType
from nimbus.compiler.ops import get_op
from nimbus.compiler.ops.fused import parse_expr
from nimbus.compiler.ops.registry import OP_TABLE
from nimbus.kernels.triton import elementwise
from nimbus.kernels.triton.elementwise import (
    SUPPORTED_OPS,
    UnsupportedElementwise,
    elementwise_kernel,
    fused_elementwise,
    render_elementwise,
    unsupported,
)
from nimbus.passes import run_passes

# Masked-off lanes load 0 and may divide by it or take its log; under the interpreter numpy warns.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float16): 1e-2}
rng = np.random.default_rng(0)


def reference(expr: str, arrays: list[np.ndarray]) -> np.ndarray:
    op = get_op("fused_elementwise")
    return op.run_reference(arrays, op.normalize_attrs({"expr": expr}), [None] * len(arrays))[0]


def check(expr: str, arrays: list[np.ndarray], device: str) -> None:
    """Run the kernel on `arrays` and compare with the reference: shape and dtype, then values."""
    expected = reference(expr, arrays)
    actual = fused_elementwise(expr, [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays])
    actual = actual.cpu().numpy()
    assert actual.shape == expected.shape, f"{expr}: shape {actual.shape}, expected {expected.shape}"
    assert actual.dtype == expected.dtype, f"{expr}: dtype {actual.dtype}, expected {expected.dtype}"
    if expected.dtype.kind == "f":
        np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg=expr)
        finite = ~np.isnan(expected)
        difference = np.abs(actual[finite].astype(np.float64) - expected[finite])
        scale = max(np.abs(expected[finite].astype(np.float64)).max(initial=0.0), 1e-30)
        assert difference.max(initial=0.0) / scale <= TOLERANCE[expected.dtype], expr
    else:
        np.testing.assert_array_equal(actual, expected, err_msg=expr)


# ---- inputs -------------------------------------------------------------------------------------------
def normal(n, dtype=np.float32):
    return (rng.standard_normal(n) * 3).astype(dtype)


def positive(n, dtype=np.float32):
    return rng.uniform(0.1, 4.0, n).astype(dtype)


def away_from_zero(n, dtype=np.float32):
    return (rng.choice([-1.0, 1.0], n) * rng.uniform(0.5, 2.0, n)).astype(dtype)


def halves(n, dtype=np.float32):
    """Multiples of 0.5 in [-2, 2]: comparisons see many ties."""
    return (rng.integers(-4, 5, n) / 2).astype(dtype)


def booleans(n, dtype=None):
    return rng.random(n) < 0.5


def integers(n, dtype=np.int32):
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -1000), min(info.max, 1000), n, endpoint=True).astype(dtype)


def integral_exponents(n, dtype=np.float32):
    return rng.integers(-3, 4, n).astype(dtype)


# (expression, input makers): every supported op at least once, with the attributes it takes
FLOAT_CASES = [
    *[(f"{op}($0)", [normal]) for op in ("relu", "relu6", "hardswish", "hardsigmoid", "sigmoid",
                                         "tanh", "silu", "gelu", "exp", "erf", "neg", "abs")],
    ("gelu[approximate=tanh]($0)", [normal]),
    ("log($0)", [positive]), ("sqrt($0)", [positive]), ("rsqrt($0)", [positive]),
    ("reciprocal($0)", [away_from_zero]),
    ("clamp[min=-0.5,max=0.5]($0)", [normal]), ("clamp[min=0.0]($0)", [normal]),
    ("clamp[max=1.5]($0)", [normal]), ("clamp[min=-inf,max=2.0]($0)", [normal]),
    ("add($0,$1)", [normal, normal]), ("sub($0,$1)", [normal, normal]),
    ("mul($0,$1)", [normal, normal]), ("div($0,$1)", [normal, away_from_zero]),
    ("pow($0,$1)", [positive, halves]), ("pow($0,$1)", [normal, integral_exponents]),
    ("maximum($0,$1)", [halves, halves]), ("minimum($0,$1)", [halves, halves]),
    *[(f"cast[dtype=f32]({op}($0,$1))", [halves, halves]) for op in ("eq", "ne", "lt", "le", "gt", "ge")],
    ("where($0,$1,$2)", [booleans, normal, normal]),
    ("cast[dtype=f16]($0)", [normal]), ("cast[dtype=i32]($0)", [normal]),
]
EXACT_CASES = [
    *[(f"{op}($0,$1)", [halves, halves]) for op in ("eq", "ne", "lt", "le", "gt", "ge")],
    ("logical_and($0,$1)", [booleans, booleans]), ("logical_or($0,$1)", [booleans, booleans]),
    ("logical_not($0)", [booleans]), ("eq($0,$1)", [booleans, booleans]),
    ("cast[dtype=bool]($0)", [halves]), ("cast[dtype=f32]($0)", [booleans]),
    ("cast[dtype=i8]($0)", [booleans]),
]
INTEGER_CASES = [
    ("add($0,$1)", [integers, integers]), ("sub($0,$1)", [integers, integers]),
    ("mul($0,$1)", [integers, integers]), ("neg($0)", [integers]), ("abs($0)", [integers]),
    ("maximum($0,$1)", [integers, integers]), ("minimum($0,$1)", [integers, integers]),
    ("clamp[min=5.7,max=99.0]($0)", [integers]), ("lt($0,$1)", [integers, integers]),
    ("cast[dtype=i8]($0)", [integers]), ("cast[dtype=f32]($0)", [integers]),
    ("where($0,$1,$2)", [booleans, integers, integers]),
]


def case_ids(cases):
    return [f"{expr}:{','.join(make.__name__ for make in makers)}" for expr, makers in cases]


def arrays_for(makers, n, dtype):
    return [make(n, dtype) for make in makers]


def test_every_supported_op_is_an_elementwise_op_of_the_table_and_has_a_case():
    elementwise_ops = {name for name, op in OP_TABLE.items() if op.family == "elementwise"}
    assert SUPPORTED_OPS <= elementwise_ops
    assert elementwise_ops <= SUPPORTED_OPS, "elementwise ops without a Triton template"
    tested = {op for expr, makers in FLOAT_CASES + EXACT_CASES + INTEGER_CASES
              for op in parse_expr(expr, len(makers)).ops()}
    assert tested == SUPPORTED_OPS


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("expr, makers", FLOAT_CASES + EXACT_CASES, ids=case_ids(FLOAT_CASES + EXACT_CASES))
def test_float_ops_match_the_reference(expr, makers, dtype, device):
    check(expr, arrays_for(makers, 129, dtype), device)


@pytest.mark.parametrize("dtype", [np.int32, np.int8, np.uint8, np.int64], ids=["i32", "i8", "u8", "i64"])
@pytest.mark.parametrize("expr, makers", INTEGER_CASES, ids=case_ids(INTEGER_CASES))
def test_integer_ops_match_the_reference_exactly(expr, makers, dtype, device):
    check(expr, arrays_for(makers, 129, dtype), device)


@pytest.mark.parametrize("n", [1, 7, 129, 1000])
def test_odd_sizes(n, device):
    check("hardswish(mul($0,sigmoid($1)))", [normal(n), normal(n)], device)
    check("gelu[approximate=tanh](add($0,$1))", [normal(n, np.float16), normal(n, np.float16)], device)


@pytest.mark.parametrize("shapes", [
    [(5, 7), (1,)], [(5, 7), (7,)], [(5, 7), (5, 1)], [(5, 7), ()], [(1,), (5, 7)],
    [(2, 3, 65), (3, 1)], [(4, 1, 6), (1, 5, 1)], [(2, 1, 3, 1, 2, 1, 3), (4, 1, 2, 1, 2, 3)],
], ids=str)
def test_broadcasting(shapes, device):
    arrays = [normal(shape) for shape in shapes]
    check("mul($0,sigmoid($1))", arrays, device)
    check("clamp[min=0.0,max=6.0](add($0,$1))", [a.astype(np.float16) for a in arrays], device)


def test_strided_and_expanded_inputs_are_read_in_place(device):
    x = torch.from_numpy(normal((9, 33))).to(device)
    bias = torch.from_numpy(normal((9, 1))).to(device).expand(9, 33)
    transposed = x.t()
    out = fused_elementwise("add($0,$1)", [transposed, bias.t()])
    torch.testing.assert_close(out, transposed + bias.t(), rtol=0, atol=0)
    out = fused_elementwise("relu($0)", [x[:, ::2]])
    torch.testing.assert_close(out, torch.relu(x[:, ::2]), rtol=0, atol=0)


def test_nested_regions_from_the_fuse_pass(device):
    graph = Graph("ffn")
    x = graph.add_input("x", TensorType(DType.f32, (6, 40)))
    bias = graph.add_input("bias", TensorType(DType.f32, (40,)))
    gate = graph.add_input("gate", TensorType(DType.f32, (6, 40)))
    b = Builder(graph)
    hidden = b.gelu(b.add(x, bias), approximate="tanh")
    activated = b.mul(hidden, b.silu(gate))
    limited = b.clamp(b.sub(activated, b.exp(b.neg(b.abs(gate)))), min=-1.0, max=3.0)
    graph.set_outputs([b.where(b.gt(limited, b.tanh(x)), limited, b.sqrt(b.abs(x)))])
    fused = run_passes(graph, "fuse")
    regions = [n for n in fused.nodes if n.op == "fused_elementwise"]
    assert len(regions) == 2 and max(len(parse_expr(n.attrs["expr"], len(n.operands)).ops())
                                     for n in regions) >= 8
    feeds = {"x": normal((6, 40)), "bias": normal(40), "gate": normal((6, 40))}
    values = interpret(fused, feeds, keep_intermediates=True)["values"]
    for node in regions:
        operands = [feeds[v.name] if v.name in feeds else values[v] for v in node.operands]
        actual = fused_elementwise(node.attrs["expr"], [torch.from_numpy(a).to(device) for a in operands])
        np.testing.assert_allclose(actual.cpu().numpy(), values[node.results[0]], rtol=1e-5, atol=1e-5,
                                   err_msg=node.attrs["expr"])
    (expected,) = interpret(graph, feeds).values()
    np.testing.assert_allclose(values[fused.outputs[0]], expected, rtol=1e-5, atol=1e-5)


def test_a_region_is_rendered_once_and_its_source_is_introspectable():
    first = elementwise_kernel("mul($0,sigmoid($1))", [DType.f32, DType.f32], DType.f32)
    assert elementwise_kernel("mul($0,sigmoid($1))", ["f32", "f32"], "f32") is first
    source = render_elementwise("mul($0,sigmoid($1))", [DType.f32, DType.f32], DType.f32)
    function = getattr(first, "fn", first)
    assert inspect.getsource(function).strip() in source


def test_a_launch_plan_is_made_once_per_layout(device):
    x = torch.from_numpy(normal((3, 17))).to(device)
    fused_elementwise("neg(relu($0))", [x])
    plans = len(elementwise._plans)
    fused_elementwise("neg(relu($0))", [torch.zeros_like(x)])
    assert len(elementwise._plans) == plans
    fused_elementwise("neg(relu($0))", [x.t()])
    assert len(elementwise._plans) == plans + 1


def test_unsupported_ops_are_named(monkeypatch):
    monkeypatch.setattr(elementwise, "_TEMPLATES",
                        {k: v for k, v in elementwise._TEMPLATES.items() if k != "erf"})
    with pytest.raises(UnsupportedElementwise, match="op 'erf' has no Triton template"):
        render_elementwise("add(erf($0),$0)", [DType.f32], DType.f32)


def test_unsupported_dtype_combinations_are_listed_together():
    problems = unsupported("add(pow($0,$0),cast[dtype=i32](add($1,$1)))", ["i32", "bool"])
    assert sorted(problems) == ["op 'add' on bool operands has no Triton template",
                                "op 'pow' on i32 operands has no Triton template (floats only)"]
    with pytest.raises(UnsupportedElementwise, match="pow.*add|add.*pow"):
        render_elementwise("add(pow($0,$0),cast[dtype=i32](add($1,$1)))", ["i32", "bool"], "i32")


@pytest.mark.parametrize("expr, error", [
    ("relu($0);__import__('os')", "bad character"),
    ("__import__($0)", "not an elementwise op"),
    ("conv2d($0,$0)", "not an elementwise op"),
    ("relu( $0)", "not canonical"),
    ("clamp[min=0]($0)", "not canonical"),
    ("add($0,$1)", "reads \\$1 of 1 inputs"),
    ("add($0)", "takes 2 operands, got 1"),
    ("relu[alpha=1.0]($0)", "unknown attribute 'alpha'"),
    ("cast($0)", "attribute 'dtype' .* is required"),
    ("cast[dtype=f64]($0)", "unknown dtype"),
    ("gt($0,$0)", "gives bool, not the requested f32"),
    ("clamp[min=__import__]($0)", "could not convert|expected"),
    ("gelu[approximate=os]($0)", "approximate must be"),
    ("gelu[approximate=1.5]($0)", "attribute 'approximate' .*expected a string"),
])
def test_rendering_accepts_only_validated_expressions(expr, error):
    with pytest.raises(ValueError, match=error):
        render_elementwise(expr, [DType.f32], DType.f32)


def test_rendering_takes_text_only_and_checks_the_output_dtype():
    with pytest.raises(TypeError, match="expression text"):
        render_elementwise(parse_expr("relu($0)", 1), [DType.f32], DType.f32)
    with pytest.raises(ValueError, match="gives bool, not the requested f32"):
        render_elementwise("gt($0,$1)", [DType.f32, DType.f32], DType.f32)
    with pytest.raises(ValueError, match="clamp max=300.0 does not fit u8"):
        render_elementwise("clamp[max=300.0]($0)", [DType.u8], DType.u8)


def test_launcher_errors(device):
    x = torch.zeros(4, 3, device=device)
    with pytest.raises(ValueError, match="non-empty list"):
        fused_elementwise("relu($0)", [])
    with pytest.raises(ValueError, match="input 1 is a ndarray"):
        fused_elementwise("add($0,$1)", [x, np.zeros(3)])
    with pytest.raises(ValueError, match="dtype torch.float64"):
        fused_elementwise("relu($0)", [x.double()])
    with pytest.raises(ValueError, match="must share one dtype"):
        fused_elementwise("add($0,$1)", [x, x.half()])
    with pytest.raises(ValueError, match="do not broadcast"):
        fused_elementwise("add($0,$1)", [x, torch.zeros(4, device=device)])
    with pytest.raises(ValueError, match="gives f32, not the requested f16"):
        fused_elementwise("relu($0)", [x], out_dtype=torch.float16)
    assert fused_elementwise("relu($0)", [torch.zeros(0, 3, device=device)]).shape == (0, 3)


def test_inputs_must_all_be_used():
    with pytest.raises(ValueError, match=r"uses inputs \[0\], has 2"):
        render_elementwise("relu($0)", [DType.f32, DType.f32], DType.f32)


# ---- the module's own rules against the op table --------------------------------------------------------
ELEMENTWISE_OPS = sorted(name for name, op in OP_TABLE.items() if op.family == "elementwise")
DTYPES = [str(d) for d in DType]


def table_dtype(op_name: str, attrs: dict, arg_dtypes: list[str]):
    """The op table's result dtype (a name), or None where its infer rejects the operands."""
    op = get_op(op_name)
    try:
        result = op.infer([TensorType(DType.parse(d), (2,)) for d in arg_dtypes], op.normalize_attrs(attrs))
    except ValueError:
        return None
    return str(result.dtype)


def module_dtype(op: str, attrs: dict, arg_dtypes: list[str]):
    try:
        return elementwise.result_dtype(op, attrs, arg_dtypes)
    except ValueError:
        return None


@pytest.mark.parametrize("op", ELEMENTWISE_OPS)
def test_dtype_rules_match_the_op_table_for_every_dtype_combination(op):
    arity = len(get_op(op).operands)
    attr_choices = [{"dtype": d} for d in DTYPES] if op == "cast" else [{}]
    for attrs in attr_choices:
        for arg_dtypes in itertools.product(DTYPES, repeat=arity):
            expected = table_dtype(op, dict(attrs), list(arg_dtypes))
            assert module_dtype(op, dict(attrs), list(arg_dtypes)) == expected, (op, attrs, arg_dtypes)


def test_attribute_schemas_and_operand_counts_match_the_op_table():
    for name in ELEMENTWISE_OPS:
        op = get_op(name)
        assert elementwise._ARITY[name] == len(op.operands), name
        assert elementwise._ATTR_KINDS.get(name, {}) == {k: a.kind for k, a in op.attrs.items()}, name
    assert set(elementwise._ARITY) == set(ELEMENTWISE_OPS)


# Expressions over inputs of the given dtypes, valid and not: the module accepts exactly those the
# op table's fused_elementwise accepts, with the same result dtype. (One deliberate difference: a
# number where a string attribute belongs, gelu[approximate=1.5], fails validation here and only
# rendering there; see test_rendering_accepts_only_validated_expressions.)
REGIONS = [
    ("relu($0)", ["f32"]), ("relu($0)", ["i32"]), ("neg($0)", ["i8"]), ("abs($0)", ["bool"]),
    ("add($0,$1)", ["f16", "f16"]), ("add($0,$1)", ["f16", "f32"]), ("div($0,$1)", ["i32", "i32"]),
    ("where($0,$1,$2)", ["bool", "f32", "f32"]), ("where($0,$1,$2)", ["f32", "f32", "f32"]),
    ("where($0,$1,$2)", ["bool", "f32", "i32"]), ("logical_and($0,$1)", ["bool", "bool"]),
    ("logical_or($0,$1)", ["bool", "f32"]), ("logical_not($0)", ["i8"]), ("lt($0,$1)", ["u8", "u8"]),
    ("cast[dtype=bf16](gt($0,$1))", ["f32", "f32"]), ("cast[dtype=i64]($0)", ["bool"]),
    ("clamp[min=0.0,max=6.0](add($0,$1))", ["f16", "f16"]), ("clamp[max=6.0,min=0.0]($0)", ["f32"]),
    ("clamp[min=0.0,max=none]($0)", ["f32"]), ("clamp[min=none]($0)", ["f32"]),
    ("clamp[min=0]($0)", ["f32"]), ("clamp[min=-inf]($0)", ["f32"]), ("clamp[min=1e-05]($0)", ["f32"]),
    ("clamp[min=nan]($0)", ["f32"]), ("clamp[min=abc]($0)", ["f32"]), ("clamp[min=1.5,min=2.5]($0)", ["f32"]),
    ("gelu[approximate=tanh]($0)", ["f32"]), ("gelu[approximate=none]($0)", ["f32"]),
    ("gelu[approximate=tanh](add($0,$1))", ["bf16", "bf16"]),
    ("cast[dtype=f32]($0)", ["f32"]), ("cast($0)", ["f32"]), ("cast[dtype=none]($0)", ["f32"]),
    ("cast[dtype=f64]($0)", ["f32"]), ("cast[dtype=1]($0)", ["f32"]), ("relu[x=1]($0)", ["f32"]),
    ("add($0)", ["f32"]), ("add($0,$0,$0)", ["f32"]), ("relu($0,$0)", ["f32"]), ("relu($1)", ["f32", "f32"]),
    ("relu( $0)", ["f32"]), ("add($1,$0)", ["f32", "f32"]), ("mul($0,sigmoid($0))", ["f32"]),
    ("conv2d($0,$0)", ["f32"]), ("relu($0", ["f32"]), ("relu[]($0)", ["f32"]),
]


@pytest.mark.parametrize("expr, dtypes", REGIONS, ids=[f"{e}:{','.join(d)}" for e, d in REGIONS])
def test_validation_and_typing_match_the_op_table(expr, dtypes):
    op = get_op("fused_elementwise")
    try:
        expected = str(op.infer([TensorType(DType.parse(d), (3,)) for d in dtypes], {"expr": expr}).dtype)
    except ValueError:
        expected = None
    try:
        actual = elementwise._validated(expr, dtypes)[2]
    except ValueError:
        actual = None
    assert actual == expected


def test_the_module_imports_without_the_compiler():
    """The CUDA runtime imports this module; it must not pull in the compiler or its dependencies."""
    code = (
        "import sys\n"
        "from nimbus.kernels.triton import elementwise\n"
        "region = 'clamp[min=0.0](add($0,cast[dtype=f32]($1)))'\n"
        "elementwise.render_elementwise(region, ['f32', 'i32'], 'f32')\n"
        "assert elementwise.unsupported('gelu[approximate=tanh]($0)', ['f16']) == []\n"
        "banned = ('nimbus.compiler', 'nimbus.passes', 'lark', 'sympy', 'scipy')\n"
        "print(sorted(m for m in sys.modules if any(m == b or m.startswith(b + '.') for b in banned)))\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
