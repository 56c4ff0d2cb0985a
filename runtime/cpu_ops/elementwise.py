"""Elementwise ops: activations, math functions, arithmetic, comparisons, logic, select, cast.

Float ops compute in float32 (f16/bf16 upcast) and round once to the operand dtype, as the
compiler's references do. Without scipy, ``erf`` (float64) is a Maclaurin series near zero and a
continued fraction for erfc in the tails (absolute error below 1e-13); ``gelu`` built on it is the
compiler's reference. The erf and gelu kernels evaluate a rational approximation of erf instead
(max absolute error 1.6e-9, evaluated in float64 in cache-sized chunks, rounded once to float32),
within float32 rounding of the exact function and about 20x faster.
"""

from __future__ import annotations

import numpy as np

from .. import _kernels
from .common import in_float32, in_nhwc_memory, nhwc, numpy_dtype
from .registry import NATIVE_THREADS, kernel, without_types

# Attribute defaults of the elementwise ops that have attributes: fused expressions print only
# attributes that differ from them (a test holds these to the op table).
ATTR_DEFAULTS = {"clamp": {"min": None, "max": None}, "gelu": {"approximate": "none"}}
# The elementwise ops; only these may appear in a fused_elementwise expression.
ELEMENTWISE_OPS: set[str] = set()

_SERIES_TERMS = 40  # 2/sqrt(pi) * sum (-1)^n x^(2n+1) / (n! (2n+1)), |x| < 2.5
_SERIES_COEFFS = np.array([(-1) ** n / (np.prod(np.arange(1, n + 1, dtype=np.float64)) * (2 * n + 1))
                           for n in range(_SERIES_TERMS)]) * (2.0 / np.sqrt(np.pi))
_FRACTION_DEPTH = 60  # erfc(x) = exp(-x^2)/sqrt(pi) / (x + (1/2)/(x + 1/(x + (3/2)/(x + ...))))
_SERIES_LIMIT = 2.5
_SATURATED = 6.0  # erfc(6) < 2.2e-17: erf is 1 in float64


def erf(x: np.ndarray) -> np.ndarray:
    """The Gauss error function in float64, numpy only."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    magnitude = np.abs(x)
    near = magnitude < _SERIES_LIMIT
    xs = x[near]
    squared = xs * xs
    total = np.full_like(xs, _SERIES_COEFFS[-1])
    for coefficient in _SERIES_COEFFS[-2::-1]:
        total = total * squared + coefficient
    out[near] = total * xs
    tail = ~near & (magnitude < _SATURATED)
    t = magnitude[tail]
    fraction = t.copy()
    for k in range(_FRACTION_DEPTH, 0, -1):
        fraction = t + (k / 2.0) / fraction
    out[tail] = np.sign(x[tail]) * (1.0 - np.exp(-t * t) / np.sqrt(np.pi) / fraction)
    far = ~near & ~tail
    out[far] = np.sign(x[far])  # also carries NaN through
    return out


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) without overflow: exp only ever sees -|x|."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)


def gelu(x: np.ndarray, approximate: str = "none") -> np.ndarray:
    x64 = x.astype(np.float64)
    if approximate == "tanh":
        inner = np.sqrt(2.0 / np.pi) * (x64 + 0.044715 * x64**3)
        return 0.5 * x64 * (1.0 + np.tanh(inner))
    if approximate != "none":
        raise ValueError(f"gelu approximate must be 'none' or 'tanh', got '{approximate}'")
    return 0.5 * x64 * (1.0 + erf(x64 / np.sqrt(2.0)))


# erf(z) ~ z * P(u) / Q(u), u = (z / 4)^2, for |z| <= 4 (a Lawson-weighted rational minimax fit;
# max |error| 1.6e-9 on [-4, 4]); |erf| rounds to 1 in float32 beyond 4 (erfc(4) = 1.5e-8).
_ERF_P = (1.1283791820062983, 2.9554770411897016, 13.909322412669303, 15.727787635180192,
          25.07984462270402, 5.012424015546884, -0.22926859547509681)
_ERF_Q = (1.0, 7.952560040674103, 29.14022029555302, 63.29965157297359, 85.82780657665957,
          67.11563030911852)
_ERF_BOUND = 4.0
_CHUNK = 1 << 13  # elements per chunk: the float64 temporaries stay in the L1/L2 cache


def _polynomial(u, coefficients, out):
    np.multiply(u, coefficients[-1], out=out)
    out += coefficients[-2]
    for c in coefficients[-3::-1]:
        out *= u
        out += c
    return out


def _erf_chunk(z, u, p, q):
    """erf of the float64 chunk ``z`` into ``p`` (``z`` is clipped in place; u, q scratch)."""
    np.clip(z, -_ERF_BOUND, _ERF_BOUND, out=z)
    np.multiply(z, z, out=u)
    u *= 1.0 / (_ERF_BOUND * _ERF_BOUND)
    _polynomial(u, _ERF_P, p)
    _polynomial(u, _ERF_Q, q)
    p *= z
    p /= q
    return p


def _chunked(x: np.ndarray, body) -> np.ndarray:
    """``body(x chunk as float64, out chunk)`` over a float32 array in cache-sized chunks."""
    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.empty(flat.shape, dtype=np.float32)
    size = min(_CHUNK, flat.size)
    z, u, p, q = (np.empty(size) for _ in range(4))
    for start in range(0, flat.size, _CHUNK):
        n = min(_CHUNK, flat.size - start)
        body(flat[start:start + n], out[start:start + n], z[:n], u[:n], p[:n], q[:n])
    return out.reshape(x.shape)


def _erf_body(x, out, z, u, p, q):
    z[...] = x
    out[...] = _erf_chunk(z, u, p, q)


def _gelu_body(x, out, z, u, p, q):
    np.multiply(x, 1.0 / np.sqrt(2.0), out=z)
    np.abs(z, out=u)
    saturated = u >= _ERF_BOUND
    _erf_chunk(z, u, p, q)
    np.copysign(1.0, p, out=p, where=saturated)  # exact 1 + erf = 0 far left, as the reference
    p += 1.0
    p *= x
    p *= 0.5
    out[...] = p


def erf_kernel(x: np.ndarray) -> np.ndarray:
    """erf for the runtime: the rational form for float32 input, else the float64 series."""
    return _chunked(x, _erf_body) if x.dtype == np.float32 else erf(x)


def gelu_kernel(x: np.ndarray, approximate: str = "none") -> np.ndarray:
    """gelu for the runtime: the erf form through the rational erf for float32 input."""
    if approximate == "none" and x.dtype == np.float32:
        return _chunked(x, _gelu_body)
    return gelu(x, approximate)


def clamp(x, min, max):
    if min is not None:
        x = np.maximum(x, np.asarray(min, dtype=x.dtype))
    if max is not None:
        x = np.minimum(x, np.asarray(max, dtype=x.dtype))
    return x


def cast_reference(xs, a):
    x = xs[0]
    target = numpy_dtype(a["dtype"])
    if target.kind != "b" and x.dtype.kind == "f" and target.kind in "iu":
        x = np.trunc(x)  # float -> integer truncates toward zero, as in C and torch
    return x.astype(target)


def _unary(name: str, fn) -> None:
    ELEMENTWISE_OPS.add(name)
    kernel(name)(without_types(in_float32(lambda xs, a: fn(xs[0], a))))


_unary("relu", lambda x, a: np.maximum(x, 0))
_unary("relu6", lambda x, a: np.clip(x, 0, 6))


def _native_activation(name: str, numpy_form):
    """The native kernel's activation for float32 input in C order or NHWC memory (one
    vectorized pass, not numpy's several), else ``numpy_form``."""
    def run(x, a):
        native = name(a) if callable(name) else name
        if native and x.dtype == np.float32 and x.flags.c_contiguous and x.size:
            return _kernels.activation(x, native, NATIVE_THREADS.get())
        if native and in_nhwc_memory(x, np.float32) and x.size:
            return _kernels.activation(nhwc(x), native, NATIVE_THREADS.get()).transpose(0, 3, 1, 2)
        return numpy_form(x, a)
    return run


