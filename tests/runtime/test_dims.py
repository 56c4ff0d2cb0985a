"""Run-time dims: the runtime's evaluator agrees with the compiler's sympy dims on every
expression the compiler writes, and refuses anything that is not a dimension expression."""

import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st
from nimbus.compiler.dims import evaluate, floordiv, format_dim, simplify, symbol
from nimbus.runtime.dims import DimError, bind_dim, evaluate_dim

N, S = symbol("N"), symbol("S")


@st.composite
def expressions(draw, depth=3):
    if depth == 0 or draw(st.booleans()):
        return draw(st.sampled_from([N, S, sympy.Integer(draw(st.integers(1, 9)))]))
    a, b = draw(expressions(depth=depth - 1)), draw(expressions(depth=depth - 1))
    kind = draw(st.sampled_from(["add", "mul", "floordiv", "sub"]))
    if kind == "floordiv":
        return sympy.sympify(floordiv(a, draw(st.integers(1, 5))))
    return {"add": a + b, "mul": a * b, "sub": a - b}[kind]


@settings(max_examples=200, deadline=None)
@given(expr=expressions(), n=st.integers(1, 64), s=st.integers(1, 64))
def test_agrees_with_the_compiler_on_written_dims(expr, n, s):
    dim = simplify(expr)
    text = dim if isinstance(dim, int) else format_dim(dim)
    assert evaluate_dim(text, {"N": n, "S": s}) == evaluate(dim, {"N": n, "S": s})


def test_binding_from_input_shapes():
    bindings = {}
    assert bind_dim("N", 8, bindings) is None and bindings == {"N": 8}
    assert bind_dim("4*N", 32, bindings) is None
    assert bind_dim("4*N", 31, bindings) == "expected 4*N=32, got 31"
    assert bind_dim(3, 4, bindings) == "expected 3, got 4"
    assert "needs a value for S" in bind_dim("S+1", 2, {})


@pytest.mark.parametrize("text", ["__import__('os').system('true')", "N.real", "(lambda: 1)()",
                                  "N if N else 1", "N**1000", "[N]", "floor(N, 2)", "N/0", "x" * 300,
                                  "open('f')", "N[0]"])
def test_anything_but_a_dim_expression_is_refused(text):
    with pytest.raises(DimError):
        evaluate_dim(text, {"N": 2})


def test_fractional_results_are_refused():
    with pytest.raises(DimError, match="not an integer"):
        evaluate_dim("N/2", {"N": 3})
    assert evaluate_dim("floor(N/2)", {"N": 3}) == 1 and evaluate_dim("ceiling(N/2)", {"N": 3}) == 2
