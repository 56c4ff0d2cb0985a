"""Matrix products with fused epilogues: int8 (u8/s8 x s8 -> s32 on the tensor cores) and
fp16/bf16, the layers of a quantized model and those kept in float.

int8. With activations a[M, K] (zero point a_zp) and weights w[N, K] (symmetric), the reference
(nimbus.compiler.ops.quant) computes

    acc[m, n] = sum_k (a[m, k] - a_zp) * w[n, k] + bias[n]                   (int32, wrapping)

and then the epilogue. Tensor-core int8 products take signed operands only, so unsigned
activations are shifted into int8 (a - 128) and the difference is folded back with the
weights' column sums, computed once at packing time:

    sum_k (a - a_zp) * w = sum_k (a - 128) * w - (a_zp - 128) * colsum[n]

Both sides are exact in wrapping int32 arithmetic, so the result is bit-exact. The epilogue
then applies, per output channel n and in the reference's order of float32 steps:

    s32: acc
    u8/s8: clamp(rint(f32(acc) * M[n] + f32(r - r_zp) * R) + zero_point, lo, hi)
    f32: act(f32(acc) * S[n] + f32(r - r_zp) * R)

where r is an optional quantized residual (same shape as the result) and a fused ReLU/ReLU6 is
the clamp bound [lo, hi] (u8/s8) or the activation (f32).

Float. out[m, n] = act(sum_k a[m, k] * w[k, n] + bias[n] + residual[m, n]), accumulated in
float32 and stored in the input dtype; the weights are packed once as [K, N].

Programs are launched over output tiles in "grouped" order (GROUP_M rows of tiles at a time)
so that tiles sharing the same rows of A and columns of B run together and hit in L2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import triton
import triton.language as tl

from ._common import (
    FLOAT_DTYPES,
    INTEGER_LAUNCH,
    activate,
    activation_code,
    dot_precision,
    round_and_clamp,
)
from .autotune import config, register_space, shape_key, tuned
from .bench import BenchCase, mismatches, relative_error

# u8/s8 x s8 tiles: 16-byte rows at least; large N tiles feed Hopper's wide MMAs.
QGEMM_SPACE = register_space("qgemm", [
    config(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=2),
    config(BLOCK_M=128, BLOCK_N=256, BLOCK_K=128, GROUP_M=8, num_warps=8, num_stages=3),
    config(BLOCK_M=128, BLOCK_N=256, BLOCK_K=128, GROUP_M=8, num_warps=8, num_stages=4),
    config(BLOCK_M=256, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=8, num_stages=3),
    config(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=8, num_stages=4),
    config(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=4, num_stages=4),
    config(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4),
    config(BLOCK_M=128, BLOCK_N=64, BLOCK_K=128, GROUP_M=8, num_warps=4, num_stages=4),
    config(BLOCK_M=64, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=4, num_stages=4),
    config(BLOCK_M=64, BLOCK_N=128, BLOCK_K=256, GROUP_M=8, num_warps=4, num_stages=3),
    config(BLOCK_M=64, BLOCK_N=64, BLOCK_K=128, GROUP_M=8, num_warps=4, num_stages=5),
    # Few rows (M = 256 fills 64 programs with 128x128 tiles, under half of an H100's SMs):
    # small tiles that still run deep K steps.
    config(BLOCK_M=64, BLOCK_N=64, BLOCK_K=256, GROUP_M=8, num_warps=4, num_stages=4),
    config(BLOCK_M=128, BLOCK_N=64, BLOCK_K=256, GROUP_M=8, num_warps=8, num_stages=3),
])
GEMM_SPACE = register_space("gemm", [
    config(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=2),
    config(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3),
    config(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=4),
    config(BLOCK_M=256, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3),
    config(BLOCK_M=256, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=4),
    config(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=4),
    config(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4),
    config(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=4),
    config(BLOCK_M=64, BLOCK_N=256, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=4),
    config(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4),
    config(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4),
    # Few rows, as in the int8 space: 256 x 4096 x 4096 ran at 0.88x torch.mm with 64x128 tiles.
    config(BLOCK_M=64, BLOCK_N=64, BLOCK_K=128, GROUP_M=8, num_warps=4, num_stages=4),
    config(BLOCK_M=64, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=4, num_stages=3),
    # ... and split along K (SPLIT_K programs per tile, their float32 sums added by
    # gemm_split_finish_kernel): 64x128 tiles of 256 x 4096 x 4096 are 128 programs, one per SM,
    # and a lone program on an SM leaves its loads' latency unhidden.
    config(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, SPLIT_K=2, num_warps=4, num_stages=4),
    config(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, SPLIT_K=2, num_warps=8, num_stages=4),
    config(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, SPLIT_K=4, num_warps=8, num_stages=4),
])
# The finishing pass of a split GEMM: tiles of partial sums, elementwise.
SPLIT_FINISH_BLOCK_M = 32
SPLIT_FINISH_BLOCK_N = 128

# Result types of the int8 product -> the code the kernel takes.
OUTPUT_CODES = {"s32": 0, "u8": 1, "i8": 2, "f32": 3}
_OUTPUT_TORCH = {"s32": torch.int32, "u8": torch.uint8, "i8": torch.int8, "f32": torch.float32}


@triton.jit
def grouped_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(row tile, column tile) of this program, visiting GROUP_M row tiles per column sweep."""
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    tiles_per_group = GROUP_M * tiles_n
    first_m = (pid // tiles_per_group) * GROUP_M
    group_rows = min(tiles_m - first_m, GROUP_M)
    tile_m = first_m + (pid % tiles_per_group) % group_rows
    tile_n = (pid % tiles_per_group) // group_rows
    return tile_m, tile_n


@triton.jit
def tile_start(a_ptr, M, N, stride_am, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """This program's tile of the result and where its walk over K starts.

    Returns (rows [BLOCK_M], cols [BLOCK_N], depths [BLOCK_K] = 0..BLOCK_K - 1, a_ptrs): a_ptrs
    points at the first A tile [rows, depths] (K contiguous).
    """
    tile_m, tile_n = grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rows = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    depths = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rows[:, None] * stride_am + depths[None, :]
    return rows, cols, depths, a_ptrs


# ---- int8 -----------------------------------------------------------------------------------------
@triton.jit
def qgemm_kernel(
    a_ptr,                # activations [M, K], u8 or s8, rows `stride_am` apart, K contiguous
    w_ptr,                # packed weights [N, K] s8, rows `stride_wn` apart, K contiguous
    out_ptr,              # result [M, N] (s32, u8, s8 or f32), rows `stride_om` apart
    column_sums_ptr,      # [N] int32: sum_k w[n, k]
    bias_ptr,             # [N] int32 (read only if HAS_BIAS)
    scale_ptr,            # [N] float32: multiplier M[n] (u8/s8) or scale S[n] (f32)
    residual_ptr,         # [M, N] u8/s8 residual, rows `stride_rm` apart (if HAS_RESIDUAL)
    M, N, K,              # problem size
    stride_am, stride_wn, stride_om, stride_rm,
    a_correction,         # int32 added back per column sum: a_zp - 128 (u8 input) or a_zp (s8)
    zero_point,           # int32 zero point of a u8/s8 result
    lo, hi,               # int32 clamp bounds of a u8/s8 result (carry a fused ReLU/ReLU6)
    residual_zero_point,  # int32 zero point of the residual
    residual_scale,       # float32 R: s_r / s_out (u8/s8 result) or s_r (f32 result)
    A_UNSIGNED: tl.constexpr,    # activations are u8 (shifted into s8 by flipping the top bit)
    HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    OUTPUT: tl.constexpr,        # OUTPUT_CODES: 0 s32, 1 u8, 2 s8, 3 f32
    ACTIVATION: tl.constexpr,    # f32 results only: ACTIVATION_CODES
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,       # row tiles visited together, for L2 reuse
):
    rows, cols, depths, a_ptrs = tile_start(a_ptr, M, N, stride_am, BLOCK_M, BLOCK_N, BLOCK_K,
                                            GROUP_M)
    w_ptrs = w_ptr + cols[None, :] * stride_wn + depths[:, None]

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k in range(tl.cdiv(K, BLOCK_K)):
        depth_left = K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=(rows[:, None] < M) & (depths[None, :] < depth_left), other=0)
        # Masked weights are 0, so whatever a masked activation becomes adds nothing.
        w = tl.load(w_ptrs, mask=(cols[None, :] < N) & (depths[:, None] < depth_left), other=0)
        if A_UNSIGNED:
            a = (a ^ 0x80).to(tl.int8, bitcast=True)  # a - 128: a flip of the top bit
        # The dot accumulates in place (one wgmma chain), not into a fresh tile added after.
        acc = tl.dot(a, w, acc, out_dtype=tl.int32)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K

    column_mask = cols < N
    acc -= a_correction * tl.load(column_sums_ptr + cols, mask=column_mask, other=0)[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=column_mask, other=0)[None, :]

    out_mask = (rows[:, None] < M) & column_mask[None, :]
    out_ptrs = out_ptr + rows[:, None] * stride_om + cols[None, :]
    if OUTPUT == 0:
        tl.store(out_ptrs, acc, mask=out_mask)
    else:
        scale = tl.load(scale_ptr + cols, mask=column_mask, other=0.0)
        scaled = acc.to(tl.float32) * scale[None, :]
        if HAS_RESIDUAL:
            r = tl.load(residual_ptr + rows[:, None] * stride_rm + cols[None, :], mask=out_mask,
                        other=0)
            scaled += (r.to(tl.int32) - residual_zero_point).to(tl.float32) * residual_scale
        if OUTPUT == 3:
            tl.store(out_ptrs, activate(scaled, ACTIVATION), mask=out_mask)
        else:
            q = round_and_clamp(scaled, zero_point, lo, hi)
            tl.store(out_ptrs, q.to(out_ptr.dtype.element_ty), mask=out_mask)


@dataclass(frozen=True)
class PackedWeights:
    """int8 weights in the kernel's layout, packed once at compile time."""

    data: torch.Tensor         # [N, K] int8, K contiguous (the operand layout of int8 MMAs)
    column_sums: torch.Tensor  # [N] int32, sum over K, folds the activation zero point

    @property
    def n(self) -> int:
        return self.data.shape[0]

    @property
    def k(self) -> int:
        return self.data.shape[1]


def pack_weights(w: torch.Tensor) -> PackedWeights:
    """Pack int8 weights [N, K] (a linear layer's [out, in]) for `qgemm`."""
    if w.dtype != torch.int8 or w.dim() != 2:
        raise ValueError(f"weights must be a 2-D int8 tensor [N, K], got {w.dtype} {list(w.shape)}")
    data = w.contiguous()
    column_sums = data.to(torch.int32).sum(dim=1, dtype=torch.int32)
    return PackedWeights(data, column_sums)


@dataclass(frozen=True)
class QuantEpilogue:
    """What `qgemm` does with each int32 accumulator (see the module docstring).

    `scale` is the per-channel multiplier M[n] = s_in * s_w[n] / s_out for u8/i8 results
    (nimbus.compiler.ops.quant.requant_multiplier) or S[n] = s_in * s_w[n] for f32 ones.
    """

    out_dtype: str = "s32"                  # "s32", "u8", "i8" or "f32"
    bias: torch.Tensor | None = None        # [N] int32
    scale: torch.Tensor | None = None       # [N] float32, or one value for all channels
    zero_point: int = 0
    lo: int | None = None                   # clamp bounds; default: the result type's range
    hi: int | None = None
    activation: str = "none"                # f32 results only
    residual: torch.Tensor | None = None    # u8/s8, the result's shape
    residual_zero_point: int = 0
    residual_scale: float = 0.0             # R: s_r / s_out (u8/i8) or s_r (f32)


def _bounds(epilogue: QuantEpilogue) -> tuple[int, int]:
    full = {"u8": (0, 255), "i8": (-128, 127)}.get(epilogue.out_dtype, (0, 0))
    lo = full[0] if epilogue.lo is None else epilogue.lo
    hi = full[1] if epilogue.hi is None else epilogue.hi
    if epilogue.out_dtype in ("u8", "i8") and not full[0] <= lo <= hi <= full[1]:
        raise ValueError(f"clamp bounds [{lo}, {hi}] must lie within {epilogue.out_dtype}'s range {full}")
    return lo, hi


def _per_channel(values: torch.Tensor | None, n: int, dtype: torch.dtype, what: str, device):
    if values is None:
        raise ValueError(f"a {what} is required for this result type")
    values = torch.as_tensor(values, dtype=dtype, device=device).reshape(-1)
    if values.numel() == 1:
        values = values.expand(n)
    if values.numel() != n:
        raise ValueError(f"{what} needs 1 or {n} values (one per output channel), got {values.numel()}")
    return values.contiguous()


def qgemm(a: torch.Tensor, a_zero_point: int, weights: PackedWeights,
          epilogue: QuantEpilogue = QuantEpilogue()) -> torch.Tensor:
    """out[..., N] = epilogue(a[..., K] (u8/s8, zero point a_zero_point) x weights)."""
    if a.dtype not in (torch.uint8, torch.int8):
        raise ValueError(f"activations must be uint8 or int8, got {a.dtype}")
    if a.dim() < 1 or a.shape[-1] != weights.k:
        raise ValueError(f"activations {list(a.shape)} must end in K={weights.k}, the weights' depth")
    if epilogue.out_dtype not in OUTPUT_CODES:
        raise ValueError(f"out_dtype must be one of {', '.join(OUTPUT_CODES)}, got '{epilogue.out_dtype}'")
    if epilogue.out_dtype != "f32" and epilogue.activation != "none":
        raise ValueError("a u8/i8 result takes its ReLU/ReLU6 as clamp bounds lo/hi, not an activation")
    signed = a.dtype == torch.int8
    zero_range = (-128, 127) if signed else (0, 255)
    if not zero_range[0] <= a_zero_point <= zero_range[1]:
        raise ValueError(f"activation zero point {a_zero_point} lies outside {a.dtype}'s range")
    lead, k, n = a.shape[:-1], weights.k, weights.n
    a2 = a.reshape(-1, k)
    if a2.stride(-1) != 1:
        a2 = a2.contiguous()
    m = a2.shape[0]
    device = a.device
    lo, hi = _bounds(epilogue)
    out = torch.empty((m, n), dtype=_OUTPUT_TORCH[epilogue.out_dtype], device=device)
    scale = (_per_channel(epilogue.scale, n, torch.float32, "scale", device)
             if epilogue.out_dtype != "s32" else weights.column_sums)
    bias = (None if epilogue.bias is None
            else _per_channel(epilogue.bias, n, torch.int32, "bias", device))
    residual = epilogue.residual
    if residual is not None:
        if epilogue.out_dtype == "s32":
            raise ValueError("an s32 result takes no residual")
        if residual.dtype not in (torch.uint8, torch.int8):
            raise ValueError(f"the residual must be uint8 or int8, got {residual.dtype}")
        if tuple(residual.shape) != (*lead, n):
            raise ValueError(f"the residual must have the result's shape {[*lead, n]}, "
                             f"got {list(residual.shape)}")
        residual = residual.reshape(m, n).contiguous()

    def launch(cfg):
        options = cfg.launch_options()
        grid = (triton.cdiv(m, options["BLOCK_M"]) * triton.cdiv(n, options["BLOCK_N"]),)
        qgemm_kernel[grid](
            a2, weights.data, out, weights.column_sums,
            bias if bias is not None else weights.column_sums, scale,
            residual if residual is not None else a2,
            m, n, k, a2.stride(0), weights.data.stride(0), out.stride(0),
            residual.stride(0) if residual is not None else 0,
            a_zero_point if signed else a_zero_point - 128,
            epilogue.zero_point, lo, hi, epilogue.residual_zero_point,
            float(epilogue.residual_scale),
            A_UNSIGNED=not signed, HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None,
            OUTPUT=OUTPUT_CODES[epilogue.out_dtype], ACTIVATION=activation_code(epilogue.activation),
            **options, **INTEGER_LAUNCH)

    # The epilogue changes the kernel's registers, so each variant is tuned on its own.
    variant = (f"{epilogue.out_dtype}{'+bias' if bias is not None else ''}"
               f"{'+residual' if residual is not None else ''}+{epilogue.activation}")
    launch(tuned("qgemm", shape_key(m, n, k, variant), a2, launch))
    return out.reshape(*lead, n)


# ---- fp16 / bf16 ----------------------------------------------------------------------------------
@triton.jit
def finish_float_tile(acc, rows, cols, out_ptr, bias_ptr, residual_ptr, M, N, stride_om,
                      stride_rm, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                      ACTIVATION: tl.constexpr):
    """Stores act(acc + bias + residual) of the result tile [rows, cols] in out's dtype."""
    column_mask = cols < N
    out_mask = (rows[:, None] < M) & column_mask[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=column_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_RESIDUAL:
        r = tl.load(residual_ptr + rows[:, None] * stride_rm + cols[None, :], mask=out_mask, other=0.0)
        acc += r.to(tl.float32)
    acc = activate(acc, ACTIVATION)
    tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def gemm_kernel(
    a_ptr,                # activations [M, K], rows `stride_am` apart, K contiguous
    w_ptr,                # packed weights [K, N], rows `stride_wk` apart, N contiguous
    out_ptr,              # result [M, N] in the activations' dtype, rows `stride_om` apart
    bias_ptr,             # [N] (read only if HAS_BIAS)
    residual_ptr,         # [M, N], rows `stride_rm` apart (read only if HAS_RESIDUAL)
    partial_ptr,          # float32 [SPLIT_K, M, N] partial sums (written only if SPLIT_K > 1)
    M, N, K,              # problem size
    stride_am, stride_wk, stride_om, stride_rm,
    HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    ACTIVATION: tl.constexpr,    # ACTIVATION_CODES, applied after bias and residual
    DOT_PRECISION: tl.constexpr,  # tl.dot input precision (_common.dot_precision)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,       # row tiles visited together, for L2 reuse
    SPLIT_K: tl.constexpr,       # programs per tile (grid axis 1), each over a run of K steps
):
    rows, cols, depths, a_ptrs = tile_start(a_ptr, M, N, stride_am, BLOCK_M, BLOCK_N, BLOCK_K,
                                            GROUP_M)
    # This program's K steps: [first, last) of the tile's cdiv(K, BLOCK_K).
    steps = tl.cdiv(K, BLOCK_K)
    split = tl.program_id(1)
    first = split * tl.cdiv(steps, SPLIT_K)
    last = tl.minimum(steps, first + tl.cdiv(steps, SPLIT_K))
    a_ptrs += first * BLOCK_K
    w_ptrs = w_ptr + (first * BLOCK_K + depths[:, None]) * stride_wk + cols[None, :]

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(first, last):
        depth_left = K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=(rows[:, None] < M) & (depths[None, :] < depth_left), other=0.0)
        w = tl.load(w_ptrs, mask=(depths[:, None] < depth_left) & (cols[None, :] < N), other=0.0)
        acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K * stride_wk

    if SPLIT_K == 1:
        finish_float_tile(acc, rows, cols, out_ptr, bias_ptr, residual_ptr, M, N, stride_om,
                          stride_rm, HAS_BIAS, HAS_RESIDUAL, ACTIVATION)
    else:
        offsets = split.to(tl.int64) * M * N + rows[:, None].to(tl.int64) * N + cols[None, :]
        tl.store(partial_ptr + offsets, acc, mask=(rows[:, None] < M) & (cols[None, :] < N))


@triton.jit
def gemm_split_finish_kernel(
    partial_ptr,          # float32 [SPLIT_K, M, N] partial sums of gemm_kernel
    out_ptr, bias_ptr, residual_ptr,  # as gemm_kernel's
    M, N, stride_om, stride_rm,
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACTIVATION: tl.constexpr,
    SPLIT_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Adds the SPLIT_K partial sums of each result element in split order (the result does not
    depend on the order programs ran in) and applies gemm_kernel's epilogue."""
    tiles_n = tl.cdiv(N, BLOCK_N)
    rows = tl.program_id(0) // tiles_n * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(0) % tiles_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    offsets = rows[:, None].to(tl.int64) * N + cols[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    partials = partial_ptr + offsets
    for _ in tl.static_range(SPLIT_K):
        acc += tl.load(partials, mask=mask, other=0.0)
        partials += M * N
    finish_float_tile(acc, rows, cols, out_ptr, bias_ptr, residual_ptr, M, N, stride_om,
                      stride_rm, HAS_BIAS, HAS_RESIDUAL, ACTIVATION)


def pack_float_weights(w: torch.Tensor) -> torch.Tensor:
    """A linear layer's weights [N, K] (out, in) as the [K, N] operand `gemm` takes."""
    if w.dtype not in FLOAT_DTYPES or w.dim() != 2:
        raise ValueError(f"weights must be a 2-D float tensor [N, K], got {w.dtype} {list(w.shape)}")
    return w.t().contiguous()


def gemm(a: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None,
         residual: torch.Tensor | None = None, activation: str = "none") -> torch.Tensor:
    """act(a[..., K] @ w[K, N] + bias[N] + residual[..., N]) in a's dtype, fp32 accumulation."""
    if a.dtype not in FLOAT_DTYPES:
        raise ValueError(f"activations must be float16, bfloat16 or float32, got {a.dtype}")
    if w.dtype != a.dtype or w.dim() != 2:
        raise ValueError(f"weights must be 2-D {a.dtype} [K, N] (pack_float_weights), got "
                         f"{w.dtype} {list(w.shape)}")
    if a.dim() < 1 or a.shape[-1] != w.shape[0]:
        raise ValueError(f"activations {list(a.shape)} must end in K={w.shape[0]}, the weights' depth")
    code = activation_code(activation)
    lead, k, n = a.shape[:-1], w.shape[0], w.shape[1]
    a2 = a.reshape(-1, k)
    if a2.stride(-1) != 1:
        a2 = a2.contiguous()
    w = w if w.stride(-1) == 1 else w.contiguous()
    m = a2.shape[0]
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != n):
        raise ValueError(f"bias must be [{n}], got {list(bias.shape)}")
    if residual is not None:
        if tuple(residual.shape) != (*lead, n):
            raise ValueError(f"the residual must have the result's shape {[*lead, n]}, "
                             f"got {list(residual.shape)}")
        residual = residual.reshape(m, n).contiguous()
    out = torch.empty((m, n), dtype=a.dtype, device=a.device)

    bias_arg = bias if bias is not None else out
    residual_arg = residual if residual is not None else out
    residual_stride = residual.stride(0) if residual is not None else 0
    epilogue = {"HAS_BIAS": bias is not None, "HAS_RESIDUAL": residual is not None,
                "ACTIVATION": code}

    def launch(cfg):
        options = cfg.launch_options()
        split = options.pop("SPLIT_K", 1)
        partial = torch.empty((split, m, n), dtype=torch.float32, device=a.device) \
            if split > 1 else out
        grid = (triton.cdiv(m, options["BLOCK_M"]) * triton.cdiv(n, options["BLOCK_N"]), split)
        gemm_kernel[grid](
            a2, w, out, bias_arg, residual_arg, partial, m, n, k, a2.stride(0), w.stride(0),
            out.stride(0), residual_stride, **epilogue, DOT_PRECISION=dot_precision(a.dtype),
            SPLIT_K=split, **options)
        if split > 1:
            tiles = triton.cdiv(m, SPLIT_FINISH_BLOCK_M) * triton.cdiv(n, SPLIT_FINISH_BLOCK_N)
            gemm_split_finish_kernel[(tiles,)](
                partial, out, bias_arg, residual_arg, m, n, out.stride(0), residual_stride,
                **epilogue, SPLIT_K=split, BLOCK_M=SPLIT_FINISH_BLOCK_M,
                BLOCK_N=SPLIT_FINISH_BLOCK_N)

    variant = (f"{str(a.dtype).removeprefix('torch.')}{'+bias' if bias is not None else ''}"
               f"{'+residual' if residual is not None else ''}+{activation}")
    launch(tuned("gemm", shape_key(m, n, k, variant), a2, launch))
    return out.reshape(*lead, n)


# ---- benchmark hook -------------------------------------------------------------------------------
def benchmark_cases() -> list[BenchCase]:
    """int8 and fp16 products at transformer sizes, against cuBLAS through torch."""
    device = torch.device("cuda")
    cases = []
    for m in (256, 1024, 4096):
        n = k = 4096
        a = torch.randint(0, 256, (m, k), dtype=torch.uint8, device=device)
        w = torch.randint(-127, 128, (n, k), dtype=torch.int8, device=device)
        packed = pack_weights(w)
        a_s8 = (a.to(torch.int16) - 128).to(torch.int8)
        w_kn = w.t()  # column-major [K, N]: the operand layout cuBLAS's int8 product wants
        cases.append(BenchCase(
            f"qgemm s32 {m}x{n}x{k}", lambda a=a, p=packed: qgemm(a, 128, p),
            check=lambda a=a, p=packed, w=w: (mismatches(qgemm(a, 128, p), _exact_s32(a, 128, w)), 0),
            flops=2.0 * m * n * k, bytes=m * k + n * k + 4 * m * n,
            peers={"torch._int_mm": lambda x=a_s8, y=w_kn: torch._int_mm(x, y)}))
        epilogue = QuantEpilogue(
            "u8", bias=torch.randint(-20000, 20000, (n,), dtype=torch.int32, device=device),
            scale=torch.rand(n, device=device) * 1e-4 + 1e-5, zero_point=3, lo=3, hi=255)
        cases.append(BenchCase(
            f"qgemm u8 bias+requant+relu {m}x{n}x{k}",
            lambda a=a, p=packed, e=epilogue: qgemm(a, 120, p, e),
            check=lambda a=a, p=packed, w=w, e=epilogue: (
                mismatches(qgemm(a, 120, p, e), _reference_u8(a, 120, w, e)), 0),
            flops=2.0 * m * n * k, bytes=m * k + n * k + m * n,
            peers={"torch._int_mm": lambda x=a_s8, y=w_kn: torch._int_mm(x, y)}))
    for m in (256, 1024, 4096):
        n = k = 4096
        a = torch.randn(m, k, dtype=torch.float16, device=device)
        weight = torch.randn(n, k, dtype=torch.float16, device=device) / k ** 0.5
        w_kn = pack_float_weights(weight)
        bias = torch.randn(n, dtype=torch.float16, device=device)
        cases.append(BenchCase(
            f"gemm fp16 {m}x{n}x{k}", lambda a=a, w=w_kn: gemm(a, w),
            check=lambda a=a, w=w_kn: (relative_error(gemm(a, w), a.float() @ w.float()), 5e-3),
            flops=2.0 * m * n * k, bytes=2.0 * (m * k + n * k + m * n),
            peers={"torch.mm": lambda a=a, w=w_kn: torch.mm(a, w)}))
        eager = _linear_gelu
        compiled = torch.compile(eager)
        cases.append(BenchCase(
            f"gemm fp16 bias+gelu {m}x{n}x{k}",
            lambda a=a, w=w_kn, b=bias: gemm(a, w, bias=b, activation="gelu"),
            check=lambda a=a, w=w_kn, b=bias: (relative_error(
                gemm(a, w, bias=b, activation="gelu"), _linear_gelu(a.float(), w.float(), b.float())),
                5e-3),
            flops=2.0 * m * n * k, bytes=2.0 * (m * k + n * k + m * n),
            peers={"torch eager": lambda a=a, w=w_kn, b=bias, f=eager: f(a, w, b),
                   "torch.compile": lambda a=a, w=w_kn, b=bias, f=compiled: f(a, w, b)}))
    return cases


def _linear_gelu(a, w, b):
    return torch.nn.functional.gelu(torch.addmm(b, a, w))


def _exact_s32(a, a_zero_point, w):
    """sum_k (a - a_zp) * w in int64 on the device, wrapped to int32 like the reference."""
    centered = a.to(torch.float64) - a_zero_point
    return (centered @ w.to(torch.float64).t()).to(torch.int64).to(torch.int32)


def _reference_u8(a, a_zero_point, w, e: QuantEpilogue):
    """The reference epilogue in float32 torch ops (separate kernels: no fused multiply-add)."""
    acc = _exact_s32(a, a_zero_point, w) + e.bias
    scaled = acc.to(torch.float32) * e.scale
    return (torch.round(scaled).to(torch.int32) + e.zero_point).clamp(e.lo, e.hi).to(torch.uint8)
