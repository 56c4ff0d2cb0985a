"""Fused ops, as the `fuse` pass produces them.

- fused_conv2d / fused_linear / fused_matmul: act(layer(x, w) + bias + residual).
- fused_elementwise: a region of elementwise ops written as an expression over its inputs, e.g.
  ``mul($0,sigmoid($1))``; the compiler validated it. Here it runs as one native pass where
  every op has an exact native form (native_expression), else op by op on this backend's own
  elementwise kernels (parsed expressions are cached by text).
- attention: softmax(q @ k^T * scale + mask) @ v; rows whose scores are all masked give zeros.
"""

from __future__ import annotations

import functools
import math
import re

import numpy as np

from .. import _kernels
from .common import in_float32, in_nhwc_memory, nhwc
from .elementwise import ATTR_DEFAULTS, ELEMENTWISE_OPS
from .nn import (build_native_conv2d, build_native_linear, conv2d_any_layout, layer_step,
                 matmul_kernel, matmul_rows, native_conv2d, native_linear, prepare_native_conv2d,
                 prepare_native_linear)
from .registry import (KERNELS, NATIVE_THREADS, kernel, native_step, plan_empty, preparer,
                       without_types)

# activation name -> (op, attributes) applied after the layer, bias and residual
ACTIVATIONS = {
    "none": None,
    "relu": ("relu", {}),
    "relu6": ("relu6", {}),
    "gelu": ("gelu", {"approximate": "none"}),
    "gelu_tanh": ("gelu", {"approximate": "tanh"}),
    "silu": ("silu", {}),
    "sigmoid": ("sigmoid", {}),
    "tanh": ("tanh", {}),
    "hardswish": ("hardswish", {}),
}

# The tokens of a fused expression: inputs, names, numbers, punctuation.
EXPR_TOKEN = re.compile(r"\s*(\$\d+|[A-Za-z_][A-Za-z0-9_]*|-?\d+\.\d*(?:e[-+]?\d+)?|-?\d+(?:e[-+]?\d+)?"
                        r"|-?inf|[()\[\],=])")
MAX_EXPR_LENGTH = 1 << 16


def apply_activation(x: np.ndarray, activation: str) -> np.ndarray:
    spec = ACTIVATIONS[activation]
    if spec is None:
        return x
    op, attrs = spec
    return KERNELS[op]([x], dict(attrs), [None])


# Activations computed in place on a fresh float32 result (the same values as their kernels).
_IN_PLACE = {
    "relu": lambda x: np.maximum(x, 0, out=x),
    "relu6": lambda x: np.minimum(np.maximum(x, 0, out=x), 6, out=x),
}


def layer_epilogue(out, bias, residual, activation, bias_shape):
    """act(out + bias + residual) of a fused layer, in float32; ``out`` must be a fresh array
    (it is updated in place)."""
    if out.dtype != np.float32:
        out = out.astype(np.float32)
    if bias is not None:
        out += bias.reshape(bias_shape)
    if residual is not None:
        out += residual
    if activation in _IN_PLACE:
        return _IN_PLACE[activation](out)
    return apply_activation(out, activation)


def attention_reference(xs, a):
    q, k, v, mask = xs
    scores = np.matmul(q, np.swapaxes(k, -1, -2)).astype(np.float64) * scale_of(a, q)
    if mask is not None:
        scores = np.where(mask, scores, -np.inf) if mask.dtype == np.bool_ else scores + mask
    peak = scores.max(axis=-1, keepdims=True)
    fully_masked = np.isneginf(peak)
    weights = np.exp(scores - np.where(fully_masked, 0.0, peak))
    total = weights.sum(axis=-1, keepdims=True)
    weights = np.where(fully_masked, 0.0, weights / np.where(fully_masked, 1.0, total))
    return np.matmul(weights.astype(np.float32), v)


