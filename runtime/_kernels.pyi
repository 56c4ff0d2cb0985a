"""Type stubs of the native CPU kernels (built from kernels/cpu)."""

import numpy as np
import numpy.typing as npt

def gemm_u8s8s32(a: npt.NDArray[np.uint8], b: npt.NDArray[np.int8]) -> npt.NDArray[np.int32]:
    """Return a @ b as int32 [M, N] for uint8 a [M, K] and int8 b [K, N], both C-contiguous."""

def gemm_s8s8s32(a: npt.NDArray[np.int8], b: npt.NDArray[np.int8]) -> npt.NDArray[np.int32]:
    """Return a @ b as int32 [M, N] for int8 a [M, K] and int8 b [K, N], both C-contiguous."""

def kernels_version() -> str:
    """Return the nimbus version that the kernels were built from."""

# ---- packed int8 GEMM ---------------------------------------------------------------------------
# acc = (a - a_zero_point) @ w.T + bias, exact in int32 (wrapping), for a uint8 or int8 [M, K]
# and int8 weights w [N, K] packed once. Results follow nimbus.compiler.ops.quant bit for bit on
# every ISA path. `threads` splits the work over persistent worker threads (at most one per core;
# a call made while another call holds them runs on its own thread). `out`, when given, is a
# C-contiguous [M, N] array of the result dtype, sharing no memory with `a`, that is written and
# returned instead of a new array.

def available_isas() -> list[str]:
    """Return the ISA paths that this CPU and OS run, fastest first, from
    "avx512_vnni", "avx2", "portable"."""

def selected_isa() -> str:
    """Return the process-wide path: NIMBUS_ISA when set, else the fastest available.

    Raises ValueError for an unknown NIMBUS_ISA and RuntimeError for an unsupported one."""

class PackedWeights:
    """int8 weights [N, K] laid out once for one ISA path, with their column sums."""

    @property
    def n(self) -> int: ...
    @property
    def k(self) -> int: ...
    @property
    def isa(self) -> str: ...

def pack_weights(w: npt.NDArray[np.int8], isa: str | None = None) -> PackedWeights:
    """Pack C-contiguous int8 w [N, K] for `isa` (default: selected_isa()).

    Raises ValueError for an unknown path or K past the int32 accumulator bound, RuntimeError
    for a path that this machine cannot run."""

def qgemm(
    a: npt.NDArray[np.uint8] | npt.NDArray[np.int8],
    packed: PackedWeights,
    a_zero_point: int,
    bias: npt.NDArray[np.int32] | None,
    multiplier: npt.NDArray[np.float32],
    out_zero_point: int,
    lo: int,
    hi: int,
    out_dtype: str,
    *,
    threads: int = 1,
    out: npt.NDArray[np.uint8] | npt.NDArray[np.int8] | None = None,
) -> npt.NDArray[np.uint8] | npt.NDArray[np.int8]:
    """Return clamp(rint_f32(f32(acc) * multiplier[n]) + out_zero_point, lo, hi) [M, N].

    out_dtype is "u8" or "s8"; out_zero_point, lo and hi lie in its range (a fused ReLU or
    ReLU6 is only tighter bounds); multiplier holds one finite float32 per output channel."""

def qgemm_f32(
    a: npt.NDArray[np.uint8] | npt.NDArray[np.int8],
    packed: PackedWeights,
    a_zero_point: int,
    bias: npt.NDArray[np.int32] | None,
    scale: npt.NDArray[np.float32],
    *,
    threads: int = 1,
    out: npt.NDArray[np.float32] | None = None,
) -> npt.NDArray[np.float32]:
    """Return f32(acc) * scale[n] as float32 [M, N]."""

def qgemm_s32(
    a: npt.NDArray[np.uint8] | npt.NDArray[np.int8],
    packed: PackedWeights,
    a_zero_point: int = 0,
    bias: npt.NDArray[np.int32] | None = None,
    *,
    threads: int = 1,
    out: npt.NDArray[np.int32] | None = None,
) -> npt.NDArray[np.int32]:
    """Return acc as int32 [M, N]."""
