"""Run a test file again under every other ISA path this machine has (NIMBUS_ISA), for kernels
that follow the process-wide path rather than taking an `isa=` argument."""

import os
import subprocess
import sys

from nimbus.runtime import _kernels

OTHER_ISAS = [isa for isa in _kernels.available_isas() if isa != _kernels.selected_isa()]


def rerun_under(path: str, isa: str, test_name: str) -> None:
    """Run `path`'s tests, except `test_name` (the caller), with NIMBUS_ISA=`isa`."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", path,
         "-k", f"not {test_name}"],
        check=False, capture_output=True, text=True, env={**os.environ, "NIMBUS_ISA": isa})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
