"""The default pipeline over random valid graphs: it never fails, the result verifies, and the
outputs are unchanged (a relative tolerance, since fusion may reorder float arithmetic)."""

from __future__ import annotations

import warnings

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nimbus.compiler.interpreter import interpret
from nimbus.passes import DEFAULT_OPTIMIZATION, PassManager
from random_graphs import graphs, random_inputs


def assert_close_with_specials(actual: np.ndarray, expected: np.ndarray, name: str) -> None:
    """Same layout, same non-finite positions, finite values within 1e-5 relative."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, name
    if expected.dtype.kind != "f":
        assert np.array_equal(actual, expected), name
        return
    wide_actual, wide_expected = actual.astype(np.float64), expected.astype(np.float64)
    finite = np.isfinite(wide_expected)
    assert np.array_equal(np.isnan(wide_actual), np.isnan(wide_expected)), name
    assert np.array_equal(wide_actual[~finite & ~np.isnan(wide_expected)],
                          wide_expected[~finite & ~np.isnan(wide_expected)]), name
    tolerance = 1e-5 * max(1.0, np.abs(wide_expected[finite]).max(initial=0.0))
    assert np.all(np.abs(wide_actual[finite] - wide_expected[finite]) <= tolerance), name


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(graph=graphs(), seed=st.integers(0, 2**32 - 1))
def test_default_pipeline_on_random_graphs(graph, seed):
    optimized = PassManager(DEFAULT_OPTIMIZATION, verify=True).run(graph.copy())
    inputs = random_inputs(graph, seed)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # nan and inf constants are allowed
        expected = interpret(graph, inputs)
        actual = interpret(optimized, inputs)
    assert len(optimized.nodes) <= len(graph.nodes)
    for name, array in expected.items():
        assert_close_with_specials(actual[name], array, name)


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(graph=graphs(), seed=st.integers(0, 2**32 - 2))
def test_quantize_handles_random_graphs(graph, seed):
    """Whatever the graph (non-finite weights and activations included), quantize either
    quantizes a layer or keeps it in float with a reason; the result verifies and runs."""
    feeds = [random_inputs(graph, seed), random_inputs(graph, seed + 1)]
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        pipeline = DEFAULT_OPTIMIZATION + ",quantize"
        quantized = PassManager(pipeline, data={"calibration": feeds}).run(graph.copy())
        outputs = interpret(quantized, feeds[0])
    assert set(outputs) == set(graph.output_names)
