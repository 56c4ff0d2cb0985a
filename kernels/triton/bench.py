"""The benchmark hook each kernel module offers: `benchmark_cases()` returns BenchCases at
realistic sizes on the current CUDA device, which benchmarks/gpu_check.py checks and times.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class BenchCase:
    """One kernel at one shape, with the peers it is timed against."""

    name: str                                   # kernel and shape, e.g. "qgemm u8 256x4096x4096"
    run: Callable[[], object]                   # the nimbus kernel, inputs already on the device
    check: Callable[[], tuple[float, float]]    # (error, tolerance) against the reference
    flops: float                                # useful operations of one run
    peers: dict[str, Callable[[], object]] = field(default_factory=dict)  # name -> same work
    bytes: float = 0.0                          # fewest bytes one run must move


def relative_error(actual, expected) -> float:
    """||actual - expected|| / ||expected|| in float64 (0 when both are zero)."""
    import torch

    a, e = actual.double().cpu(), expected.double().cpu()
    if not torch.isfinite(a).all():
        return float("inf")
    norm = torch.linalg.vector_norm(e).item()
    diff = torch.linalg.vector_norm(a - e).item()
    return diff / norm if norm else diff


def mismatches(actual, expected) -> float:
    """Number of elements that differ (integer kernels must give 0)."""
    import torch

    return float((torch.as_tensor(actual).cpu() != torch.as_tensor(expected).cpu()).sum().item())
