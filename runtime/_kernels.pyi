"""Type stubs of the native CPU kernels (built from kernels/cpu)."""

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

def gemm_u8s8s32(a: npt.NDArray[np.uint8], b: npt.NDArray[np.int8]) -> npt.NDArray[np.int32]:
    """Return a @ b as int32 [M, N] for uint8 a [M, K] and int8 b [K, N], both C-contiguous."""

def gemm_s8s8s32(a: npt.NDArray[np.int8], b: npt.NDArray[np.int8]) -> npt.NDArray[np.int32]:
    """Return a @ b as int32 [M, N] for int8 a [M, K] and int8 b [K, N], both C-contiguous."""

def quantize(x: npt.NDArray[np.float32], scale: float, zero_point: int, dtype: str,
             channels_last: bool = False,
             threads: int = 1) -> npt.NDArray[np.uint8] | npt.NDArray[np.int8]:
    """Return clamp(rint(x / scale) + zero_point) of C-contiguous float32 x as uint8 (dtype
    'u8') or int8 ('s8'), in float32 as the reference computes it (NaN -> 0); channels_last:
    x is NCHW and the result NHWC [N, H, W, C]."""

def dequantize(q: npt.NDArray[np.uint8] | npt.NDArray[np.int8], scale: float, zero_point: int,
               threads: int = 1) -> npt.NDArray[np.float32]:
    """Return float32 (q - zero_point) * scale of C-contiguous uint8 or int8 q."""

def dequantize_channels(q: npt.NDArray[np.uint8] | npt.NDArray[np.int8],
                        scales: npt.NDArray[np.float32], zero_points: npt.NDArray[np.int32],
                        threads: int = 1) -> npt.NDArray[np.float32]:
    """Return float32 (q - zero_points[c]) * scales[c] of C-contiguous uint8 or int8 q [..., C],
    c the index on the last axis; scales float32 [C], zero_points int32 [C]."""

def to_channels_last(x: npt.NDArray[np.float32], threads: int = 1) -> npt.NDArray[np.float32]:
    """Return C-contiguous float32 x [N, C, H, W] as a new C-contiguous [N, H, W, C] array."""

def avg_pool2d(x: npt.NDArray[np.float32], kernel: Sequence[int], stride: Sequence[int],
               padding: Sequence[int], out_hw: Sequence[int], count_include_pad: bool,
               threads: int = 1) -> npt.NDArray[np.float32]:
    """The average of each window of NHWC x, as [N, OH, OW, C] (the reference's float32 sums)."""

def mean_axis(x: npt.NDArray[np.float32], threads: int = 1) -> npt.NDArray[np.float32]:
    """Return the mean over axis 1 of C-contiguous float32 x [O, L, I] as float32 [O, I],
    summed in float64 (a global average pool over NHWC pixels)."""

# numpy's allocator for the arrays a Session's run makes (NEP 49 handler): those of 1 KiB or
# more start on a cache line.
CACHE_LINE_ALLOCATOR: object

def set_array_allocator(handler: object | None) -> object:
    """Make numpy allocate this thread's and context's new arrays with `handler` (a
    "mem_handler" capsule such as CACHE_LINE_ALLOCATOR; None for numpy's default); returns the
    previous handler."""

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
    "amx", "avx512_vnni", "avx2", "portable". "amx_emulated" (the AMX kernel over tiles
    emulated in software, for tests) runs where "avx512_vnni" does but is never listed."""

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

def multiply_peak_gops(isa: str, threads: int = 1) -> float:
    """The int8 multiply instruction of path `isa` alone (tdpbusd, vpdpbusd, vpmaddwd, scalar),
    over accumulators in registers, on `threads` threads: 10^9 integer operations (2 per
    multiply-add) per second over about 50 ms, the peak that the benchmarks relate the GEMMs to.
    Raises ValueError for "amx_emulated", which has none."""

def gemm_isa(depth: int, outputs: int) -> str:
    """The path of int8 weights packed without a named path, for `outputs` outputs each summing
    `depth` products: selected_isa(), except "avx512_vnni" where detection (not NIMBUS_ISA)
    chose "amx" and the depth is under 64, the outputs fewer than 32, or the depth would be
    padded by more than a quarter to a multiple of 64."""

def pack_weights(w: npt.NDArray[np.int8], isa: str | None = None) -> PackedWeights:
    """Pack C-contiguous int8 w [N, K] for `isa` (default: gemm_isa(K, N)).

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
    threads: int = 1,
    out: npt.NDArray[np.uint8] | npt.NDArray[np.int8] | None = None,
    activation: str = "none",
    output_scale: float | None = None,
) -> npt.NDArray[np.uint8] | npt.NDArray[np.int8]:
    """Return clamp(rint_f32(f32(acc) * multiplier[n]) + out_zero_point, lo, hi) [M, N].

    out_dtype is "u8" or "s8"; out_zero_point, lo and hi lie in its range (a fused ReLU or
    ReLU6 is only tighter bounds); multiplier holds one finite float32 per output channel.
    With a float activation (gelu, silu, ...), multiplier is the f32 result's scale and the
    result is quantize(act(f32(acc) * multiplier), output_scale, out_zero_point), with lo and
    hi the type's range and no residual."""