def _broadcasts_to(shape: tuple, target: tuple) -> bool:
    """Whether an array of ``shape`` broadcasts to ``target`` itself. Plain tuple work: run once
    per attention call after a large GEMM, np.broadcast_shapes met cold caches (BERT-base at
    batch 1: the native call's Python checks took 120 us more in sequence than warm)."""
    return len(shape) <= len(target) and all(
        size in (1, wanted) for size, wanted in zip(reversed(shape), reversed(target)))


def _rows_contiguous(t: np.ndarray) -> np.ndarray:
    """``t`` itself where the native kernels can read it in place (rows contiguous, other strides
    non-negative whole elements: transposed heads, broadcast batches), else a C-contiguous copy."""
    item = t.itemsize
    if (t.shape[-1] <= 1 or t.strides[-1] == item) and all(
            s >= 0 and s % item == 0 for s in t.strides):
        return t
    return np.ascontiguousarray(t)


def attention_result(q: np.ndarray, dv: int) -> np.ndarray:
    """The result array, laid out like q: heads split from [..., L, H, D] rows (the view that
    multi-head attention takes of its projections) give [..., H, L, Dv] over [..., L, H, Dv]
    memory, which the usual merge of the heads then reshapes without a copy."""
    if q.ndim >= 3 and 0 < q.strides[-3] < q.strides[-2]:
        heads = plan_empty(q.shape[:-3] + (q.shape[-2], q.shape[-3], dv), np.float32)
        return np.swapaxes(heads, -2, -3)
    return plan_empty(q.shape[:-1] + (dv,), np.float32)


def attention_operands(q, k, v, mask, dtypes=(np.float32,)):
    """q, k, v and mask as the native kernel reads them, or None where it does not apply (q, k
    or v not of `dtypes`, a q that would broadcast, a mask wider than the scores, S = 0): keys
    and values shared across batch dimensions as zero-stride views, operands it cannot read in
    place as C-contiguous copies."""
    if any(t.dtype not in dtypes for t in (q, k, v)) or not 2 <= q.ndim == k.ndim == v.ndim:
        return None
    if v.shape[:-1] != k.shape[:-1] or k.shape[-1] != q.shape[-1] or not k.shape[-2]:
        return None
    batch = q.shape[:-2]
    if not _broadcasts_to(k.shape[:-2], batch):
        return None
    if mask is not None:
        if mask.dtype not in (np.bool_, np.float32) or mask.ndim > q.ndim:
            return None
        if not _broadcasts_to(mask.shape, q.shape[:-1] + k.shape[-2:-1]):
            return None
        if not mask.flags.c_contiguous:
            mask = np.ascontiguousarray(mask)
    if k.shape[:-2] != batch:
        k, v = (np.broadcast_to(t, batch + t.shape[-2:]) for t in (k, v))
    q, k, v = (_rows_contiguous(t) for t in (q, k, v))
    return q, k, v, mask


def scale_of(a: dict, q) -> float:
    return a["scale"] if a["scale"] is not None else 1.0 / math.sqrt(q.shape[-1])


def _native_attention(q, k, v, mask, scale):
    """attention on the native kernel, reading q, k and v in place where their strides allow;
    None where it does not apply."""
    operands = attention_operands(q, k, v, mask)
    if operands is None:
        return None
    q, k, v, mask = operands
    return _kernels.attention(q, k, v, mask, scale, NATIVE_THREADS.get(),
                              attention_result(q, v.shape[-1]))


def attention_operands_in_place(operands, dtypes=(np.float32,)):
    """attention_operands where the native kernel reads every operand in place, else None: a
    copy made when a program is built would hold that run's values on every later run."""
    prepared = attention_operands(*operands, dtypes=dtypes)
    if prepared is None or not all(
            new is None or np.may_share_memory(new, old) for new, old in zip(prepared, operands)):
        return None
    return prepared


@native_step("attention")
def build_attention(program, a, types, operands, runtime, results):
    """The native attention as a program step, where it reads every operand in place."""
    prepared = attention_operands_in_place(operands)
    if prepared is None:
        return None
    q, k, v, mask = prepared
    out = attention_result(q, v.shape[-1])
    program.attention(q, k, v, mask, scale_of(a, q), out)
    return [out]


