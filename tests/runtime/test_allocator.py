"""The first session tunes glibc's malloc to keep freed activation memory (see
nimbus.runtime.allocator); NIMBUS_MALLOC_TUNING=0 leaves it alone. The arrays of 1 KiB or more
that a run makes start on a cache line, and the caller's numpy allocator is the same after the
run."""

import gc
import os
import platform
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from torch import nn

import nimbus
from nimbus.runtime.session import SessionError
from nimbus.runtime.allocator import CACHE_LINE_ALLOCATOR, set_array_allocator

CODE = ("import torch, nimbus, nimbus.runtime.allocator as a\n"
        "data = nimbus.compile(torch.nn.Linear(2, 2).eval(), (torch.zeros(1, 2),)).data\n"
        "nimbus.load(data), nimbus.load(data)\n"
        "info = a.keep_freed_memory.cache_info()\n"
        "print(a.keep_freed_memory(), info.misses, info.hits)")


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
                    reason="mallopt is glibc's")
@pytest.mark.parametrize("setting, expected", [("1", "True"), ("0", "False")])
def test_tuning_runs_once_and_can_be_turned_off(setting, expected):
    env = {**os.environ, "NIMBUS_MALLOC_TUNING": setting}
    out = subprocess.run([sys.executable, "-c", CODE], env=env, check=True, capture_output=True,
                         text=True).stdout.split()
    assert out == [expected, "1", "1"]  # the first session tuned it, the second did not again


# ---- the arrays of a run start on a cache line ------------------------------------------------

def handler_name() -> str:
    """The name of numpy's allocator for new arrays in this thread."""
    return np._core.multiarray.get_handler_name()


def aligned(array: np.ndarray) -> bool:
    """Whether an array of 1 KiB or more starts on a cache line (smaller ones need not)."""
    return array.nbytes < 1024 or array.ctypes.data % 64 == 0


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.float32, np.int64])
def test_cache_line_allocator_aligns_fills_resizes_and_frees(dtype):
    default = handler_name()
    previous = set_array_allocator(CACHE_LINE_ALLOCATOR)
    try:
        assert handler_name() == "nimbus_cache_line_allocator"
        empties = [np.empty(size, dtype) for size in (0, 1, 3, 15, 63, 64, 65, 1023, 1024,
                                                      1025, 4099)]
        zeros = np.zeros((37, 111), dtype)
        grown = np.arange(50).astype(dtype)
        grown.resize(3001, refcheck=False)  # numpy reallocates in place: data kept, rest zero
        shrunk = np.arange(3001).astype(dtype)
        shrunk.resize(7, refcheck=False)
    finally:
        assert set_array_allocator(previous) is CACHE_LINE_ALLOCATOR
    assert handler_name() == default
    assert all(aligned(array) for array in [*empties, zeros, grown, shrunk])
    assert sum(array.nbytes >= 1024 for array in [*empties, zeros, grown]) >= 5
    assert not zeros.any()
    np.testing.assert_array_equal(grown[:50], np.arange(50).astype(dtype))
    assert not grown[50:].any()
    np.testing.assert_array_equal(shrunk, np.arange(7).astype(dtype))
    # Arrays made in the scope are freed by the allocator that made them, after it ended.
    assert np._core.multiarray.get_handler_name(zeros) == "nimbus_cache_line_allocator"
    del empties, zeros, grown, shrunk
    gc.collect()


@pytest.fixture(scope="module")
def conv_session():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), nn.ReLU(), nn.Conv2d(24, 5, 1)).eval()
    return nimbus.compile(model, (torch.randn(1, 3, 19, 17),)).session()


def test_a_runs_arrays_start_on_a_cache_line_and_the_callers_allocator_is_restored(conv_session):
    x = np.random.default_rng(0).standard_normal((1, 3, 19, 17)).astype(np.float32)
    name = conv_session.inputs[0].name
    default = handler_name()
    first = conv_session.run({name: x})  # the executor, tracing the native plan
    again = conv_session.run({name: x})  # the native plan
    plan = conv_session._native_plans[(x.shape,)]
    assert plan is not None
    assert all(aligned(array) for array in [*first.values(), *again.values(), *plan.inputs,
                                            *plan.outputs])
    assert handler_name() == default
    with pytest.raises(SessionError):
        conv_session.run({name: x[:, :2]})
    assert handler_name() == default
    conv_session.profile({name: x}, repeats=2)
    assert handler_name() == default


def test_a_run_in_another_thread_aligns_its_arrays_and_restores_that_threads_allocator(
        conv_session):
    x = np.random.default_rng(1).standard_normal((2, 3, 19, 17)).astype(np.float32)
    seen = {}

    def run():
        seen["outputs"] = conv_session.run({conv_session.inputs[0].name: x})
        seen["after"] = handler_name()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert all(aligned(array) for array in seen["outputs"].values())
    assert seen["after"] == "default_allocator"
