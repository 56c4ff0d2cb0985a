"""Fused attention, flash-attention style: out = softmax(q @ k^T * scale + mask) @ v.

Shapes: q [B, H, L, D], k [B, H, S, D], v [B, H, S, E] -> out [B, H, L, E]. A bool mask keeps
the scores where it is true (the others become -inf); a float mask is added to the scores. The
mask broadcasts to [B, H, L, S] ([L, S], [B, 1, L, S], [B, 1, 1, S] key padding, ...): the kernel
reads it through its strides, 0 along broadcast axes, so it is never materialized. A row whose
scores are all masked gives zeros (as the op table and torch's scaled_dot_product_attention do).

A program owns BLOCK_M query rows of one (batch, head). It keeps its q tile in registers and
walks the keys and values in BLOCK_N tiles, never forming the L x S score matrix in memory. The
softmax is computed online (Milakov & Gimelshein; Dao et al., FlashAttention), in float32:

    m_new = max(m, rowmax(s))            running maximum of the scores seen so far
    p     = exp2(s - m_new)              this tile's unnormalized probabilities
    l     = l * exp2(m - m_new) + rowsum(p)
    acc   = acc * exp2(m - m_new) + p @ v
    out   = acc / l                      after the last tile

The scores are kept in base 2: log2(e) is folded into the scale (and into a float mask), so each
exponential is one exp2. While a row has seen only masked scores, m = -inf; the exponent's shift
is then 0 instead of -inf, which keeps exp2(-inf - -inf) = NaN out, and such a row ends with
l = 0 and acc = 0: it is written as zeros.

Head dims D and E are padded up to a power of two (at least 16, what tl.dot needs) and masked;
L and S may be any length, their last tiles masked.
"""

from __future__ import annotations

import math

import torch

import triton
import triton.language as tl

from ._common import FLOAT_DTYPES, dot_precision, interpreting
from .autotune import config, register_space, shape_key, tuned

LOG2_E = 1.4426950408889634
MAX_HEAD_DIM = 256

SPACE = register_space("attention", [
    config(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=2),
    config(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2),
    config(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3),
    config(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=4),
    config(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3),
    config(BLOCK_M=64, BLOCK_N=128, num_warps=4, num_stages=3),
    config(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3),
    config(BLOCK_M=128, BLOCK_N=32, num_warps=4, num_stages=4),
])