def attention_kernel(xs, a):
    """attention_reference in float32 (max-shifted, so ~1e-6 relative), natively where it
    applies, else in numpy, updating in place."""
    q, k, v, mask = xs
    scale = scale_of(a, q)
    native = _native_attention(q, k, v, mask, scale)
    if native is not None:
        return native
    scores = np.matmul(q, np.swapaxes(k, -1, -2))
    scores *= np.float32(scale)
    if mask is not None:
        if np.broadcast_shapes(scores.shape, mask.shape) != scores.shape:
            scores = np.broadcast_to(scores, np.broadcast_shapes(scores.shape, mask.shape)).copy()
        if mask.dtype == np.bool_:
            np.copyto(scores, -np.inf, where=~mask)
        else:
            scores += mask
    peak = scores.max(axis=-1, keepdims=True)
    fully_masked = np.isneginf(peak)
    any_masked = fully_masked.any()
    if any_masked:
        peak[fully_masked] = 0.0
    scores -= peak
    np.exp(scores, out=scores)
    total = scores.sum(axis=-1, keepdims=True)
    if any_masked:
        total[fully_masked] = 1.0  # every weight of such a row is exp(-inf) = 0
    scores /= total
    return np.matmul(scores, v)


def _fused_conv2d(xs, a):
    x, w, bias, residual = xs
    native = native_conv2d(x, w, bias, residual, a, a["activation"])
    if native is not None:
        return native
    out = conv2d_any_layout(x, w, a["stride"], a["padding"], a["dilation"], a["groups"])
    result = np.empty(out.shape, dtype=np.float32)  # C-contiguous, whatever out's layout
    if bias is None:
        np.copyto(result, out)
    else:
        np.add(out, bias.reshape(1, -1, 1, 1), out=result)
    return layer_epilogue(result, None, residual, a["activation"], None)


kernel("fused_conv2d")(without_types(in_float32(_fused_conv2d)))
preparer("fused_conv2d")(lambda a, types, operands: layer_step(
    operands, lambda w, bias: prepare_native_conv2d(w, bias, a, a["activation"])))
native_step("fused_conv2d")(lambda program, a, types, operands, runtime, results: (
    build_native_conv2d(program, a, types, operands, runtime, results, a["activation"])))


def _fused_linear(xs, a):
    x, w, bias, residual = xs
    native = native_linear(x, w, bias, residual, a["activation"])
    if native is not None:
        return native
    return layer_epilogue(matmul_rows(x, w.T), bias, residual, a["activation"], (-1,))


kernel("fused_linear")(without_types(in_float32(_fused_linear)))
preparer("fused_linear")(lambda a, types, operands: layer_step(
    operands, lambda w, bias: prepare_native_linear(w, bias, a["activation"])))
native_step("fused_linear")(lambda program, a, types, operands, runtime, results: (
    build_native_linear(program, a, types, operands, runtime, results, a["activation"])))
kernel("fused_matmul")(without_types(in_float32(lambda xs, a: layer_epilogue(
    matmul_kernel([xs[0], xs[1]], a), None, xs[2], a["activation"], None))))
kernel("attention")(without_types(in_float32(attention_kernel)))


# ---- elementwise regions ------------------------------------------------------------------------
# A parsed expression is ("$", index) or (op, attrs as sorted (name, value) pairs, args).
def tokenize_expr(text: str) -> list[str]:
    """The tokens of a fused expression: inputs, names, numbers and punctuation."""
    tokens, position = [], 0
    while position < len(text):
        match = EXPR_TOKEN.match(text, position)
        if match is None:
            raise ValueError(f"bad character in fused expression at {position}: {text[:80]!r}")
        tokens.append(match.group(1))
        position = match.end()
    return tokens


