"""Triton kernels run on the CPU through Triton's interpreter unless a CUDA device is present.

The variable must be set before any kernel module is imported: `triton.jit` reads it when it
decorates a function.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def device() -> str:
    """Where kernel inputs live: the GPU when there is one, else the CPU (interpreter)."""
    return DEVICE
