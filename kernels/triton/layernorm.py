"""Layer normalization over the last axis: y = (x - mean) / sqrt(var + eps) * weight + bias.

Any input is viewed as a matrix [rows, cols] whose rows are the last axis; weight and bias
(optional, shape [cols]) scale and shift every row. Statistics and math are float32 whatever the
input dtype (float16, bfloat16, float32); the result is stored in the input's dtype. The
variance is the biased one (divided by cols), as the op table and torch use.

Two kernels, chosen by the row length:

* `layer_norm_rows_kernel` (rows up to _rows.MAX_SINGLE_BLOCK_COLS): a program loads ROWS_PER_PROGRAM
  whole rows into registers and computes the mean, then the variance as the mean of
  (x - mean)^2: two passes over registers, not over memory, so no cancellation from
  E[x^2] - E[x]^2 and one read of the input.

* `layer_norm_looped_kernel` (longer rows): a program walks its row in BLOCK_COLS chunks. Each
  chunk's count, mean and sum of squared deviations (M2) are computed exactly in registers, then
  merged into the running statistics with Chan's parallel form of Welford's update:

      delta = mean_b - mean_a,  n = n_a + n_b
      mean  = mean_a + delta * n_b / n
      M2    = M2_a + M2_b + delta^2 * n_a * n_b / n

  A second pass over the row normalizes and writes it: two reads of the input for any width.
"""

from __future__ import annotations

import torch

import triton
import triton.language as tl

from ._common import FLOAT_DTYPES
from ._rows import LOOPED_CONFIGS, ROWS_CONFIGS, check_input, launch_rowwise, looped_row, row_block
from .autotune import register_space

ROWS_SPACE = register_space("layer_norm_rows", list(ROWS_CONFIGS))

LOOPED_SPACE = register_space("layer_norm_looped", list(LOOPED_CONFIGS))


