"""Triton kernels run on the CPU through Triton's interpreter unless a CUDA device is present.

The variable must be set before any kernel module is imported: `triton.jit` reads it when it
decorates a function.
"""

import os
import sys
from pathlib import Path

import pytest
import torch

# The tests here import their shared helpers (triton_checks.py) from this folder.
sys.path.insert(0, str(Path(__file__).resolve().parent))

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def device() -> str:
    """Where kernel inputs live: the GPU when there is one, else the CPU (interpreter)."""
    return DEVICE