@functools.lru_cache(maxsize=512)
def parse_expr(text: str, num_inputs: int) -> tuple:
    """Parse a fused expression; errors name the expression (its text comes from the plan)."""
    if not isinstance(text, str) or len(text) > MAX_EXPR_LENGTH:
        raise ValueError("fused expression must be a string of at most "
                         f"{MAX_EXPR_LENGTH} characters")
    return _parse_text(text, num_inputs)


# A plan's expressions are parsed once, not on every run: after a large GEMM, tokenizing and
# parsing BERT's embedding sum ran with cold caches, 50 us beside its numpy adds.
@functools.lru_cache(maxsize=256)
def _parse_text(text: str, num_inputs: int) -> tuple:
    tokens = tokenize_expr(text)
    expr, end = _parse_term(tokens, 0, text, num_inputs, depth=0)
    if end != len(tokens):
        raise ValueError(f"trailing text in fused expression {text[:80]!r}")
    return expr


def _parse_term(tokens, i, text, num_inputs, depth):
    if depth > 64:
        raise ValueError(f"fused expression nests too deeply: {text[:80]!r}")
    if i >= len(tokens):
        raise ValueError(f"incomplete fused expression {text[:80]!r}")
    head = tokens[i]
    if head.startswith("$"):
        index = int(head[1:])
        if index >= num_inputs:
            raise ValueError(f"fused expression reads ${index} of {num_inputs} inputs")
        return ("$", index), i + 1
    if head not in ELEMENTWISE_OPS:
        raise ValueError(f"fused expression uses '{head[:40]}', which is not an elementwise op")
    i += 1
    attrs = dict(ATTR_DEFAULTS.get(head, {}))
    if i < len(tokens) and tokens[i] == "[":
        i += 1
        while i < len(tokens) and tokens[i] != "]":
            if i + 2 >= len(tokens) or tokens[i + 1] != "=":
                raise ValueError(f"expected name=value in fused expression {text[:80]!r}")
            attrs[tokens[i]] = _attr_value(tokens[i + 2])
            i += 3
            if i < len(tokens) and tokens[i] == ",":
                i += 1
        i += 1
    if i >= len(tokens) or tokens[i] != "(":
        raise ValueError(f"expected '(' after '{head}' in fused expression {text[:80]!r}")
    i += 1
    args = []
    while True:
        arg, i = _parse_term(tokens, i, text, num_inputs, depth + 1)
        args.append(arg)
        if i < len(tokens) and tokens[i] == ",":
            i += 1
            continue
        if i < len(tokens) and tokens[i] == ")":
            return (head, tuple(sorted(attrs.items())), tuple(args)), i + 1
        raise ValueError(f"expected ',' or ')' in fused expression {text[:80]!r}")


def _attr_value(token: str):
    """An attribute value as the compiler prints it: none, a float (repr), an int or a name."""
    if token == "none":
        return None
    if token.lstrip("-") == "inf" or any(c in token for c in ".eE") and token[0] in "-0123456789":
        return float(token)
    if token.lstrip("-").isdigit():
        return int(token)
    return token


def _evaluate(expr: tuple, arrays: list):
    if expr[0] == "$":
        return arrays[expr[1]]
    op, attrs, args = expr
    values = [_evaluate(arg, arrays) for arg in args]
    return KERNELS[op](values, dict(attrs), [None] * len(values))


# ---- the native stack machine (_kernels.ElementwiseProgram) ---------------------------------
# Each op below becomes (name, input index, a, b) steps that round exactly as its numpy kernel
# (elementwise.py) does on float32; an expression with any other op (exp, pow, comparisons,
# where, ...) runs on numpy.
def _step(name: str, a: float = 0.0, b: float = 0.0) -> tuple:
    return (name, 0, a, b)


_NATIVE_BINARY = ("add", "sub", "mul", "div", "maximum", "minimum")
_NATIVE_UNARY = {"neg": [_step("neg")], "abs": [_step("abs")], "sqrt": [_step("sqrt")],
                 "relu": [_step("constant", 0.0), _step("maximum")],  # np.maximum(x, 0)
                 "relu6": [_step("clip", 0.0, 6.0)],  # np.clip(x, 0, 6)
                 "hardsigmoid": [_step("constant", 3.0), _step("add"), _step("clip", 0.0, 6.0),
                                 _step("constant", 6.0), _step("div")],
                 "sigmoid": [_step("sigmoid")], "tanh": [_step("tanh")], "silu": [_step("silu")],
                 "hardswish": [_step("hardswish")]}
