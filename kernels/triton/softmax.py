"""Softmax over the last axis: y = exp(x - max(x)) / sum(exp(x - max(x))), row by row.

Any input is viewed as a matrix [rows, cols] whose rows are the last axis. Loads are upcast to
float32, all math is float32, and the result is stored in the input's dtype.

Two kernels, chosen by the row length:

* `softmax_rows_kernel` (rows up to _rows.MAX_SINGLE_BLOCK_COLS): a program loads a tile of
  ROWS_PER_PROGRAM whole rows into registers, padded up to a power of two with -inf (which
  contributes exp(-inf) = 0 to the sum), and does max, exp, sum and divide there: the input is
  read once and the output written once, the least memory traffic softmax can have. Several
  rows per program keep short rows (e.g. attention scores of 512) from leaving most lanes idle.

* `softmax_looped_kernel` (longer rows): a row no longer fits in registers, so a program walks
  it in BLOCK_COLS chunks with the online softmax of Milakov & Gimelshein: a running maximum m
  and a running sum s of exp(x - m), rescaled by exp(m_old - m_new) whenever the maximum grows.
  A second pass over the row writes exp(x - m) / s. The row is read twice, for any length.

A row that holds -inf in every element of a chunk seen so far keeps m = -inf; the shift used
for exp is then 0 rather than -inf, so no exp(-inf - -inf) = NaN enters the running sum.
"""

from __future__ import annotations

import torch

import triton
import triton.language as tl

from ._rows import LOOPED_CONFIGS, ROWS_CONFIGS, check_input, launch_rowwise, looped_row, row_block
from .autotune import config, register_space

ROWS_SPACE = register_space("softmax_rows", [
    *ROWS_CONFIGS,
    config(ROWS_PER_PROGRAM=8, num_warps=8, num_stages=1),
])

LOOPED_SPACE = register_space("softmax_looped", [
    *LOOPED_CONFIGS,
    config(BLOCK_COLS=4096, num_warps=16, num_stages=2),
])


@triton.jit
def softmax_rows_kernel(
    x_ptr,                          # input [rows, cols], row-major
    y_ptr,                          # output [rows, cols], row-major, the input's dtype
    rows,                           # number of rows
    cols,                           # number of columns (the softmax axis)
    row_stride,                     # elements between consecutive rows of x and y
    ROWS_PER_PROGRAM: tl.constexpr,  # rows handled by one program
    BLOCK_COLS: tl.constexpr,       # power of two >= cols: a whole row in one block
):
    _, _, in_bounds, offsets = row_block(rows, cols, row_stride, ROWS_PER_PROGRAM, BLOCK_COLS)

    x = tl.load(x_ptr + offsets, mask=in_bounds, other=float("-inf")).to(tl.float32)
    row_max = tl.max(x, axis=1)
    # Rows past the end are all -inf; shift them by 0 so that they stay NaN-free (never stored).
    shift = tl.where(row_max == float("-inf"), 0.0, row_max)
    numerator = tl.exp(x - shift[:, None])
    denominator = tl.sum(numerator, axis=1)
    y = numerator / denominator[:, None]
    tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=in_bounds)


@triton.jit
def softmax_looped_kernel(
    x_ptr,                          # input [rows, cols], row-major
    y_ptr,                          # output [rows, cols], row-major, the input's dtype
    cols,                           # number of columns (the softmax axis)
    row_stride,                     # elements between consecutive rows of x and y
    BLOCK_COLS: tl.constexpr,       # columns per chunk of the row
):
    x_row, y_row, col_ids = looped_row(x_ptr, y_ptr, row_stride, BLOCK_COLS)

    # Pass 1: running maximum and running sum of exp(x - maximum), rescaled as the maximum grows.
    running_max = float("-inf")
    running_sum = 0.0
    for start in range(0, cols, BLOCK_COLS):
        in_bounds = start + col_ids < cols
        x = tl.load(x_row + start + col_ids, mask=in_bounds, other=float("-inf")).to(tl.float32)
        new_max = tl.maximum(running_max, tl.max(x, axis=0))
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        running_sum = running_sum * tl.exp(running_max - shift) + tl.sum(tl.exp(x - shift), axis=0)
        running_max = new_max

    # Pass 2: normalize with the final maximum and sum.
    inverse_sum = 1.0 / running_sum
    for start in range(0, cols, BLOCK_COLS):
        in_bounds = start + col_ids < cols
        x = tl.load(x_row + start + col_ids, mask=in_bounds, other=float("-inf")).to(tl.float32)
        y = tl.exp(x - running_max) * inverse_sum
        tl.store(y_row + start + col_ids, y.to(y_ptr.dtype.element_ty), mask=in_bounds)


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax of `x` over its last axis (op table `softmax`, axis=-1), in x's dtype.

    x: a contiguous float16, bfloat16 or float32 tensor of rank >= 1.
    """
    check_input("softmax", x)
    return launch_rowwise("softmax", x, softmax_rows_kernel, softmax_looped_kernel)


def benchmark_cases():
    """Softmax of fp16 rows: a square [4096, 4096] and BERT-base attention scores (512 wide)."""
    from .bench import BenchCase, relative_error

    cases = []
    for rows, cols in [(4096, 4096), (32 * 12 * 512, 512)]:
        x = torch.randn(rows, cols, device="cuda", dtype=torch.float16) * 4

        def eager(x=x):
            return torch.softmax(x, dim=-1)

        def check(x=x):
            return relative_error(softmax(x), torch.softmax(x.float(), dim=-1)), 5e-3

        cases.append(BenchCase(
            name=f"softmax fp16 {rows}x{cols}",
            run=lambda x=x: softmax(x),
            check=check,
            flops=5.0 * rows * cols,
            bytes=2.0 * rows * cols * x.element_size(),
            peers={"torch eager": eager, "torch.compile": torch.compile(eager)},
        ))
    return cases
