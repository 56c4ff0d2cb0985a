"""Helpers shared by the CPU op families: element types by name, float32 computation, axes and
sliding-window sizes. The compiler's op table imports these, so both run one definition."""

from __future__ import annotations

import functools

import numpy as np

# The IR's element types by name; bf16 is the one numpy lacks (see ``numpy_dtype``).
DTYPE_NAMES = ("f32", "f16", "bf16", "i8", "u8", "i32", "i64", "bool")
_NUMPY_DTYPES = {
    "f32": np.dtype(np.float32),
    "f16": np.dtype(np.float16),
    "i8": np.dtype(np.int8),
    "u8": np.dtype(np.uint8),
    "i32": np.dtype(np.int32),
    "i64": np.dtype(np.int64),
    "bool": np.dtype(np.bool_),
}


def numpy_dtype(name) -> np.dtype:
    """The numpy dtype of an IR element type, given by name (or by anything whose str is one).

    bf16 comes from ml_dtypes, which the compiler installs and the runtime does not; asking
    for it without ml_dtypes is a ValueError that says so.
    """
    name = str(name)
    if name == "bf16":
        try:
            import ml_dtypes
        except ImportError:
            raise ValueError("bf16 needs the ml_dtypes package, which is not installed") from None
        return np.dtype(ml_dtypes.bfloat16)
    try:
        return _NUMPY_DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype '{name}' (known: {', '.join(DTYPE_NAMES)})") from None


def int_range(name) -> tuple[int, int]:
    """[min, max] of an integer element type given by name."""
    return _int_range(str(name))


@functools.lru_cache(maxsize=None)
def _int_range(name: str) -> tuple[int, int]:  # np.iinfo costs microseconds on every layer run
    info = np.iinfo(numpy_dtype(name))
    return int(info.min), int(info.max)


def is_float_array(array: np.ndarray) -> bool:
    """True for numpy floats and for bfloat16 (an extension dtype numpy reports as kind 'V')."""
    kind = array.dtype.kind  # np.issubdtype took a microsecond, as long as a small kernel
    return kind == "f" or kind == "V" and array.dtype.name == "bfloat16"


_FLOAT32 = np.dtype(np.float32)


def in_float32(fn):
    """Run a float reference in float32 (f16/bf16 inputs upcast) and cast back to the input dtype."""

    def run(arrays, attrs):
        # A plain loop: generator expressions here cost a microsecond per op.
        dtype, upcast = None, False
        for a in arrays:
            if a is not None:
                dtype = a.dtype if dtype is None else dtype
                upcast = upcast or a.dtype != _FLOAT32 and is_float_array(a)
        # float32 operands pass through uncopied: kernels never write into their inputs.
        if upcast:
            arrays_f32 = [a.astype(np.float32, copy=False) if a is not None and is_float_array(a) else a
                          for a in arrays]
        else:
            arrays_f32 = arrays
        out = fn(arrays_f32, attrs)
        if isinstance(out, list):
            return [_fresh(o.astype(dtype, copy=False), arrays) for o in out]
        return _fresh(np.asarray(out).astype(dtype, copy=False), arrays)

    return run


def _fresh(out: np.ndarray, inputs) -> np.ndarray:
    """``out``, copied where it is one of the operands (a result never aliases an input)."""
    for a in inputs:
        if out is a:
            return out.copy()
    return out


def normalize_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise ValueError(f"axis {axis} out of range for rank {rank}")
    return axis % rank if rank else 0


def window_output_size(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int,
                       dilation: int = 1, ceil_mode: bool = False) -> int:
    """Output length of a sliding window over a static size, torch's rule for ceil_mode."""
    span = dilation * (kernel - 1) + 1
    numerator = size + pad_begin + pad_end - span
    if numerator < 0:
        raise ValueError(f"window of {span} does not fit input of {size} with padding")
    out = (-(-numerator // stride) if ceil_mode else numerator // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad_begin:
        out -= 1  # the last window must start inside the input or the left padding
    return out


def nhwc(x: np.ndarray) -> np.ndarray:
    """The NHWC view of an NCHW array (C-contiguous when x is a view of NHWC memory)."""
    return x.transpose(0, 2, 3, 1)


def in_nhwc_memory(x: np.ndarray, dtype) -> bool:
    """x is an NCHW view of NHWC memory of `dtype` (what 4-D steps return), not C-contiguous
    itself: an elementwise kernel can run over nhwc(x) in place order."""
    return (x.ndim == 4 and x.dtype == dtype and not x.flags.c_contiguous
            and nhwc(x).flags.c_contiguous)
