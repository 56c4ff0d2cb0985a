"""What the row-wise kernels (softmax, layer norm) share: the input checks, the view of any input
as a matrix [rows, cols] whose rows are the last axis, the choice between a single-block kernel
and a looped one, and the index arithmetic at the start of both kernels.

* The single-block kernel (rows up to MAX_SINGLE_BLOCK_COLS, after rounding up to a power of
  two) holds ROWS_PER_PROGRAM whole rows in registers; ROWS_PER_PROGRAM is capped so that a
  tile stays within MAX_TILE_ELEMENTS (wide rows go one at a time).
* The looped kernel (longer rows) gives each program one row, walked in BLOCK_COLS chunks.
"""

from __future__ import annotations

import torch

import triton
import triton.language as tl

from ._common import FLOAT_DTYPES
from .autotune import config, shape_key, tuned

# Widest row (in elements, after rounding up to a power of two) held in registers at once.
MAX_SINGLE_BLOCK_COLS = 8192
# At most this many elements per program in the single-block kernel (ROWS_PER_PROGRAM x cols).
MAX_TILE_ELEMENTS = 16384

# Tuning candidates that every row-wise op tries (each module's space may add its own); the first
# of each list is what the interpreter runs.
# Single-block kernels: (ROWS_PER_PROGRAM, num_warps, num_stages).
ROWS_CONFIGS = (
    config(ROWS_PER_PROGRAM=1, num_warps=4, num_stages=1),
    config(ROWS_PER_PROGRAM=1, num_warps=8, num_stages=1),
    config(ROWS_PER_PROGRAM=1, num_warps=16, num_stages=1),
    config(ROWS_PER_PROGRAM=2, num_warps=4, num_stages=1),
    config(ROWS_PER_PROGRAM=4, num_warps=4, num_stages=1),
    config(ROWS_PER_PROGRAM=4, num_warps=8, num_stages=1),
)
# Looped kernels: (BLOCK_COLS, num_warps, num_stages).
LOOPED_CONFIGS = (
    config(BLOCK_COLS=64, num_warps=4, num_stages=1),
    config(BLOCK_COLS=1024, num_warps=4, num_stages=2),
    config(BLOCK_COLS=2048, num_warps=8, num_stages=2),
    config(BLOCK_COLS=4096, num_warps=8, num_stages=2),
)


def check_input(op: str, x) -> None:
    """Raise unless x is a contiguous float16, bfloat16 or float32 tensor of rank >= 1."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op} needs a torch tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{op} supports float16, bfloat16 and float32 inputs, got {x.dtype}")
    if x.dim() == 0:
        raise ValueError(f"{op} needs an input of rank >= 1, got a scalar")
    if not x.is_contiguous():
        raise ValueError(f"{op} needs a contiguous input, got strides {tuple(x.stride())} "
                         f"for shape {tuple(x.shape)}; call .contiguous() first")


def launch_rowwise(name: str, x: torch.Tensor, rows_kernel, looped_kernel,
                   **arguments) -> torch.Tensor:
    """y = the row-wise op of x (checked by `check_input`) in x's dtype, x viewed as [rows, cols].

    Rows up to MAX_SINGLE_BLOCK_COLS go to `rows_kernel` (tuned as `name`_rows), longer ones to
    `looped_kernel` (tuned as `name`_looped). Both take x, y, cols= and row_stride= and the
    `arguments` (the op's own operands and flags); `rows_kernel` also takes rows= and BLOCK_COLS=.
    """
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    cols = x.shape[-1]
    rows = x.numel() // cols
    block_cols = triton.next_power_of_2(cols)
    key = shape_key(rows, cols, x.element_size())

    if block_cols <= MAX_SINGLE_BLOCK_COLS:
        def launch(candidate):
            options = candidate.launch_options()
            # Keep a tile within MAX_TILE_ELEMENTS registers' worth: wide rows go one at a time.
            options["ROWS_PER_PROGRAM"] = max(1, min(options["ROWS_PER_PROGRAM"],
                                                     MAX_TILE_ELEMENTS // block_cols))
            grid = (triton.cdiv(rows, options["ROWS_PER_PROGRAM"]),)
            rows_kernel[grid](x, y, rows=rows, cols=cols, row_stride=cols, BLOCK_COLS=block_cols,
                              **arguments, **options)

        launch(tuned(f"{name}_rows", key, x, launch))
    else:
        def launch(candidate):
            looped_kernel[(rows,)](x, y, cols=cols, row_stride=cols, **arguments,
                                   **candidate.launch_options())

        launch(tuned(f"{name}_looped", key, x, launch))
    return y


@triton.jit
def row_block(rows, cols, row_stride, ROWS_PER_PROGRAM: tl.constexpr, BLOCK_COLS: tl.constexpr):
    """The single-block kernels' tile: this program's ROWS_PER_PROGRAM rows, whole.

    rows, cols: the matrix's size; row_stride: elements between consecutive rows.
    Returns (col_ids [BLOCK_COLS], col_in_bounds [BLOCK_COLS], in_bounds and offsets
    [ROWS_PER_PROGRAM, BLOCK_COLS]): the tile's columns, which of them lie inside the row, which
    elements lie inside the matrix, and their offsets (int64) from the start of x and y.
    """
    first_row = tl.program_id(0).to(tl.int64) * ROWS_PER_PROGRAM
    row_ids = first_row + tl.arange(0, ROWS_PER_PROGRAM)
    col_ids = tl.arange(0, BLOCK_COLS)
    col_in_bounds = col_ids < cols
    in_bounds = (row_ids[:, None] < rows) & col_in_bounds[None, :]
    offsets = row_ids[:, None] * row_stride + col_ids[None, :]
    return col_ids, col_in_bounds, in_bounds, offsets


@triton.jit
def looped_row(x_ptr, y_ptr, row_stride, BLOCK_COLS: tl.constexpr):
    """The looped kernels' row: pointers to the start of this program's row in x and y (one row
    per program, row_stride elements apart) and the column ids 0..BLOCK_COLS - 1 of a chunk."""
    row = tl.program_id(0).to(tl.int64)
    return x_ptr + row * row_stride, y_ptr + row * row_stride, tl.arange(0, BLOCK_COLS)
