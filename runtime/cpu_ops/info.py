"""``TensorInfo``: what an execution plan records about one value.

It is read from artifacts, so ``from_json`` checks every field of untrusted data and raises a
ValueError (a ``TensorInfoError``) naming the field and the problem; the constructor runs the same
checks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .common import DTYPE_NAMES, int_range

# Bounds on untrusted data (the artifact reader uses the same rank bound).
MAX_RANK = 16
MAX_DIM_TEXT = 256
MAX_CHANNELS = 1 << 24
_SYMBOLIC_DIM = re.compile(r"[A-Za-z0-9_*+\-/() ]+")
_QUANTIZABLE = ("i8", "u8", "i32", "i64")
_FIELDS = ("dtype", "shape", "scale", "zero_point", "axis")
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class TensorInfoError(ValueError):
    """Tensor info that is malformed or inconsistent; the message names the field."""


@dataclass(frozen=True)
class TensorInfo:
    """A value's element type, shape and optional affine quantization.

    ``dtype`` is the IR's name ("f32", "f16", "bf16", "i8", "u8", "i32", "i64", "bool");
    ``shape`` holds ints, or strings for symbolic dims (e.g. "N", "4*N"); ``scale`` and
    ``zero_point`` are both given (integer dtypes only) or both None: one entry per tensor,
    or one per index of ``axis``. real = scale * (q - zero_point).
    """

    dtype: str
    shape: tuple
    scale: tuple[float, ...] | None = None
    zero_point: tuple[int, ...] | None = None
    axis: int | None = None

    def __post_init__(self):
        _check(self)

    @property
    def quant(self) -> TensorInfo | None:
        """The quantization parameters (``scale``, ``zero_point``, ``axis``), or None.

        They live on this object itself; the property lets the CPU ops read parameters as
        ``types[i].quant`` from a TensorInfo and from the compiler's TensorType alike.
        """
        return self if self.scale is not None else None

    @property
    def rank(self) -> int:
        return len(self.shape)

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape),
                "scale": None if self.scale is None else list(self.scale),
                "zero_point": None if self.zero_point is None else list(self.zero_point),
                "axis": self.axis}

    @staticmethod
    def from_json(data: Any) -> TensorInfo:
        """A TensorInfo from ``to_json``'s form; any other data raises ValueError saying why."""
        if not isinstance(data, Mapping):
            raise TensorInfoError(f"tensor info must be an object, got {_short(data)}")
        unknown = sorted(str(k) for k in data if k not in _FIELDS)
        if unknown:
            raise TensorInfoError(f"tensor info has unknown field '{unknown[0][:40]}'")
        for name in ("dtype", "shape"):
            if name not in data:
                raise TensorInfoError(f"tensor info lacks '{name}'")
        shape, scale, zero_point = data["shape"], data.get("scale"), data.get("zero_point")
        if not isinstance(shape, list):
            raise TensorInfoError(f"tensor info shape must be a list, got {_short(shape)}")
        if scale is not None and not isinstance(scale, list):
            raise TensorInfoError(f"tensor info scale must be a list or null, got {_short(scale)}")
        if zero_point is not None and not isinstance(zero_point, list):
            raise TensorInfoError(f"tensor info zero_point must be a list or null, got {_short(zero_point)}")
        return TensorInfo(data["dtype"], tuple(shape), None if scale is None else tuple(scale),
                          None if zero_point is None else tuple(zero_point), data.get("axis"))


def _check(info: TensorInfo) -> None:
    if not isinstance(info.dtype, str) or info.dtype not in DTYPE_NAMES:
        raise TensorInfoError(f"tensor info has unknown dtype {_short(info.dtype)} "
                         f"(known: {', '.join(DTYPE_NAMES)})")
    if not isinstance(info.shape, tuple):
        raise TensorInfoError(f"tensor info shape must be a tuple, got {_short(info.shape)}")
    if len(info.shape) > MAX_RANK:
        raise TensorInfoError(f"tensor info shape has rank {len(info.shape)}, more than {MAX_RANK}")
    for i, dim in enumerate(info.shape):
        if isinstance(dim, str):
            if not dim or len(dim) > MAX_DIM_TEXT or not _SYMBOLIC_DIM.fullmatch(dim):
                raise TensorInfoError(f"tensor info shape dim {i} is not a symbolic dim: {_short(dim)}")
        elif not _is_int(dim) or dim < 0:
            raise TensorInfoError(f"tensor info shape dim {i} must be a non-negative integer or a "
                             f"symbol, got {_short(dim)}")
    _check_quant(info)


def _check_quant(info: TensorInfo) -> None:
    scale, zero_point, axis = info.scale, info.zero_point, info.axis
    if scale is None or zero_point is None:
        if scale is not None or zero_point is not None or axis is not None:
            raise TensorInfoError("tensor info gives scale, zero_point and axis only together "
                             "(scale and zero_point both, or none of the three)")
        return
    if info.dtype not in _QUANTIZABLE:
        raise TensorInfoError(f"tensor info has quantization parameters on a {info.dtype} tensor")
    for name, values in (("scale", scale), ("zero_point", zero_point)):
        if not isinstance(values, tuple) or not 1 <= len(values) <= MAX_CHANNELS:
            raise TensorInfoError(f"tensor info {name} must be a non-empty tuple, got {_short(values)}")
    if len(scale) != len(zero_point):
        raise TensorInfoError(f"tensor info has {len(scale)} scales but {len(zero_point)} zero points")
    # A plan holds thousands of per-channel values (MobileNetV2's took 23 ms to check one by
    # one at load): plain floats and ints, as JSON gives them, are checked at once; the loops
    # name the first bad value otherwise.
    if not (set(map(type, scale)) <= _PLAIN_NUMBERS and _positive_float32(scale)):
        for s in scale:
            if isinstance(s, bool) or not isinstance(s, (int, float, np.integer, np.floating)) \
                    or not 0 < s <= _FLOAT32_MAX:  # also false for NaN and infinities
                raise TensorInfoError(f"tensor info scales must be positive finite float32 "
                                      f"values, got {_short(s)}")
    lo, hi = int_range(info.dtype)
    if not (set(map(type, zero_point)) <= _PLAIN_INT and lo <= min(zero_point)
            and max(zero_point) <= hi):
        for z in zero_point:
            if not _is_int(z) or not lo <= z <= hi:
                raise TensorInfoError(f"tensor info zero point {_short(z)} is not an integer in "
                                      f"{info.dtype}'s range [{lo}, {hi}]")
    if axis is None:
        if len(scale) != 1:
            raise TensorInfoError(f"tensor info has {len(scale)} scales without an axis "
                             "(per-tensor quantization takes one)")
        return
    if not _is_int(axis) or not 0 <= axis < len(info.shape):
        raise TensorInfoError(f"tensor info quantization axis {_short(axis)} out of range for rank "
                         f"{len(info.shape)}")
    size = info.shape[axis]
    if _is_int(size) and size != len(scale):
        raise TensorInfoError(f"tensor info has {len(scale)} scales for axis {axis} of size {size}")


_PLAIN_NUMBERS = frozenset({float, int})
_PLAIN_INT = frozenset({int})


def _positive_float32(values: tuple) -> bool:
    try:
        array = np.array(values, dtype=np.float64)
    except OverflowError:  # an int past float64's range
        return False
    return bool(np.all((array > 0) & (array <= _FLOAT32_MAX)))  # NaN fails both


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
