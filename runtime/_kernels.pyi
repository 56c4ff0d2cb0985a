"""Type stubs of the native CPU kernels (built from kernels/cpu)."""

import numpy as np
import numpy.typing as npt

def gemm_u8s8s32(a: npt.NDArray[np.uint8], b: npt.NDArray[np.int8]) -> npt.NDArray[np.int32]:
    """Return a @ b as int32 [M, N] for uint8 a [M, K] and int8 b [K, N], both C-contiguous."""

def gemm_s8s8s32(a: npt.NDArray[np.int8], b: npt.NDArray[np.int8]) -> npt.NDArray[np.int32]:
    """Return a @ b as int32 [M, N] for int8 a [M, K] and int8 b [K, N], both C-contiguous."""

def kernels_version() -> str:
    """Return the nimbus version that the kernels were built from."""
