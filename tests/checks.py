"""Comparison helpers shared by the tests: shape and dtype first, with a named message, then
values (bit-exact for integers and bools, a relative tolerance for floats); and concurrent
calls."""

from __future__ import annotations

import threading

import numpy as np


def relative_error(actual, expected) -> float:
    """max |actual - expected| / max |expected| (0 when both are all zero)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    scale = np.max(np.abs(expected)) if expected.size else 0.0
    error = np.max(np.abs(actual - expected)) if expected.size else 0.0
    return float(error / scale) if scale > 0 else float(error)


def assert_same_layout(actual, expected, name: str = "result") -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != expected {expected.shape}"
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != expected {expected.dtype}"


def assert_matches(actual, expected, name: str = "result", rtol: float = 1e-5) -> float:
    """Layout must match exactly; floats within ``rtol`` relative error, others bit-exact.

    Returns the relative error so callers can report it.
    """
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert_same_layout(actual, expected, name)
    if expected.dtype.kind in "fV":
        finite = np.isfinite(expected.astype(np.float64))
        assert np.array_equal(finite, np.isfinite(actual.astype(np.float64))), \
            f"{name}: non-finite values differ"
        error = relative_error(actual[finite], expected[finite])
        assert error <= rtol, f"{name}: relative error {error:.3g} > {rtol:g}"
        return error
    mismatches = np.count_nonzero(actual != expected)
    assert mismatches == 0, f"{name}: {mismatches} of {expected.size} values differ (bit-exact check)"
    return 0.0


def run_concurrently(worker, count: int) -> None:
    """Calls worker(0) ... worker(count - 1) each on its own thread and waits for all."""
    threads = [threading.Thread(target=worker, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def float_path(isa: str) -> str:
    """The path that float kernels packed for `isa` run: the AMX paths run theirs on
    AVX512-VNNI."""
    return "avx512_vnni" if isa.startswith("amx") else isa
