"""benchmarks/zoo.py runs in an environment with torchvision (its docstring says how); without
it, it says so and exits, rather than failing on an import."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ZOO = Path(__file__).resolve().parent.parent / "benchmarks" / "zoo.py"


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None,
                    reason="torchvision is installed: the benchmark would run")
def test_without_torchvision_it_names_what_it_needs():
    result = subprocess.run([sys.executable, str(ZOO), "--models", "resnet50"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "zoo.py needs torchvision" in result.stderr
    assert "docstring" in result.stderr
