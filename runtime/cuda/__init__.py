"""The CUDA backend: plans run with nimbus's Triton kernel library on a CUDA device.

``Session(source, target="cuda")`` (or ``nimbus.load(path, target="cuda")``) makes a
`CudaSession`. Importing this package imports neither torch nor triton: they are imported when
a CUDA session is created. Which op runs how is `policy` (Triton kernel, torch layout op, torch
fallback, or refused at load); `CudaSession.kernel_table()` reports it for a loaded plan.
"""

from .policy import LAYOUT_OPS, REFUSED_OPS, TORCH_FALLBACK_OPS, CudaUnsupportedError
from .session import CudaSession

__all__ = ["LAYOUT_OPS", "REFUSED_OPS", "TORCH_FALLBACK_OPS", "CudaSession", "CudaUnsupportedError"]