@triton.jit
def attention_kernel(
    q_ptr,                           # queries [B, H, L, D]
    k_ptr,                           # keys [B, H, S, D]
    v_ptr,                           # values [B, H, S, E]
    mask_ptr,                        # mask broadcast to [B, H, L, S] (ignored unless HAS_MASK)
    out_ptr,                         # output [B, H, L, E], q's dtype
    stride_qb, stride_qh, stride_ql, stride_qd,  # q strides (elements; 0 on broadcast axes)
    stride_kb, stride_kh, stride_ks, stride_kd,  # k strides
    stride_vb, stride_vh, stride_vs, stride_ve,  # v strides
    stride_mb, stride_mh, stride_ml, stride_ms,  # mask strides, 0 on the axes it broadcasts over
    stride_ob, stride_oh, stride_ol, stride_oe,  # output strides
    L,                               # query length
    S,                               # key / value length
    D,                               # head dim of q and k
    E,                               # head dim of v and the output
    scale_log2,                      # score scale times log2(e): scores are in base 2
    FOLD_SCALE: tl.constexpr,        # scale > 0 and no additive mask: scale inside the exponent
    HAS_MASK: tl.constexpr,          # read mask_ptr
    MASK_IS_BOOL: tl.constexpr,      # mask bytes are keep (1) / drop (0); else float, added
    EVEN_KEYS: tl.constexpr,         # S % BLOCK_N == 0: no key tile runs past S
    EVEN_DIMS: tl.constexpr,         # D == BLOCK_D and E == BLOCK_E: k and v rows need no mask
    DOT_PRECISION: tl.constexpr,     # tl.dot input precision (_common.dot_precision)
    UPCAST_DOT: tl.constexpr,        # feed tl.dot float32 copies (the interpreter's bf16 dot is wrong)
    BLOCK_M: tl.constexpr,           # query rows per program
    BLOCK_N: tl.constexpr,           # keys per step of the inner loop
    BLOCK_D: tl.constexpr,           # D padded up to a power of two (>= 16)
    BLOCK_E: tl.constexpr,           # E padded up to a power of two (>= 16)
):
    batch = tl.program_id(1).to(tl.int64)
    head = tl.program_id(2).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    d_ids = tl.arange(0, BLOCK_D)
    e_ids = tl.arange(0, BLOCK_E)
    key_ids = tl.arange(0, BLOCK_N)
    row_in_bounds = rows < L
    d_in_bounds = d_ids < D
    e_in_bounds = e_ids < E

    q_tile = q_ptr + batch * stride_qb + head * stride_qh
    q = tl.load(q_tile + rows[:, None] * stride_ql + d_ids[None, :] * stride_qd,
                mask=row_in_bounds[:, None] & d_in_bounds[None, :], other=0.0)
    if UPCAST_DOT:
        q = q.to(tl.float32)
    k_head = k_ptr + batch * stride_kb + head * stride_kh
    v_head = v_ptr + batch * stride_vb + head * stride_vh
    mask_head = mask_ptr + batch * stride_mb + head * stride_mh

    running_max = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
    running_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_E], dtype=tl.float32)
    for start in range(0, S, BLOCK_N):
        keys = start + key_ids
        key_in_bounds = keys < S
        # k is loaded transposed, [BLOCK_D, BLOCK_N], ready for q @ k^T.
        k_ptrs = k_head + keys[None, :] * stride_ks + d_ids[:, None] * stride_kd
        v_ptrs = v_head + keys[:, None] * stride_vs + e_ids[None, :] * stride_ve
        if EVEN_KEYS and EVEN_DIMS:  # the usual shapes: unpredicated loads
            k = tl.load(k_ptrs)
        else:
            k = tl.load(k_ptrs, mask=d_in_bounds[:, None] & key_in_bounds[None, :], other=0.0)
        if UPCAST_DOT:
            k = k.to(tl.float32)
        scores = tl.dot(q, k, input_precision=DOT_PRECISION)
        if not FOLD_SCALE:
            scores = scores * scale_log2
        # Rows past L are never stored: only masked keys and keys past S need a score of -inf.
        if HAS_MASK:
            mask = tl.load(mask_head + rows[:, None] * stride_ml + keys[None, :] * stride_ms,
                           mask=row_in_bounds[:, None] & key_in_bounds[None, :], other=0)
            if MASK_IS_BOOL:
                scores = tl.where(mask != 0, scores, float("-inf"))
            else:
                scores = scores + mask.to(tl.float32) * 1.4426950408889634
        if not EVEN_KEYS:
            scores = tl.where(key_in_bounds[None, :], scores, float("-inf"))

        if FOLD_SCALE:  # max(s * c) = max(s) * c for c > 0: the scale joins the shift in one FMA
            new_max = tl.maximum(running_max, tl.max(scores, axis=1) * scale_log2)
        else:
            new_max = tl.maximum(running_max, tl.max(scores, axis=1))
        if HAS_MASK or not EVEN_KEYS:  # a row can have seen only -inf scores so far
            shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        else:
            shift = new_max
        if FOLD_SCALE:
            probabilities = tl.exp2(scores * scale_log2 - shift[:, None])
        else:
            probabilities = tl.exp2(scores - shift[:, None])
        rescale = tl.exp2(running_max - shift)
        running_sum = running_sum * rescale + tl.sum(probabilities, axis=1)
        if EVEN_KEYS and EVEN_DIMS:
            v = tl.load(v_ptrs)
        else:
            v = tl.load(v_ptrs, mask=key_in_bounds[:, None] & e_in_bounds[None, :], other=0.0)
        # p is rounded to v's dtype for the tensor-core dot, also when the operands are upcast.
        probabilities = probabilities.to(v_ptr.dtype.element_ty)
        if UPCAST_DOT:
            v = v.to(tl.float32)
            probabilities = probabilities.to(tl.float32)
        # The dot accumulates into the rescaled tile in place (one MMA chain, no extra add).
        acc = tl.dot(probabilities, v, acc * rescale[:, None], input_precision=DOT_PRECISION)
        running_max = new_max

    # Fully masked rows have acc = 0 and running_sum = 0: divide by 1 to write zeros.
    out = acc / tl.where(running_sum == 0.0, 1.0, running_sum)[:, None]
    out_tile = out_ptr + batch * stride_ob + head * stride_oh
    tl.store(out_tile + rows[:, None] * stride_ol + e_ids[None, :] * stride_oe,
             out.to(out_ptr.dtype.element_ty), mask=row_in_bounds[:, None] & e_in_bounds[None, :])


