"""Shape rules and small helpers shared by several op families."""

from __future__ import annotations

from typing import Sequence

from nimbus.runtime.cpu_ops import common as _runtime_common
from nimbus.runtime.cpu_ops.common import in_float32, is_float_array, normalize_axis  # noqa: F401

from ..dims import Dim, simplify
from ..dtypes import DType
from ..ir import TensorType


def broadcast_shapes(*shapes: Sequence[Dim]) -> tuple[Dim, ...]:
    """Numpy broadcasting over possibly symbolic dims (a symbol only matches itself or 1)."""
    rank = max(len(s) for s in shapes)
    result = []
    for axis in range(rank):
        dims = [s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0]
        chosen: Dim = 1
        for d in dims:
            if d == 1 or d == chosen:
                continue
            if chosen != 1:
                raise ValueError(f"shapes {', '.join(map(_shape_text, shapes))} do not broadcast")
            chosen = d
        result.append(chosen)
    return tuple(result)


def _shape_text(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def require_rank(t: TensorType, rank: int, what: str) -> None:
    if t.rank != rank:
        raise ValueError(f"{what} must have rank {rank}, got {t}")


def require_same_dtype(types: Sequence[TensorType | None], what: str) -> DType:
    dtypes = {t.dtype for t in types if t is not None}
    if len(dtypes) != 1:
        names = ", ".join(str(t) for t in types if t is not None)
        raise ValueError(f"{what} must share one dtype, got {names}")
    return dtypes.pop()


def require_float(t: TensorType, what: str) -> None:
    if not t.dtype.is_float:
        raise ValueError(f"{what} must be a float tensor, got {t}")


def elements(t: TensorType) -> Dim:
    return t.num_elements()


def window_output_size(size: Dim, kernel: int, stride: int, pad_begin: int, pad_end: int,
                       dilation: int = 1, ceil_mode: bool = False) -> Dim:
    """Output length of a sliding window (convolution or pooling), torch's rule for ceil_mode."""
    if isinstance(size, int):
        return _runtime_common.window_output_size(size, kernel, stride, pad_begin, pad_end,
                                                  dilation, ceil_mode)
    span = dilation * (kernel - 1) + 1
    if ceil_mode:
        raise ValueError("ceil_mode over a symbolic spatial size is not supported")
    from ..dims import floordiv

    return simplify(floordiv(size + pad_begin + pad_end - span, stride) + 1)