def qgemm_f32(
    a: npt.NDArray[np.uint8] | npt.NDArray[np.int8],
    packed: PackedWeights,
    a_zero_point: int,
    bias: npt.NDArray[np.int32] | None,
    scale: npt.NDArray[np.float32],
    threads: int = 1,
    out: npt.NDArray[np.float32] | None = None,
    activation: str = "none",
) -> npt.NDArray[np.float32]:
    """Return act(f32(acc) * scale[n]) as float32 [M, N]; act is a float kernels' activation
    ("none", "relu", "gelu", ...), applied to each tile while it is in cache."""

def qgemm_s32(
    a: npt.NDArray[np.uint8] | npt.NDArray[np.int8],
    packed: PackedWeights,
    a_zero_point: int = 0,
    bias: npt.NDArray[np.int32] | None = None,
    threads: int = 1,
    out: npt.NDArray[np.int32] | None = None,
) -> npt.NDArray[np.int32]:
    """Return acc as int32 [M, N]."""

# ---- int8 convolution ---------------------------------------------------------------------------
# acc[n, oh, ow, o] = sum (x - a_zero_point) * w + bias[o] over the taps of each window inside
# the image, exact in int32 (wrapping), for NHWC activations x [N, H, W, C] (uint8 or int8) and
# int8 OIHW weights packed once: nimbus.compiler.ops.quant.qconv2d in NHWC, bit for bit, on every
# ISA path. Padding behaves as if filled with a_zero_point, so it adds nothing. Depthwise
# weights (groups == C == O) run a direct kernel; the rest run the packed GEMM over the
# activations (1x1, stride 1, no padding) or over windows gathered into per-thread scratch rows.
# stride is (h, w), padding [top, left, bottom, right], dilation (h, w); `threads` and `out`
# ([N, OH, OW, O], sharing no memory with x) work as for the GEMMs above. The result dtypes and
# epilogue arguments are those of qgemm, qgemm_f32 and qgemm_s32.

class PackedConvWeights:
    """int8 convolution weights [O, I / groups, KH, KW] laid out once for one ISA path."""

    @property
    def out_channels(self) -> int: ...
    @property
    def in_channels(self) -> int: ...
    @property
    def kernel(self) -> tuple[int, int]: ...
    @property
    def groups(self) -> int: ...
    @property
    def depthwise(self) -> bool: ...
    @property
    def isa(self) -> str: ...

def pack_conv_weights(
    w: npt.NDArray[np.int8], groups: int = 1, isa: str | None = None
) -> PackedConvWeights:
    """Pack C-contiguous int8 OIHW w [O, I / groups, KH, KW] for `isa` (default:
    gemm_isa(KH * KW * I / groups, O / groups)).

    Raises ValueError when groups does not divide O, for an empty kernel, for a window depth
    KH * KW * I / groups past the int32 accumulator bound, or an unknown path, and RuntimeError
    for a path that this machine cannot run."""

def qconv2d_max_pool2d(
    x: npt.NDArray[np.uint8] | npt.NDArray[np.int8],
    packed: PackedConvWeights,
    a_zero_point: int,
    bias: npt.NDArray[np.int32] | None,
    multiplier: npt.NDArray[np.float32],
    out_zero_point: int,
    lo: int,
    hi: int,
    out_dtype: str,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    pool_kernel: Sequence[int],
    pool_stride: Sequence[int],
    pool_padding: Sequence[int],
    pool_dilation: Sequence[int],
    pool_out_hw: Sequence[int],
    threads: int = 1,
    out: npt.NDArray[np.uint8] | npt.NDArray[np.int8] | None = None,
) -> npt.NDArray[np.uint8] | npt.NDArray[np.int8]:
    """Return max_pool2d(qconv2d(x, ...)) [N, POH, POW, O] without the convolution's whole
    result: bands of its rows run into scratch that stays in cache and are pooled there, with
    the very results of the two calls. Raises ValueError where padding rows are as many as the
    kernel's rows or a pooling window starts below the convolution's last row."""

