"""Comparison helpers of the Triton kernel tests against the op table's numpy references.

Importable from the test modules of this folder: conftest.py puts the folder on sys.path.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def to_numpy(tensor: torch.Tensor | None) -> np.ndarray | None:
    """A tensor as a numpy array for the references; bfloat16 (which numpy lacks) as float32
    holding the same values."""
    if tensor is None:
        return None
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.cpu().numpy()


def close_within(tolerance: dict[torch.dtype, float],
                 ) -> Callable[[torch.Tensor, np.ndarray, torch.dtype], None]:
    """assert_close(actual, expected, dtype): actual has dtype and expected's shape, is finite, and
    max|actual - expected| / max|expected| <= tolerance[dtype]."""

    def assert_close(actual: torch.Tensor, expected: np.ndarray, dtype: torch.dtype) -> None:
        assert actual.dtype == dtype
        assert tuple(actual.shape) == expected.shape
        actual64 = actual.double().cpu().numpy()
        expected64 = expected.astype(np.float64)
        assert np.isfinite(actual64).all()
        error = np.abs(actual64 - expected64).max() / max(np.abs(expected64).max(), 1e-30)
        assert error <= tolerance[dtype], f"relative error {error:.3g} > {tolerance[dtype]}"

    return assert_close