_NATIVE_GELU = {"none": "gelu", "tanh": "gelu_tanh"}
# Inputs that a cast to float32 may read; every other input must be float32 itself.
_CASTABLE = frozenset(np.dtype(t) for t in (np.float32, np.float64, np.int64, np.int32, np.int16,
                                            np.int8, np.uint8, np.bool_))
_F32 = np.dtype(np.float32)


def _native_steps(expr: tuple, dtypes: tuple, steps: list) -> bool:
    """Appends the postfix steps of ``expr``; False where an op or dtype has no native form."""
    if expr[0] == "$":
        steps.append(("input", expr[1], 0.0, 0.0))
        return dtypes[expr[1]] == _F32
    op, attrs, args = expr
    attrs = dict(attrs)
    if op == "cast" and attrs.get("dtype") == "f32":
        if args[0][0] == "$":
            steps.append(("input", args[0][1], 0.0, 0.0))
            return dtypes[args[0][1]] in _CASTABLE
        return _native_steps(args[0], dtypes, steps)
    if op in ("reciprocal", "rsqrt"):  # 1.0 / x, 1.0 / np.sqrt(x)
        steps.append(_step("constant", 1.0))
        if not _native_steps(args[0], dtypes, steps):
            return False
        steps.extend([_step("sqrt"), _step("div")] if op == "rsqrt" else [_step("div")])
        return True
    if not all(_native_steps(arg, dtypes, steps) for arg in args):
        return False
    if op in _NATIVE_BINARY:
        steps.append(_step(op))
    elif op == "gelu" and attrs["approximate"] in _NATIVE_GELU:
        steps.append(_step(_NATIVE_GELU[attrs["approximate"]]))
    elif op == "clamp":  # np.maximum(x, min), then np.minimum(x, max); bounds in float32
        for bound, name in ((attrs["min"], "maximum"), (attrs["max"], "minimum")):
            if bound is not None:
                steps.extend([_step("constant", float(bound)), _step(name)])
    elif op in _NATIVE_UNARY:
        steps.extend(_NATIVE_UNARY[op])
    else:
        return False
    return True


def native_expression(text: str, dtypes: tuple):
    """The expression as a native program over inputs of these dtypes, or None where it reads
    something other than float32 (bar casts to float32), uses an op without a native form or
    needs more registers than the machine has."""
    return _native_program(parse_expr(text, len(dtypes)), dtypes)


@functools.lru_cache(maxsize=256)
def _native_program(expr: tuple, dtypes: tuple):
    steps: list = []
    if not _native_steps(expr, dtypes, steps):
        return None
    try:
        return _kernels.ElementwiseProgram(steps)
    except ValueError:
        return None


def _dtypes(xs) -> tuple | None:
    dtypes = tuple(getattr(x, "dtype", None) for x in xs)
    return None if None in dtypes else dtypes


def _over_nhwc_memory(xs) -> bool:
    """Some operand is an NCHW view of NHWC memory of the whole 4-D result (what convolutions
    return): the native pass then runs in that memory order, over nhwc views of every operand
    (broadcast ones too), and gives NHWC memory back. In NCHW order it gathered each row 56
    floats apart and wrote a transpose: DenseNet-121's BN + ReLU over 256 x 56 x 56 took
    1.09 ms, and 0.16 ms in memory order (two threads)."""
    candidates = [x for x in xs if np.ndim(x) == 4 and in_nhwc_memory(x, x.dtype)]
    if not candidates:  # the common case, decided without broadcasting shapes
        return False
    shape = np.broadcast_shapes(*(np.shape(x) for x in xs))
    return any(x.shape == shape for x in candidates)