def qconv2d(
    x: npt.NDArray[np.uint8] | npt.NDArray[np.int8],
    packed: PackedConvWeights,
    a_zero_point: int,
    bias: npt.NDArray[np.int32] | None,
    multiplier: npt.NDArray[np.float32],
    out_zero_point: int,
    lo: int,
    hi: int,
    out_dtype: str,
    stride: Sequence[int] = (1, 1),
    padding: Sequence[int] = (0, 0, 0, 0),
    dilation: Sequence[int] = (1, 1),
    threads: int = 1,
    out: npt.NDArray[np.uint8] | npt.NDArray[np.int8] | None = None,
    activation: str = "none",
    output_scale: float | None = None,
) -> npt.NDArray[np.uint8] | npt.NDArray[np.int8]:
    """Return clamp(rint_f32(f32(acc) * multiplier[o]) + out_zero_point, lo, hi) [N, OH, OW, O].

    out_dtype is "u8" or "s8"; ReLU and ReLU6 are tighter lo and hi, and a float activation
    comes before quantizing to output_scale, as for qgemm."""

def qconv2d_f32(
    x: npt.NDArray[np.uint8] | npt.NDArray[np.int8],
    packed: PackedConvWeights,
    a_zero_point: int,
    bias: npt.NDArray[np.int32] | None,
    scale: npt.NDArray[np.float32],
    stride: Sequence[int] = (1, 1),
    padding: Sequence[int] = (0, 0, 0, 0),
    dilation: Sequence[int] = (1, 1),
    threads: int = 1,
    out: npt.NDArray[np.float32] | None = None,
) -> npt.NDArray[np.float32]:
    """Return f32(acc) * scale[o] as float32 [N, OH, OW, O]."""

def qconv2d_s32(
    x: npt.NDArray[np.uint8] | npt.NDArray[np.int8],
    packed: PackedConvWeights,
    a_zero_point: int = 0,
    bias: npt.NDArray[np.int32] | None = None,
    stride: Sequence[int] = (1, 1),
    padding: Sequence[int] = (0, 0, 0, 0),
    dilation: Sequence[int] = (1, 1),
    threads: int = 1,
    out: npt.NDArray[np.int32] | None = None,
) -> npt.NDArray[np.int32]:
    """Return acc as int32 [N, OH, OW, O]."""

# ---- float32 attention and row normalizations ----------------------------------------------
# On selected_isa()'s path. Each row is computed in a fixed order: results do not depend on
# threads.

def attention(
    q: npt.NDArray[np.float32],
    k: npt.NDArray[np.float32],
    v: npt.NDArray[np.float32],
    mask: npt.NDArray[np.bool_] | npt.NDArray[np.float32] | None = None,
    scale: float | None = None,
    threads: int = 1,
) -> npt.NDArray[np.float32]:
    """Return softmax(q @ k^T * scale + mask) @ v as float32 [..., L, Dv].

    q [..., L, D], k [..., S, D] and v [..., S, Dv] are C-contiguous with the same batch
    dimensions, S >= 1. mask: bool (True = attend) or float32 (added to the scores),
    C-contiguous and broadcastable to [..., L, S] (read through strides, never expanded).
    scale defaults to 1 / sqrt(D). Rows whose scores are all -inf give zeros; a NaN or +inf
    score makes its row NaN, as numpy's max-shifted softmax does.
    """

def layer_norm(
    x: npt.NDArray[np.float32],
    weight: npt.NDArray[np.float32] | None = None,
    bias: npt.NDArray[np.float32] | None = None,
    eps: float = 1e-5,
    threads: int = 1,
) -> npt.NDArray[np.float32]:
    """Return (x - mean) / sqrt(var + eps) * weight + bias over the last axis of C-contiguous
    x [..., C]; the variance is that of x - mean (two passes). weight, bias: [C] or None."""

def softmax(
    x: npt.NDArray[np.float32], axis: int = -1, threads: int = 1
) -> npt.NDArray[np.float32]:
    """Return softmax over the last axis (axis -1 or x.ndim - 1 only) of C-contiguous x [..., C],
    shifted by the row maximum; a row with NaN or +-inf as its maximum gives NaN."""

# ---- programs -----------------------------------------------------------------------------------