_unary("hardswish", _native_activation("hardswish", lambda x, a: x * np.clip(x + 3, 0, 6) / 6))
_unary("hardsigmoid", lambda x, a: np.clip(x + 3, 0, 6) / 6)
_unary("sigmoid", _native_activation("sigmoid", lambda x, a: sigmoid(x)))
_unary("tanh", _native_activation("tanh", lambda x, a: np.tanh(x)))
_unary("silu", _native_activation("silu", lambda x, a: x * sigmoid(x)))
_unary("gelu", _native_activation(
    lambda a: {"none": "gelu", "tanh": "gelu_tanh"}.get(a.get("approximate", "none")),
    lambda x, a: gelu_kernel(x, a.get("approximate", "none"))))
_unary("exp", lambda x, a: np.exp(x))
_unary("log", lambda x, a: np.log(x))
_unary("sqrt", lambda x, a: np.sqrt(x))
_unary("rsqrt", lambda x, a: 1.0 / np.sqrt(x))
_unary("reciprocal", lambda x, a: 1.0 / x)
_unary("erf", lambda x, a: erf_kernel(x))
_unary("neg", lambda x, a: np.negative(x))
_unary("abs", lambda x, a: np.abs(x))
_unary("clamp", lambda x, a: clamp(x, a.get("min"), a.get("max")))


def _binary(name: str, fn, to_bool: bool = False) -> None:
    ELEMENTWISE_OPS.add(name)
    if to_bool:
        reference = lambda xs, a: np.asarray(fn(*xs), dtype=np.bool_)
    else:
        reference = in_float32(lambda xs, a: fn(*xs))
    kernel(name)(without_types(reference))


_binary("add", np.add)
_binary("sub", np.subtract)
_binary("mul", np.multiply)
_binary("div", np.divide)
_binary("pow", np.power)
_binary("maximum", np.maximum)
_binary("minimum", np.minimum)
_binary("eq", np.equal, to_bool=True)
_binary("ne", np.not_equal, to_bool=True)
_binary("lt", np.less, to_bool=True)
_binary("le", np.less_equal, to_bool=True)
_binary("gt", np.greater, to_bool=True)
_binary("ge", np.greater_equal, to_bool=True)
_binary("logical_and", np.logical_and, to_bool=True)
_binary("logical_or", np.logical_or, to_bool=True)

ELEMENTWISE_OPS.update({"logical_not", "where", "cast"})
kernel("logical_not")(lambda xs, a, types: np.logical_not(xs[0]))
kernel("where")(lambda xs, a, types: np.where(xs[0], xs[1], xs[2]))
kernel("cast")(without_types(cast_reference))
