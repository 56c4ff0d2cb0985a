"""Which ops of a plan the CUDA backend runs, and with what (pure data: no torch, no triton).

Every op runs one of three ways:

- ``triton:<module>.<launcher>``: a kernel of the package's Triton library
  (``nimbus.kernels.triton``), specialized by the step's data (shapes, dtypes, epilogue, tuned
  configs). Single elementwise ops run as one-op regions of the fused elementwise template.
- ``torch``, layout ops (`LAYOUT_OPS`): pure data movement (reshape, permute, slice, concat,
  split, expand, pad, gather, full). They run as torch tensor operations on the device; most
  are views. This is the backend's policy, as in any GPU runtime: writing a Triton kernel for a
  copy gains nothing.
- ``torch``, fallbacks (`TORCH_FALLBACK_OPS`): compute ops that have no Triton kernel yet
  (pooling, batch_norm, matmul, reductions, resize). They run as torch ops on the device,
  reproducing the CPU backend's arithmetic (integer results bit for bit: pooling takes exact
  maxima).
  They are listed by `CudaSession.kernel_table()` so that nothing is silently slow.

Any other op without a Triton kernel (`REFUSED_OPS`: qmatmul, qattention, dynamic_qlinear)
makes the session refuse the plan when it loads, with an error that lists every such op and its
source lines.
"""

from __future__ import annotations

LAYOUT_OPS = frozenset({"reshape", "permute", "slice", "concat", "split", "expand", "pad", "gather",
                        "full"})
TORCH_FALLBACK_OPS = frozenset({"max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "batch_norm",
                                "matmul", "fused_matmul", "mean", "sum", "reduce_max", "reduce_min",
                                "resize"})
REFUSED_OPS = frozenset({"qmatmul", "qattention", "dynamic_qlinear"})


class CudaUnsupportedError(ValueError):
    """The plan holds ops (or op variants) the CUDA backend cannot run; names each with its
    source lines and the reason."""

    def __init__(self, missing: dict[str, dict[str, list[str]]]):
        lines = []
        for op in sorted(missing):
            for reason, sources in sorted(missing[op].items()):
                where = ", ".join(sorted(set(sources))[:5]) or "no source"
                lines.append(f"  {op}: {reason} (used at {where})")
        super().__init__(f"the CUDA backend cannot run {len(missing)} op(s) of this plan: "
                         f"{', '.join(sorted(missing))}\n" + "\n".join(lines))
        self.missing = missing