class Program:
    """A fixed sequence of native calls over arrays allocated once, run in one call without the
    GIL (runtime/native_plan.py). Each method checks its operands as the function of the same
    name does and appends the call; its result goes into `out`, which is required. Runs must not
    overlap: the calls share their arrays."""

    def __init__(self) -> None: ...
    def sconv2d(self, x: npt.NDArray[np.float32], packed: object,
                bias: npt.NDArray[np.float32] | None, residual: npt.NDArray[np.float32] | None,
                activation: str, stride: Sequence[int], padding: Sequence[int],
                dilation: Sequence[int], out: npt.NDArray[np.float32]) -> None: ...
    def sgemm(self, x: npt.NDArray[np.float32], packed: object,
              bias: npt.NDArray[np.float32] | None, residual: npt.NDArray[np.float32] | None,
              activation: str, out: npt.NDArray[np.float32]) -> None: ...
    def avg_pool2d(self, x: npt.NDArray[np.float32], kernel: Sequence[int],
                   stride: Sequence[int], padding: Sequence[int], out_hw: Sequence[int],
                   count_include_pad: bool, out: npt.NDArray[np.float32]) -> None: ...
    def max_pool2d(self, x: npt.NDArray, kernel: Sequence[int], stride: Sequence[int],
                   padding: Sequence[int], dilation: Sequence[int], out_hw: Sequence[int],
                   out: npt.NDArray) -> None: ...
    def quantize(self, x: npt.NDArray[np.float32], scale: float, zero_point: int, dtype: str,
                 channels_last: bool, out: npt.NDArray) -> None: ...
    def qgemm(self, a: npt.NDArray, packed: PackedWeights, a_zero_point: int,
              bias: npt.NDArray[np.int32] | None, multiplier: npt.NDArray[np.float32],
              out_zero_point: int, lo: int, hi: int, out_dtype: str, out: npt.NDArray,
              residual: npt.NDArray | None, residual_zero_point: int, residual_scale: float,
              activation: str, output_scale: float | None) -> None: ...
    def qgemm_f32(self, a: npt.NDArray, packed: PackedWeights, a_zero_point: int,
                  bias: npt.NDArray[np.int32] | None, scale: npt.NDArray[np.float32],
                  out: npt.NDArray[np.float32], residual: npt.NDArray | None,
                  residual_zero_point: int, residual_scale: float, activation: str) -> None: ...
    def qconv2d(self, x: npt.NDArray, packed: PackedConvWeights, a_zero_point: int,
                bias: npt.NDArray[np.int32] | None, multiplier: npt.NDArray[np.float32],
                out_zero_point: int, lo: int, hi: int, out_dtype: str, stride: Sequence[int],
                padding: Sequence[int], dilation: Sequence[int], out: npt.NDArray,
                residual: npt.NDArray | None, residual_zero_point: int,
                residual_scale: float, activation: str, output_scale: float | None) -> None: ...
    def sconv2d_max_pool2d(self, x: npt.NDArray[np.float32], packed: object,
                           bias: npt.NDArray[np.float32] | None, activation: str,
                           stride: Sequence[int], padding: Sequence[int],
                           dilation: Sequence[int], pool_kernel: Sequence[int],
                           pool_stride: Sequence[int], pool_padding: Sequence[int],
                           pool_dilation: Sequence[int], pool_out_hw: Sequence[int],
                           out: npt.NDArray[np.float32]) -> None: ...
    def qconv2d_max_pool2d(self, x: npt.NDArray, packed: PackedConvWeights,
                           a_zero_point: int, bias: npt.NDArray[np.int32] | None,
                           multiplier: npt.NDArray[np.float32], out_zero_point: int, lo: int,
                           hi: int, out_dtype: str, stride: Sequence[int],
                           padding: Sequence[int], dilation: Sequence[int],
                           pool_kernel: Sequence[int], pool_stride: Sequence[int],
                           pool_padding: Sequence[int], pool_dilation: Sequence[int],
                           pool_out_hw: Sequence[int], out: npt.NDArray) -> None: ...
    def qconv2d_f32(self, x: npt.NDArray, packed: PackedConvWeights, a_zero_point: int,
                    bias: npt.NDArray[np.int32] | None, scale: npt.NDArray[np.float32],
                    stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                    out: npt.NDArray[np.float32], residual: npt.NDArray | None,
                    residual_zero_point: int, residual_scale: float) -> None: ...
    def mean_axis(self, x: npt.NDArray[np.float32], out: npt.NDArray[np.float32]) -> None: ...
    def inverted_residual(self, x: npt.NDArray[np.float32], expand: object,
                          expand_bias: npt.NDArray[np.float32] | None, expand_activation: str,
                          depthwise: object, depthwise_bias: npt.NDArray[np.float32] | None,
                          depthwise_activation: str, stride: Sequence[int],
                          padding: Sequence[int], dilation: Sequence[int], project: object,
                          project_bias: npt.NDArray[np.float32] | None, project_activation: str,
                          residual: npt.NDArray[np.float32] | None,
                          out: npt.NDArray[np.float32]) -> None: ...
    def to_channels_last(self, x: npt.NDArray, out: npt.NDArray) -> None:
        """out [N, H, W, C] = x [N, C, H, W] (float32, uint8 or int8)."""
    def to_channels_first(self, x: npt.NDArray, out: npt.NDArray) -> None:
        """out [N, C, H, W] = x [N, H, W, C] (float32, uint8 or int8)."""
    def run(self, threads: int = 1) -> None:
        """Run every call in order on at most `threads` threads."""
    def profile(self, threads: int = 1, repeats: int = 10) -> list[float]:
        """Run the program `repeats` (1 to 10000) times; return each call's median milliseconds."""
    def __len__(self) -> int: ...