def _check_operands(q, k, v, mask):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"attention {name} must be a torch tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"attention {name} must be 4-D [batch, heads, length, head dim], "
                             f"got shape {list(t.shape)}")
    if q.dtype not in FLOAT_DTYPES:
        raise ValueError(f"attention supports float16, bfloat16 and float32 q, k, v, got {q.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"attention q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"attention q and k must share the head dim, got q {list(q.shape)} "
                         f"and k {list(k.shape)}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"attention k and v must share the key length, got k {list(k.shape)} "
                         f"and v {list(v.shape)}")
    for name, size in (("q/k head dim", q.shape[-1]), ("v head dim", v.shape[-1])):
        if not 1 <= size <= MAX_HEAD_DIM:
            raise ValueError(f"attention {name} must be in 1..{MAX_HEAD_DIM}, got {size}")
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"attention mask must be a torch tensor or None, got {type(mask).__name__}")
        if mask.dtype != torch.bool and mask.dtype not in FLOAT_DTYPES:
            raise ValueError(f"attention mask must be bool or float, got {mask.dtype}")
    devices = {t.device for t in (q, k, v, mask) if t is not None}
    if len(devices) != 1:
        raise ValueError(f"attention operands must be on one device, got {sorted(map(str, devices))}")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              scale: float | None = None) -> torch.Tensor:
    """softmax(q @ k^T * scale + mask) @ v (op table `attention`), in q's dtype.

    q [B, H, L, D], k [B, H, S, D], v [B, H, S, E]: float16, bfloat16 or float32, any strides;
    their batch and head axes broadcast against each other. mask: None, bool (keep where true)
    or float (added), broadcastable to [B, H, L, S]. scale: default 1 / sqrt(D).
    """
    _check_operands(q, k, v, mask)
    try:
        batch, heads = torch.broadcast_shapes(q.shape[:2], k.shape[:2], v.shape[:2])
    except RuntimeError:
        raise ValueError(f"attention batch and head axes do not broadcast: q {list(q.shape)}, "
                         f"k {list(k.shape)}, v {list(v.shape)}") from None
    length, keys, head_dim, value_dim = q.shape[2], k.shape[2], q.shape[3], v.shape[3]
    scores_shape = (batch, heads, length, keys)
    if mask is not None:
        if not _broadcasts(mask.shape, scores_shape):
            raise ValueError(f"attention mask {list(mask.shape)} does not broadcast to the scores "
                             f"{list(scores_shape)} [batch, heads, L, S]")
        # expand() gives the broadcast axes stride 0; bool bytes are read as uint8 (1 = keep).
        mask = mask.expand(scores_shape)
        if mask.dtype == torch.bool:
            mask = mask.view(torch.uint8)
    q, k, v = (t.expand(batch, heads, *t.shape[2:]) for t in (q, k, v))
    out = torch.empty(batch, heads, length, value_dim, dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    mask_strides = mask.stride() if mask is not None else (0, 0, 0, 0)
    block_d = max(16, triton.next_power_of_2(head_dim))
    block_e = max(16, triton.next_power_of_2(value_dim))

    def launch(candidate):
        options = candidate.launch_options()
        grid = (triton.cdiv(length, options["BLOCK_M"]), batch, heads)
        attention_kernel[grid](
            q, k, v, q if mask is None else mask, out,
            *q.stride(), *k.stride(), *v.stride(), *mask_strides, *out.stride(),
            length, keys, head_dim, value_dim, float(scale) * LOG2_E,
            HAS_MASK=mask is not None, MASK_IS_BOOL=mask is not None and mask.dtype == torch.uint8,
            FOLD_SCALE=scale > 0 and (mask is None or mask.dtype == torch.uint8),
            EVEN_KEYS=keys % options["BLOCK_N"] == 0,
            EVEN_DIMS=head_dim == block_d and value_dim == block_e,
            DOT_PRECISION=dot_precision(q.dtype),
            UPCAST_DOT=interpreting() and q.dtype == torch.bfloat16,
            BLOCK_D=block_d, BLOCK_E=block_e,
            **options)

    mask_kind = "none" if mask is None else str(mask.dtype).removeprefix("torch.")
    key = shape_key(batch, heads, length, keys, head_dim, value_dim, q.element_size()) + "-" + mask_kind
    launch(tuned("attention", key, q, launch))
    return out


def _broadcasts(shape, target) -> bool:
    """Whether `shape` broadcasts to `target` (numpy's rule, without growing target)."""
    if len(shape) > len(target):
        return False
    return all(size in (1, want) for size, want in zip(reversed(shape), reversed(target)))


def benchmark_cases():
    """BERT-base self-attention in fp16, B=32, H=12, L=S=512, D=64, without and with key padding."""
    import torch.nn.functional as F

    from .bench import BenchCase, relative_error

    batch, heads, length, head_dim = 32, 12, 512, 64
    q, k, v = (torch.randn(batch, heads, length, head_dim, device="cuda", dtype=torch.float16)
               for _ in range(3))
    # Key padding: each sequence keeps its first n keys, n in [length / 2, length].
    kept = torch.randint(length // 2, length + 1, (batch,), device="cuda")
    padding = (torch.arange(length, device="cuda")[None, :] < kept[:, None])[:, None, None, :]

    def math_attention(q, k, v, mask):
        scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return torch.softmax(scores, dim=-1) @ v

    compiled = torch.compile(math_attention)
    cases = []
    for label, mask in (("no mask", None), ("key padding", padding)):
        def check(mask=mask):
            expected = math_attention(q.float(), k.float(), v.float(), mask)
            return relative_error(attention(q, k, v, mask), expected), 1e-2

        mask_bytes = 0 if mask is None else mask.numel()
        cases.append(BenchCase(
            name=f"attention fp16 B={batch} H={heads} L=S={length} D={head_dim} {label}",
            run=lambda mask=mask: attention(q, k, v, mask),
            check=check,
            flops=4.0 * batch * heads * length * length * head_dim,
            bytes=4.0 * q.numel() * q.element_size() + mask_bytes,
            peers={"torch sdpa": lambda mask=mask: F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                   "torch.compile": lambda mask=mask: compiled(q, k, v, mask)},
        ))
    return cases
