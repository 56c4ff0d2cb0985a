"""The first session tunes glibc's malloc to keep freed activation memory (see
nimbus.runtime.allocator); NIMBUS_MALLOC_TUNING=0 leaves it alone."""

import os
import platform
import subprocess
import sys

import pytest

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
