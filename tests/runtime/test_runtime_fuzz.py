"""Random valid graphs through the whole CPU path: the default pipeline (float, or quantized
with calibration in one of the quantize pass's modes), lowering into an artifact, loading it
and running the Session (its executor, then the native plan it builds for those shapes),
against the interpreter on the same optimized graph. This found a constant name that made an
unreadable artifact, integer layers whose scales overflowed float32, convolutions that dropped
NaN from padding times an inf weight, and a quantize placed after one of its readers."""

from __future__ import annotations

import warnings

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import nimbus
from nimbus.compiler.interpreter import interpret
from nimbus.compiler.lowering import PreflightError, artifact_bytes
from nimbus.passes import DEFAULT_OPTIMIZATION, PassManager
from random_graphs import BINDINGS, graphs, random_inputs

# Constants stay below this in magnitude (inf and NaN are kept): beyond it float32 sums and
# squares overflow where the interpreter's float64 ones do not, which is float32's nature, not
# a fault of the runtime.
LARGEST_CONSTANT = 1e4
# Results larger than this are not compared, for the same reason.
LARGEST_COMPARED = 1e30
OTHER_BINDINGS = {name: size + 1 for name, size in BINDINGS.items()}
# None, and the quantize pass's modes and settings
QUANTIZATIONS = ["", "", ",quantize", ",quantize{activations=i8}",
                 ",quantize{calibration=entropy}", ",quantize{mode=dynamic}",
                 ",quantize{mode=weight-only}"]


def assert_close_where_defined(actual: np.ndarray, expected: np.ndarray, name: str) -> None:
    """Same layout; where the reference is inf or NaN the result is too (an overflowing float32
    sum may give NaN for the reference's inf); elsewhere within 1e-5 of max |reference|."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, name
    if expected.dtype.kind != "f":
        np.testing.assert_array_equal(actual, expected, err_msg=name)
        return
    got, want = actual.astype(np.float64), expected.astype(np.float64)
    special = ~np.isfinite(want)
    assert not np.isfinite(got[special]).any(), f"{name}: an inf or NaN became finite"
    compared = ~special & (np.abs(want) <= LARGEST_COMPARED)
    tolerance = 1e-5 * max(1.0, np.abs(want[compared]).max(initial=0.0))
    error = np.abs(got[compared] - want[compared]).max(initial=0.0)
    assert error <= tolerance, f"{name}: |error| {error:.3g} > {tolerance:.3g}"


def moderate_constants(graph) -> bool:
    for constant in graph.constants.values():
        if constant.data.dtype.kind == "f":
            values = constant.data.astype(np.float64)
            if np.abs(values[np.isfinite(values)]).max(initial=0.0) > LARGEST_CONSTANT:
                return False
    return True


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.filter_too_much])
@given(graph=graphs(), seed=st.integers(0, 2**32 - 2), quantization=st.sampled_from(QUANTIZATIONS),
       threads=st.sampled_from([1, 2, 3]))
def test_sessions_on_random_graphs_agree_with_the_interpreter(graph, seed, quantization, threads):
    assume(moderate_constants(graph))
    feeds = [random_inputs(graph, seed), random_inputs(graph, seed + 1)]
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # nan and inf constants are allowed
        pipeline = DEFAULT_OPTIMIZATION + quantization
        optimized = PassManager(pipeline, data={"calibration": feeds}).run(graph.copy())
        try:
            data = artifact_bytes(optimized)
        except PreflightError:  # an op without a CPU kernel for its dtype (bf16): named there
            return
        session = nimbus.load(data, threads=threads)
        # Other sizes of the symbolic dims too: the same session plans each shape on its own.
        for inputs in (feeds[0], random_inputs(graph, seed, OTHER_BINDINGS), feeds[0]):
            expected = interpret(optimized, inputs)
            for _ in range(2):  # the first run on the executor, the second on the native plan
                actual = session.run(inputs)
                for name, array in expected.items():
                    assert_close_where_defined(actual[name], array, name)
