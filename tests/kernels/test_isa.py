"""The run-time choice of ISA path: detection, forcing by argument and by NIMBUS_ISA."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from nimbus.runtime import available_isas, pack_conv_weights, pack_weights, selected_isa
from nimbus.runtime._kernels import gemm_isa, multiply_peak_gops

KNOWN_ISAS = ["amx", "avx512_vnni", "avx2", "portable"]

CHILD_SCRIPT = """
import numpy as np
from nimbus.runtime import pack_weights, qgemm_s32, selected_isa

print(selected_isa(), pack_weights(np.ones((2, 3), dtype=np.int8)).isa)
print(qgemm_s32(np.ones((1, 3), dtype=np.uint8), pack_weights(np.ones((2, 3), dtype=np.int8))))
"""


def run_child(isa_variable: str) -> subprocess.CompletedProcess:
    environment = dict(os.environ, NIMBUS_ISA=isa_variable)
    return subprocess.run([sys.executable, "-c", CHILD_SCRIPT], env=environment,
                          capture_output=True, text=True)


def test_available_paths_are_known_and_end_with_portable():
    isas = available_isas()
    assert isas[-1] == "portable"
    assert isas == [isa for isa in KNOWN_ISAS if isa in isas]


def test_the_fastest_path_is_selected_without_the_variable():
    if "NIMBUS_ISA" in os.environ:
        pytest.skip("NIMBUS_ISA is set for this test session")
    assert selected_isa() == available_isas()[0]
    assert pack_weights(np.zeros((64, 512), dtype=np.int8)).isa == available_isas()[0]


@pytest.mark.parametrize("depth", [1, 16, 63, 64, 96, 97, 144, 147, 160, 192, 320, 4100])
@pytest.mark.parametrize("outputs", [1, 24, 31, 32, 96])
def test_shallow_or_narrow_layers_leave_a_detected_amx_for_vnni(depth, outputs):
    """AMX, when detection chose it, takes weights of depth 64 and more that it pads by at most a
    quarter, for 32 outputs or more; the others run on AVX512-VNNI. A path that NIMBUS_ISA names
    takes them all."""
    selected = selected_isa()
    padded = -(-depth // 64) * 64
    amx_fits = depth >= 64 and outputs >= 32 and 4 * (padded - depth) <= padded
    detected_amx = selected == "amx" and not os.environ.get("NIMBUS_ISA")
    expected = "avx512_vnni" if detected_amx and not amx_fits else selected
    assert gemm_isa(depth, outputs) == expected
    assert pack_weights(np.zeros((outputs, depth), dtype=np.int8)).isa == expected
    assert pack_conv_weights(np.zeros((outputs, depth, 1, 1), dtype=np.int8)).isa == expected
    if depth % 9 == 0:
        conv = pack_conv_weights(np.zeros((outputs, depth // 9, 3, 3), dtype=np.int8))
        assert conv.isa == expected
    grouped = pack_conv_weights(np.zeros((2 * outputs, depth, 1, 1), dtype=np.int8), groups=2)
    assert grouped.isa == expected


@pytest.mark.parametrize("isa", available_isas())
def test_the_variable_forces_a_path(isa):
    child = run_child(isa)
    assert child.returncode == 0, child.stderr
    assert child.stdout.split("\n")[:2] == [f"{isa} {isa}", "[[3 3]]"]


def test_an_unknown_path_in_the_variable_is_an_error():
    child = run_child("sse9")
    assert child.returncode != 0
    assert "ValueError: NIMBUS_ISA: unknown ISA path 'sse9'; the paths are" in child.stderr


def test_forcing_an_unsupported_path_is_an_error():
    unsupported = [isa for isa in KNOWN_ISAS if isa not in available_isas()]
    if not unsupported:
        pytest.skip("this machine runs every known ISA path")
    for isa in unsupported:
        message = f"ISA path '{isa}' is not supported by this CPU and operating system; available:"
        with pytest.raises(RuntimeError, match=re.escape(message)):
            pack_weights(np.zeros((1, 1), dtype=np.int8), isa)
        child = run_child(isa)
        assert child.returncode != 0
        assert f"RuntimeError: NIMBUS_ISA: {message}" in child.stderr


def test_the_emulated_amx_path_runs_only_when_named():
    assert "amx_emulated" not in available_isas()
    if "avx512_vnni" not in available_isas():
        pytest.skip("the emulated AMX path needs AVX512-VNNI")
    child = run_child("amx_emulated")
    assert child.returncode == 0, child.stderr
    assert child.stdout.split("\n")[:2] == ["amx_emulated amx_emulated", "[[3 3]]"]


@pytest.mark.parametrize("isa", available_isas())
def test_every_path_measures_its_multiply_peak(isa):
    """The benchmarks' peak: a positive rate on one thread, and two threads do not measure less
    than half of it (the pool may give the second thread or not)."""
    one = multiply_peak_gops(isa)
    assert one > 0
    assert multiply_peak_gops(isa, threads=2) > one / 2


def test_the_emulated_amx_path_has_no_peak():
    if "avx512_vnni" not in available_isas():
        pytest.skip("the emulated AMX path needs AVX512-VNNI")
    with pytest.raises(ValueError, match="the emulated AMX path has no peak"):
        multiply_peak_gops("amx_emulated")
