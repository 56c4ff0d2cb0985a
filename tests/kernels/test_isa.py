"""The run-time choice of ISA path: detection, forcing by argument and by NIMBUS_ISA."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from nimbus.runtime import available_isas, pack_weights, selected_isa

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
    assert pack_weights(np.zeros((1, 1), dtype=np.int8)).isa == available_isas()[0]


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
