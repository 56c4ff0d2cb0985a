"""Names, strings and floats of the text form, each printed so that it reads back exactly.

Floats print as the shortest decimal that rounds back to the same value of their own width
(f32, f16 and bf16 alike), and read back with correct rounding to that width: going through
float64 first could round twice and land one step off.
"""

from __future__ import annotations

import functools
import json
import re
from fractions import Fraction

import numpy as np

from ..dtypes import DType

BARE_NAME = re.compile(r"[A-Za-z0-9_.]+")
PASS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")

_BITS_TYPES = {2: np.uint16, 4: np.uint32}


def format_string(text: str) -> str:
    """A double-quoted string with JSON escapes."""
    return json.dumps(text, ensure_ascii=False)


def decode_string(token: str) -> str:
    return json.loads(token)


def format_name(name: str) -> str:
    """A name bare when it is letters, digits, '_' and '.', else quoted."""
    return name if BARE_NAME.fullmatch(name) else format_string(name)


def decode_name(token: str) -> str:
    """The name in a token such as ``%x``, ``@conv1.weight``, ``@"odd name"`` or ``output``."""
    if token[:1] in "%@":
        token = token[1:]
    return decode_string(token) if token.startswith('"') else token


def format_pass_name(name: str) -> str:
    return name if PASS_NAME.fullmatch(name) else format_string(name)


def format_float(value, dtype: DType) -> str:
    """The shortest text that reads back as the same ``dtype`` value."""
    if dtype == DType.bf16:
        return _bf16_text(int(np.asarray(value, dtype.numpy).view(np.uint16)))
    return str(dtype.numpy.type(value))


@functools.cache
def _bf16_text(bits: int) -> str:
    # ml_dtypes prints six significant digits; search for the fewest that still round-trip.
    value = float(np.asarray(bits, np.uint16).view(DType.bf16.numpy))
    if not np.isfinite(value):
        return str(np.float32(value))
    for digits in range(1, 10):
        text = repr(float(f"{value:.{digits - 1}e}"))
        if float_bits(text, DType.bf16) == bits:
            return text
    raise AssertionError(f"no decimal reads back as bf16 bits {bits:#06x}")


def float_bits(text: str, dtype: DType) -> int:
    """The bit pattern of ``text`` rounded to nearest ``dtype`` value, ties to even.

    ``text`` is a decimal (``-1.5e-05``), ``inf`` or ``nan``, optionally with a leading '-'.
    """
    bits_type = _BITS_TYPES[dtype.itemsize]
    sign = 1 << (8 * dtype.itemsize - 1) if text.startswith("-") else 0
    magnitude = text.removeprefix("-")
    if magnitude in ("inf", "nan"):
        return int(np.asarray(float(magnitude), dtype.numpy).view(bits_type)) | sign
    # float64 first gets within one step of the answer; exact arithmetic picks the nearest.
    with np.errstate(over="ignore"):
        guess = int(np.asarray(float(magnitude)).astype(dtype.numpy).view(bits_type))
    infinity = int(np.asarray(np.inf, dtype.numpy).view(bits_type))
    exact = Fraction(magnitude)
    candidates = [b for b in (guess - 1, guess, guess + 1) if 0 <= b <= infinity]
    return sign | min(candidates,
                      key=lambda b: (abs(_exact_value(b, dtype, infinity) - exact), b & 1))


def _exact_value(bits: int, dtype: DType, infinity: int) -> Fraction:
    """The value of a non-negative bit pattern; infinity counts as the next step past the
    largest finite value, which makes round-to-nearest overflow exactly where IEEE 754 does."""
    if bits == infinity:
        largest = _exact_value(bits - 1, dtype, infinity)
        return 2 * largest - _exact_value(bits - 2, dtype, infinity)
    as_float = np.asarray(bits, _BITS_TYPES[dtype.itemsize]).view(dtype.numpy)
    return Fraction(float(as_float))