def _nhwc_views(xs) -> list:
    return [nhwc(np.reshape(x, (1,) * (4 - np.ndim(x)) + np.shape(x))) for x in xs]


def _run_native(steps, xs) -> np.ndarray:
    """The native program over the operands, in their memory order (_over_nhwc_memory)."""
    if _over_nhwc_memory(xs):
        return _kernels.elementwise(steps, _nhwc_views(xs), NATIVE_THREADS.get()).transpose(
            0, 3, 1, 2)
    return _kernels.elementwise(steps, list(xs), NATIVE_THREADS.get())


def _add_native(program, steps, operands, results) -> list:
    """The native program as a program step, writing memory in _run_native's order."""
    shape = results[0].shape
    if _over_nhwc_memory(operands):
        out = plan_empty((shape[0], shape[2], shape[3], shape[1]), np.float32)
        program.elementwise(steps, _nhwc_views(operands), out)
        return [out.transpose(0, 3, 1, 2)]
    out = plan_empty(shape, np.float32)
    program.elementwise(steps, list(operands), out)
    return [out]


@kernel("fused_elementwise")
def fused_elementwise(xs, a, types):
    dtypes = _dtypes(xs)
    program = dtypes and native_expression(a["expr"], dtypes)
    if program is not None:
        return _run_native(program, xs)
    return _evaluate(parse_expr(a["expr"], len(xs)), xs)


@native_step("fused_elementwise")
def build_fused_elementwise(program, a, types, operands, runtime, results):
    """The expression's native program as a program step, where it has one."""
    dtypes = _dtypes(operands)
    steps = dtypes and native_expression(a["expr"], dtypes)
    if steps is None:
        return None
    return _add_native(program, steps, operands, results)


# Single elementwise ops with a native form join programs as one-op native programs: the same
# bits as their numpy kernels (the activations' native kernel, which the numpy path takes for
# float32 in C order or NHWC memory, so those need such operands here).
_ACTIVATION_OPS = frozenset({"gelu", "sigmoid", "tanh", "silu", "hardswish"})


def _single_op_program(op: str, a: dict, dtypes: tuple):
    expr = (op, tuple(sorted({**ATTR_DEFAULTS.get(op, {}), **a}.items())),
            tuple(("$", index) for index in range(len(dtypes))))
    return _native_program(expr, dtypes)


def _build_single_op(op: str):
    def build(program, a, types, operands, runtime, results):
        dtypes = _dtypes(operands)
        if dtypes is None or op in _ACTIVATION_OPS and not (
                operands[0].flags.c_contiguous or in_nhwc_memory(operands[0], np.float32)):
            return None
        steps = _single_op_program(op, a, dtypes)
        if steps is None:
            return None
        return _add_native(program, steps, operands, results)
    return build


for _op in (*_NATIVE_BINARY, *_NATIVE_UNARY, "gelu", "clamp", "cast", "reciprocal", "rsqrt"):
    native_step(_op)(_build_single_op(_op))

_FLOAT32_PAIR = (np.dtype(np.float32),) * 2


def _prepare_binary(op: str):
    """The executor's float32 binary ops as their one-op native programs (numpy's bits), in
    the operands' memory order and on the session's threads: numpy's broadcast multiply of an
    NCHW view of NHWC memory by a [N, C, 1, 1] gate (EfficientNet-B0's squeeze-and-excitation)
    took 0.16 ms over 32 x 112 x 112 on one thread. Other dtypes and empty operands keep numpy."""
    def prepare(a, types, operands):
        steps = _single_op_program(op, a, _FLOAT32_PAIR)
        if steps is None:
            return None

        def run(xs):
            x, y = xs
            if type(x) is not np.ndarray or type(y) is not np.ndarray or \
                    x.dtype != np.float32 or y.dtype != np.float32 or not x.size or not y.size:
                return None
            return [_run_native(steps, xs)]
        return run
    return prepare


for _op in _NATIVE_BINARY:
    preparer(_op)(_prepare_binary(_op))
