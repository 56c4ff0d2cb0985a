"""Element types between torch and the IR: the mapping, torch's promotion rule, tensor data."""

from __future__ import annotations

import numpy as np
import torch

from ..dtypes import DType

TORCH_TO_IR = {
    torch.float32: DType.f32,
    torch.float16: DType.f16,
    torch.bfloat16: DType.bf16,
    torch.int8: DType.i8,
    torch.uint8: DType.u8,
    torch.int32: DType.i32,
    torch.int64: DType.i64,
    torch.bool: DType.bool,
}
IR_TO_TORCH = {ir: pt for pt, ir in TORCH_TO_IR.items()}


def ir_dtype(dtype: torch.dtype) -> DType:
    try:
        return TORCH_TO_IR[dtype]
    except KeyError:
        known = ", ".join(str(d) for d in TORCH_TO_IR)
        raise TypeError(f"torch dtype {dtype} has no IR element type (supported: {known})") from None


def has_ir_dtype(dtype: torch.dtype) -> bool:
    return dtype in TORCH_TO_IR


def promoted_dtype(a, b) -> DType:
    """torch's result dtype for an elementwise op over two operands, IR values or Python scalars.

    A value stands in as an empty torch tensor of its dtype and rank, because torch lets a 0-d
    tensor or a scalar raise only the category (bool < int < float), not the width.
    """
    return ir_dtype(torch.result_type(_stand_in(a), _stand_in(b)))


def _stand_in(operand):
    if isinstance(operand, (bool, int, float)):
        return operand
    return torch.empty((0,) * operand.type.rank, dtype=IR_TO_TORCH[operand.type.dtype])


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A contiguous numpy copy; bfloat16 goes through float32, which holds it exactly."""
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.float().numpy().astype(DType.bf16.numpy)
    return tensor.numpy().copy()
