"""Every Triton kernel compiles for an H100/H200 (sm_90) without a GPU, under the installed
Triton and under the oldest one the `cuda` extra allows (what lent GPU machines have run).

The kernel tests run again in a subprocess with compile_for_gpu.py as a plugin: each launch
compiles to machine code instead of running in the interpreter, which never meets what the GPU
compiler refuses. The tests' own checks fail there (nothing is computed); this test asserts
that Triton raised nothing and that every kernel of the library was compiled.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
# scripts/test.sh installs the oldest allowed Triton here (pip --target), beside the venv's own.
OLDEST_TRITON = ROOT / ".venv" / "triton-oldest"


@pytest.mark.parametrize("triton_build", ["installed", "oldest"])
def test_every_kernel_compiles_for_sm90(triton_build, tmp_path):
    paths = [str(HERE)]
    if triton_build == "oldest":
        if not (OLDEST_TRITON / "triton").is_dir():
            pytest.skip(f"no Triton in {OLDEST_TRITON}: scripts/test.sh installs it")
        paths.insert(0, str(OLDEST_TRITON))
    report_path = tmp_path / "report.json"
    env = {**os.environ, "NIMBUS_COMPILE_REPORT": str(report_path),
           "TRITON_CACHE_DIR": str(tmp_path / "triton-cache"),
           "PYTHONPATH": os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")])}
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--tb=no", "-p", "no:cacheprovider",
         "-p", "compile_for_gpu", str(HERE), "--ignore", __file__],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert report_path.exists(), completed.stdout[-3000:] + completed.stderr[-3000:]
    report = json.loads(report_path.read_text())
    if triton_build == "oldest":
        assert report["triton"].split(".")[:2] == oldest_allowed_triton().split(".")[:2]
    assert report["errors"] == [], "\n\n".join(
        f"{e['test']}: {e['type']}\n{e['message']}" for e in report["errors"][:3])
    assert report["not_compiled"] == [], f"no kernel test launched {report['not_compiled']}"
    assert len(report["compiled"]) >= 10


def oldest_allowed_triton() -> str:
    """The lower bound of the Triton requirement in pyproject.toml (`triton>=X`)."""
    import re

    return re.search(r'"triton>=([\d.]+)', (ROOT / "pyproject.toml").read_text()).group(1)