@triton.jit
def layer_norm_rows_kernel(
    x_ptr,                          # input [rows, cols], row-major
    y_ptr,                          # output [rows, cols], row-major, the input's dtype
    weight_ptr,                     # scale [cols] (ignored unless HAS_WEIGHT)
    bias_ptr,                       # shift [cols] (ignored unless HAS_BIAS)
    rows,                           # number of rows
    cols,                           # number of columns (the normalized axis)
    row_stride,                     # elements between consecutive rows of x and y
    eps,                            # added to the variance before the square root
    HAS_WEIGHT: tl.constexpr,       # multiply by weight
    HAS_BIAS: tl.constexpr,         # add bias
    ROWS_PER_PROGRAM: tl.constexpr,  # rows handled by one program
    BLOCK_COLS: tl.constexpr,       # power of two >= cols: a whole row in one block
):
    col_ids, col_in_bounds, in_bounds, offsets = row_block(rows, cols, row_stride,
                                                           ROWS_PER_PROGRAM, BLOCK_COLS)

    x = tl.load(x_ptr + offsets, mask=in_bounds, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / cols
    # Padding columns must not add (0 - mean)^2 to the variance.
    centered = tl.where(in_bounds, x - mean[:, None], 0.0)
    variance = tl.sum(centered * centered, axis=1) / cols
    y = centered * tl.rsqrt(variance + eps)[:, None]
    if HAS_WEIGHT:
        y = y * tl.load(weight_ptr + col_ids, mask=col_in_bounds, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + col_ids, mask=col_in_bounds, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=in_bounds)


@triton.jit
def layer_norm_looped_kernel(
    x_ptr,                          # input [rows, cols], row-major
    y_ptr,                          # output [rows, cols], row-major, the input's dtype
    weight_ptr,                     # scale [cols] (ignored unless HAS_WEIGHT)
    bias_ptr,                       # shift [cols] (ignored unless HAS_BIAS)
    cols,                           # number of columns (the normalized axis)
    row_stride,                     # elements between consecutive rows of x and y
    eps,                            # added to the variance before the square root
    HAS_WEIGHT: tl.constexpr,       # multiply by weight
    HAS_BIAS: tl.constexpr,         # add bias
    BLOCK_COLS: tl.constexpr,       # columns per chunk of the row
):
    x_row, y_row, col_ids = looped_row(x_ptr, y_ptr, row_stride, BLOCK_COLS)

    # Pass 1: merge each chunk's exact (count, mean, M2) into the running statistics.
    count = 0.0
    mean = 0.0
    sum_squared_deviations = 0.0
    for start in range(0, cols, BLOCK_COLS):
        in_bounds = start + col_ids < cols
        x = tl.load(x_row + start + col_ids, mask=in_bounds, other=0.0).to(tl.float32)
        chunk_count = tl.minimum(cols - start, BLOCK_COLS).to(tl.float32)
        chunk_mean = tl.sum(x, axis=0) / chunk_count
        chunk_centered = tl.where(in_bounds, x - chunk_mean, 0.0)
        chunk_m2 = tl.sum(chunk_centered * chunk_centered, axis=0)
        merged_count = count + chunk_count
        delta = chunk_mean - mean
        mean = mean + delta * (chunk_count / merged_count)
        sum_squared_deviations = (sum_squared_deviations + chunk_m2
                                  + delta * delta * (count * chunk_count / merged_count))
        count = merged_count
    inverse_std = tl.rsqrt(sum_squared_deviations / count + eps)

    # Pass 2: normalize, scale, shift and store.
    for start in range(0, cols, BLOCK_COLS):
        in_bounds = start + col_ids < cols
        x = tl.load(x_row + start + col_ids, mask=in_bounds, other=0.0).to(tl.float32)
        y = (x - mean) * inverse_std
        if HAS_WEIGHT:
            y = y * tl.load(weight_ptr + start + col_ids, mask=in_bounds, other=0.0).to(tl.float32)
        if HAS_BIAS:
            y = y + tl.load(bias_ptr + start + col_ids, mask=in_bounds, other=0.0).to(tl.float32)
        tl.store(y_row + start + col_ids, y.to(y_ptr.dtype.element_ty), mask=in_bounds)


def _check_affine(name: str, param, x: torch.Tensor) -> None:
    if param is None:
        return
    if not isinstance(param, torch.Tensor):
        raise TypeError(f"layer_norm {name} must be a torch tensor or None, got {type(param).__name__}")
    if tuple(param.shape) != (x.shape[-1],):
        raise ValueError(f"layer_norm {name} must have shape [{x.shape[-1]}] (the input's last axis), "
                         f"got {list(param.shape)}")
    if param.dtype not in FLOAT_DTYPES:
        raise ValueError(f"layer_norm {name} must be float16, bfloat16 or float32, got {param.dtype}")
    if param.device != x.device:
        raise ValueError(f"layer_norm {name} is on {param.device} but the input is on {x.device}")
    if not param.is_contiguous():
        raise ValueError(f"layer_norm {name} must be contiguous")


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               eps: float = 1e-5) -> torch.Tensor:
    """Layer norm of `x` over its last axis (op table `layer_norm`, axis=-1), in x's dtype.

    x: a contiguous float16, bfloat16 or float32 tensor of rank >= 1;
    weight, bias: optional [x.shape[-1]] float tensors; eps: added to the variance.
    """
    check_input("layer_norm", x)
    _check_affine("weight", weight, x)
    _check_affine("bias", bias, x)
    if not eps >= 0:
        raise ValueError(f"layer_norm eps must be >= 0, got {eps}")
    # Absent weight or bias: pass x as a stand-in pointer that the kernel never reads.
    return launch_rowwise("layer_norm", x, layer_norm_rows_kernel, layer_norm_looped_kernel,
                          weight_ptr=x if weight is None else weight,
                          bias_ptr=x if bias is None else bias, eps=float(eps),
                          HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None)


def benchmark_cases():
    """fp16 layer norm with weight and bias: BERT-base activations and a wide [8192, 4096]."""
    import torch.nn.functional as F

    from .bench import BenchCase, relative_error

    cases = []
    for rows, cols in [(32 * 512, 768), (8192, 4096)]:
        x = torch.randn(rows, cols, device="cuda", dtype=torch.float16) * 3 + 1
        weight = torch.randn(cols, device="cuda", dtype=torch.float16)
        bias = torch.randn(cols, device="cuda", dtype=torch.float16)

        def eager(x=x, weight=weight, bias=bias):
            return F.layer_norm(x, (x.shape[-1],), weight, bias, 1e-5)

        def check(x=x, weight=weight, bias=bias):
            expected = F.layer_norm(x.float(), (x.shape[-1],), weight.float(), bias.float(), 1e-5)
            return relative_error(layer_norm(x, weight, bias), expected), 5e-3

        cases.append(BenchCase(
            name=f"layer_norm fp16 {rows}x{cols}",
            run=lambda x=x, weight=weight, bias=bias: layer_norm(x, weight, bias),
            check=check,
            flops=8.0 * rows * cols,
            bytes=(2.0 * rows * cols + 2.0 * cols) * x.element_size(),
            peers={"torch eager": eager, "torch.compile": torch.compile(eager)},
        ))
    return cases
