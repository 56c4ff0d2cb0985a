"""Plan steps that run better as one: a float inverted residual block (MobileNetV2's expand 1x1
-> depthwise -> project 1x1, the last with an optional residual) becomes one step that runs
the native kernels band by band of output rows, so that the expanded activations (six times
the block's input) stay in cache instead of going to memory and back twice. A block without
expansion (depthwise -> project 1x1: MobileNetV2's first block, a depthwise-separable
convolution) is fused too, and keeps the depthwise results in cache. A convolution whose result
only a max pooling reads (ResNet's stem) becomes one native call too, which pools band by band
of the convolution's rows while they are in cache (int8 with a u8/i8 result, or float except
3x3 stride-1 kernels, whose Winograd tiles a band would start on other rows). A channel
concatenation that only a per-channel elementwise expression reads (DenseNet's concat -> batch
norm -> relu) becomes one step that evaluates the expression over each concatenated value into
its channels of the result, without writing the concatenation. ShuffleNet's channel shuffle
of a concatenation (concat -> reshape -> permute -> reshape) becomes one step that copies each
group of channels to every g-th channel of an NHWC result. Each value is
computed as the layers' kernels compute it, so results do not change, except the float
convolution's last bits where a band groups its GEMM's rows differently (as another batch size
does).

A Session fuses its steps when it loads, after preparing them (registry.PREPARERS); a fused
step keeps the steps it replaces and runs them one by one where the native block does not
apply or would not pay off (small images, other dtypes).
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np

from .. import _kernels
from .common import nhwc
from .fused import native_expression
from .nn import (
    _float32_vector,
    channels_last,
    channels_last_operand,
    native_conv_args,
    native_float_conv_weights,
    output_hw,
    output_sizes,
)
from .packing import PACKED_WEIGHTS
from .quant import requantized_conv_head
from .registry import (NATIVE_THREADS, RUNTIME, call_kernel, native_step, plan_empty,
                       plan_empty_like)
from .shape import concatenates_float32_channels

LAYER_OPS = ("conv2d", "fused_conv2d")
# The native block runs when the expanded activations of one image reach this size: below it
# they stay in cache between the layers anyway, and the layers split over threads more finely.
FUSED_MIN_BYTES = 1 << 20


def fuse_blocks(steps: list, constants: list, outputs: list) -> list:
    """``steps`` with every run of three (expand, depthwise, project) or two (depthwise,
    project) that forms an inverted residual block, every convolution followed by the max
    pooling that alone reads it, every channel concatenation followed by the per-channel
    expression that alone reads it, and every channel shuffle of a concatenation, replaced by
    one step. ``constants`` holds each slot's
    constant array (None for computed values) and ``outputs`` the model's output slots."""
    readers = Counter(slot for step in steps for slot in step.operands if slot is not None)
    readers.update(outputs)
    patterns = ((3, _is_inverted_residual, _block_step), (2, _is_inverted_residual, _block_step),
                (2, _is_conv_pool, _conv_pool_step),
                (2, _is_concat_elementwise, _concat_elementwise_step),
                (4, _is_channel_shuffle, _channel_shuffle_step))
    fused, index = [], 0
    while index < len(steps):
        for length, matches, make_step in patterns:
            block = steps[index:index + length]
            if len(block) == length and matches(block, constants, readers):
                fused.append(make_step(block, constants))
                index += length
                break
        else:
            fused.append(steps[index])
            index += 1
    return fused


def _layer(step, constants):
    """(weight, bias, activation) of a float convolution step with constant weights and no
    symbolic attributes, else None."""
    if step.op not in LAYER_OPS or step.symbolic_attrs:
        return None
    slots = step.operands
    weight = constants[slots[1]]
    bias = None if slots[2] is None else constants[slots[2]]
    if (not isinstance(weight, np.ndarray) or weight.ndim != 4
            or not native_float_conv_weights(weight) or (slots[2] is not None and bias is None)):
        return None
    return weight, bias, step.attrs.get("activation", "none")


def _is_pointwise(step, weight) -> bool:
    a = step.attrs
    return (weight.shape[2:] == (1, 1) and a["groups"] == 1 and list(a["stride"]) == [1, 1]
            and not any(a["padding"]) and list(a["dilation"]) == [1, 1])


def _is_inverted_residual(block, constants, readers) -> bool:
    """Whether ``block`` is (expand, depthwise, project) or (depthwise, project), each layer
    reading the one before it alone, only the project taking a residual."""
    layers = [_layer(step, constants) for step in block]
    if any(layer is None for layer in layers):
        return False
    *_, depthwise, project = block
    *_, (wd, _, _), (wp, _, _) = layers
    expanded = wd.shape[0]
    if len(block) == 3:
        expand, we = block[0], layers[0][0]
        if not (_is_pointwise(expand, we) and we.shape[0] == expanded
                and depthwise.operands[0] == expand.results[0]
                and readers[expand.results[0]] == 1):
            return False
    no_residual = all(len(step.operands) < 4 or step.operands[3] is None for step in block[:-1])
    return (no_residual and _is_pointwise(project, wp)
            and wd.shape[1] == 1 and depthwise.attrs["groups"] == expanded
            and wp.shape[1] == expanded and project.operands[0] == depthwise.results[0]
            and readers[depthwise.results[0]] == 1)


def _run_step(step, operands):
    """One of the replaced steps, prepared or from scratch (its attributes hold no symbols)."""
    out = None if step.prepared is None else step.prepared(operands)
    return out if out is not None else call_kernel(step.kernel, step.op, operands, step.attrs,
                                                   list(step.types))


def _operands_of(step, x, constants) -> list:
    """A replaced step's operands: ``x`` as its first, its constants for the others."""
    return [x if slot == step.operands[0] else constants[slot] if slot is not None else None
            for slot in step.operands]


def _run_in_sequence(steps, x, constants):
    """The replaced steps one by one from ``x``, each reading the one before: the last result."""
    for step in steps:
        x = _run_step(step, _operands_of(step, x, constants))[0]
    return x


class InvertedResidualBlock:
    """The fused step's run function: the native block for large images, else its steps one
    by one; and its program steps (``build``), likewise."""

    def __init__(self, block, constants):
        self.steps = block
        self.constants = constants
        # Without expansion, the native block's expand arguments are None, None and "none".
        steps = [None] * (3 - len(block)) + list(block)
        layers = [(None, None, "none") if step is None else _layer(step, constants)
                  for step in steps]
        (_, _, self.act_e), (wd, _, self.act_d), (wp, _, self.act_p) = layers
        self.expanded, self.outputs, self.kernel = wd.shape[0], wp.shape[0], wd.shape[2:]
        self.packed = [None if step is None else PACKED_WEIGHTS.get(
            w, "sconv", _kernels.pack_sconv_weights, step.attrs["groups"])
            for step, (w, _, _) in zip(steps, layers)]
        self.biases = [_float32_vector(b) for _, b, _ in layers]
        a = block[-2].attrs
        self.geometry = (tuple(a["stride"]), tuple(a["padding"]), tuple(a["dilation"]))
        project = block[-1]
        self.has_residual = len(project.operands) > 3 and project.operands[3] is not None

    def _in_sequence(self, x, residual):
        *layers, project = self.steps
        layer = _operands_of(project, _run_in_sequence(layers, x, self.constants), self.constants)
        if self.has_residual:
            layer[3] = residual
        return _run_step(project, layer)

    def _fused(self, x, residual) -> bool:
        """Whether the native block takes x (and the residual) rather than the three layers."""
        if (x.dtype != np.float32 or x.ndim != 4 or not x.size
                or x.shape[2] * x.shape[3] * self.expanded * 4 < FUSED_MIN_BYTES):
            return False
        out_hw = output_hw(x.shape, self.kernel, *self.geometry)
        return residual is None or (residual.dtype == np.float32 and residual.shape == (
            x.shape[0], self.outputs, *out_hw))

    def _arguments(self):
        (pe, pd, pp), (be, bd, bp) = self.packed, self.biases
        return (pe, be, self.act_e, pd, bd, self.act_d, *self.geometry, pp, bp, self.act_p)

    def __call__(self, xs):
        x, residual = xs[0], xs[1] if self.has_residual else None
        if not self._fused(x, residual):
            return self._in_sequence(x, residual)
        if residual is not None:
            residual = np.ascontiguousarray(residual.transpose(0, 2, 3, 1))
        out = _kernels.inverted_residual(channels_last(x), *self._arguments(), residual,
                                         NATIVE_THREADS.get())
        return [out.transpose(0, 3, 1, 2)]

    def build(self, program, operands, results):
        """The block's calls in a native plan: the native block or the three convolutions, as
        __call__ runs them, over x (and a residual) in NHWC memory."""
        x, residual = operands[0], operands[1] if self.has_residual else None
        out = plan_empty_like(results[0])
        if x.dtype != np.float32 or not x.size or not nhwc(out).flags.c_contiguous:
            return None
        fused = self._fused(x, residual)
        x_nhwc = channels_last_operand(program, x)
        if residual is not None:
            residual = channels_last_operand(program, residual)
            if residual is None:
                return None
        if x_nhwc is None:
            return None
        if fused:
            program.inverted_residual(x_nhwc, *self._arguments(), residual, nhwc(out))
            return [out]
        pointwise = ((1, 1), (0, 0, 0, 0), (1, 1))
        n, _, h, w = x.shape
        d = plan_empty((n, *out.shape[2:], self.expanded), np.float32)
        (pe, pd, pp), (be, bd, bp) = self.packed, self.biases
        e = x_nhwc
        if pe is not None:
            e = plan_empty((n, h, w, self.expanded), np.float32)
            program.sconv2d(x_nhwc, pe, be, None, self.act_e, *pointwise, e)
        program.sconv2d(e, pd, bd, None, self.act_d, *self.geometry, d)
        program.sconv2d(d, pp, bp, residual, self.act_p, *pointwise, nhwc(out))
        return [out]


def _fused_step(block, op, run, operands, types):
    """The step of ``op`` that replaces ``block``: it reads ``operands``, returns the last
    step's results, and runs ``run``."""
    first, last = block[0], block[-1]
    # The attributes hold the run function itself, for its native_step builder: a fused step
    # exists only in a loaded session, never in an artifact.
    return dataclasses.replace(
        first, op=op, attrs={"block": run}, operands=operands, results=last.results,
        types=types, release=tuple(dict.fromkeys(r for step in block for r in step.release)),
        source=f"{first.source} .. {last.source}", symbolic_attrs=(),
        kernel=lambda xs, attrs, types: run(xs), prepared=run)


def _block_step(block, constants):
    first, project = block[0], block[-1]
    run = InvertedResidualBlock(block, constants)
    operands = (first.operands[0],) + ((project.operands[3],) if run.has_residual else ())
    types = (first.types[0],) + ((project.types[3],) if run.has_residual else ())
    return _fused_step(block, "inverted_residual", run, operands, types)


# ---- convolution and max pooling ----------------------------------------------------------------

# The values of the native kernels' u8 and s8 results.
RESULT_RANGES = {"u8": (0, 255), "s8": (-128, 127)}


def _int8_head(conv, constants):
    """requantized_conv_head of a qconv2d step whose requantization the native kernels take
    (its input computed at run time), else None."""
    operands = [RUNTIME] + [None if slot is None else constants[slot]
                            for slot in conv.operands[1:]]
    if any(operand is None for operand, slot in zip(operands, conv.operands) if slot is not None):
        return None  # a computed weight or bias
    head = requantized_conv_head(conv.attrs, list(conv.types), operands)
    if head is None:
        return None
    zero_point, _, _, out_zero_point, lo, hi, out_dtype = head[1:8]
    low, high = RESULT_RANGES[out_dtype]
    in_range = -128 <= zero_point <= 255 and all(low <= value <= high
                                                 for value in (out_zero_point, lo, hi))
    return head if in_range else None


def _float_head(conv, constants):
    """(packed, bias, activation, stride, padding, dilation) of a float convolution step for
    the native kernels, else None; not for a 3x3 kernel of stride 1, which may run Winograd
    tiles that a band would start on other rows."""
    layer = _layer(conv, constants)
    if layer is None:
        return None
    weight, bias, activation = layer
    a = conv.attrs
    if weight.shape[2:] == (3, 3) and list(a["stride"]) == [1, 1]:
        return None
    args = native_conv_args(weight, bias, a)
    return None if args is None else (*args[:2], activation, *args[2:])


# op of the convolution -> (fused op, its native function (and program method), the function's
# arguments before the pooling's, the input dtypes it takes)
CONV_POOLS = {
    "qconv2d": ("qconv2d_max_pool2d", "qconv2d_max_pool2d", _int8_head, (np.uint8, np.int8)),
    "conv2d": ("conv2d_max_pool2d", "sconv2d_max_pool2d", _float_head, (np.float32,)),
    "fused_conv2d": ("conv2d_max_pool2d", "sconv2d_max_pool2d", _float_head, (np.float32,)),
}


def _is_conv_pool(block, constants, readers) -> bool:
    """Whether ``block`` is a convolution with constant weights and no residual, every row of
    which reads the image, whose result only the max_pool2d after it reads; an int8 one must
    have a u8/i8 result that the native kernels requantize."""
    conv, pool = block
    if (conv.op not in CONV_POOLS or pool.op != "max_pool2d" or conv.symbolic_attrs
            or pool.symbolic_attrs or pool.operands[0] != conv.results[0]
            or readers[conv.results[0]] != 1
            or (len(conv.operands) > 3 and conv.operands[3] is not None)):
        return False
    weight = constants[conv.operands[1]]
    if not isinstance(weight, np.ndarray) or weight.ndim != 4 or not _geometry_of_ints(
            conv.attrs, stride=2, padding=4, dilation=2) or not _geometry_of_ints(
            pool.attrs, kernel=2, stride=2, padding=4, dilation=2):
        return False  # the steps' own kernels name what is wrong with other attributes
    span = (weight.shape[2] - 1) * conv.attrs["dilation"][0] + 1
    padding = conv.attrs["padding"]
    head_of = CONV_POOLS[conv.op][2]
    return padding[0] < span and padding[2] < span and head_of(conv, constants) is not None


def _geometry_of_ints(attrs: dict, **lengths) -> bool:
    """Whether each named attribute is a list of that many non-negative integers."""
    return all(isinstance(attrs.get(name), (list, tuple)) and len(attrs[name]) == length
               and all(type(value) is int and value >= 0 for value in attrs[name])
               for name, length in lengths.items())


class ConvPool:
    """The fused step's run function: the native convolution and pooling in one call; and its
    program step (``build``)."""

    def __init__(self, block, constants):
        self.steps = block
        self.constants = constants
        conv, pool = block
        self.op, self.function, head_of, self.dtypes = CONV_POOLS[conv.op]
        self.native = getattr(_kernels, self.function)
        self.head = head_of(conv, constants)
        self.kernel = constants[conv.operands[1]].shape[2:]
        self.conv_geometry = self.head[-3:]
        a = pool.attrs
        self.pool_geometry = tuple(tuple(a[name]) for name in
                                   ("kernel", "stride", "padding", "dilation"))
        self.pool_sizes = output_sizes(*self.pool_geometry, a["ceil_mode"])

    def _pool_hw(self, x):
        """The pooling's (OH, OW) over the convolution of x, or None where the native call does
        not take x: no pixels, another dtype, or a window that starts below the last row."""
        if x.ndim != 4 or not x.size or x.dtype not in self.dtypes:
            return None
        conv_hw = output_hw(x.shape, self.kernel, *self.conv_geometry)
        if min(conv_hw) < 1:
            return None
        pool_hw = self.pool_sizes((x.shape[0], x.shape[1], *conv_hw))
        _, stride, padding, _ = self.pool_geometry
        if pool_hw[0] and (pool_hw[0] - 1) * stride[0] >= conv_hw[0] + padding[0]:
            return None
        return pool_hw

    def __call__(self, xs):
        x = xs[0]
        pool_hw = self._pool_hw(x)
        if pool_hw is None:
            return [_run_in_sequence(self.steps, x, self.constants)]
        out = self.native(channels_last(x), *self.head, *self.pool_geometry, pool_hw,
                          NATIVE_THREADS.get(), None)
        return [out.transpose(0, 3, 1, 2)]

    def build(self, program, operands, results):
        """The fused call in a native plan, over x in NHWC memory."""
        x = operands[0]
        out = plan_empty_like(results[0])
        pool_hw = self._pool_hw(x)
        x_nhwc = channels_last_operand(program, x)
        if pool_hw is None or x_nhwc is None or not nhwc(out).flags.c_contiguous:
            return None
        getattr(program, self.function)(x_nhwc, *self.head, *self.pool_geometry, pool_hw,
                                        nhwc(out))
        return [out]


def _conv_pool_step(block, constants):
    conv = block[0]
    run = ConvPool(block, constants)
    return _fused_step(block, run.op, run, (conv.operands[0],), (conv.types[0],))


# ---- channel concatenation and the elementwise expression that alone reads it --------------------


def _per_channel(shape) -> bool:
    """Whether a constant of this shape holds at most one value per channel of an NCHW value."""
    full = (1,) * (4 - len(shape)) + tuple(shape)
    return len(full) == 4 and full[0] == 1 and full[2] == 1 and full[3] == 1


def _is_channel_concat(step, readers) -> bool:
    """Whether ``step`` concatenates 4-D values along channels, its result read by one step."""
    return (step.op == "concat" and not step.symbolic_attrs
            and step.attrs.get("axis") in (1, -3) and readers[step.results[0]] == 1
            and all(t is not None and len(t.shape) == 4 for t in step.types))


def _is_concat_elementwise(block, constants, readers) -> bool:
    """Whether ``block`` is a concatenation of 4-D values along channels whose result only the
    fused elementwise expression after it reads, as its first operand, with constants of at most
    one value per channel as its other operands (DenseNet's concat -> batch norm -> relu)."""
    concat, expression = block
    if (not _is_channel_concat(concat, readers) or expression.op != "fused_elementwise"
            or expression.symbolic_attrs or expression.operands[0] != concat.results[0]
            or concat.results[0] in expression.operands[1:]):
        return False
    params = [None if slot is None else constants[slot] for slot in expression.operands[1:]]
    return all(isinstance(p, np.ndarray) and _per_channel(p.shape) for p in params)


class ConcatElementwise:
    """The fused step's run function: the expression's native program over each concatenated
    value in turn, with its channels' share of the constants, written straight into that
    value's channels of the NHWC result (_kernels.elementwise_concat), so the concatenation is
    never written and read back (DenseNet-121's 58 concatenations took 4.0 ms); and its program
    step (``build``). Every element is computed as the expression computes it over the
    concatenation: the same bits."""

    def __init__(self, block, constants):
        self.steps = block
        self.constants = constants
        expression = block[1]
        self.params = [constants[slot] for slot in expression.operands[1:]]
        self.program = native_expression(
            expression.attrs["expr"],
            (np.dtype(np.float32),) + tuple(p.dtype for p in self.params))

    def _applies(self, xs) -> bool:
        """Whether the native call takes these values."""
        return self.program is not None and concatenates_float32_channels(xs)

    def __call__(self, xs):
        if not self._applies(xs):  # the steps' own kernels name what is wrong
            joined = _run_step(self.steps[0], list(xs))[0]
            return [_run_in_sequence(self.steps[1:], joined, self.constants)]
        out = _kernels.elementwise_concat(self.program, list(xs), self.params,
                                          NATIVE_THREADS.get())
        return [out.transpose(0, 3, 1, 2)]

    def build(self, program, operands, results):
        """The native call in a native plan."""
        out = plan_empty_like(results[0])
        if not self._applies(operands) or not nhwc(out).flags.c_contiguous:
            return None
        program.elementwise_concat(self.program, list(operands), self.params, nhwc(out))
        return [out]


def _concat_elementwise_step(block, constants):
    concat = block[0]
    return _fused_step(block, "concat_elementwise", ConcatElementwise(block, constants),
                       concat.operands, concat.types)


# ---- channel shuffle of a concatenation -------------------------------------------------------


def _is_channel_shuffle(block, constants, readers) -> bool:
    """Whether ``block`` is ShuffleNet's channel shuffle of a concatenation: concat of 4-D
    values along channels -> reshape to [N, g, C / g, H, W] -> permute (0, 2, 1, 3, 4) ->
    reshape to [N, C, H, W], each result read by the next step alone."""
    concat, split, swap, merge = block
    if ([step.op for step in block] != ["concat", "reshape", "permute", "reshape"]
            or not _is_channel_concat(concat, readers) or swap.symbolic_attrs
            or any(readers[step.results[0]] != 1 for step in block[1:-1])
            or any(after.operands[0] != before.results[0]
                   for before, after in zip(block, block[1:]))
            or list(swap.attrs["perm"]) != [0, 2, 1, 3, 4]):
        return False
    groups, per_group = split.attrs["shape"][1:3], merge.attrs["shape"]
    return (len(split.attrs["shape"]) == 5 and len(per_group) == 4
            and all(type(d) is int and d > 0 for d in (*groups, per_group[1]))
            and groups[0] * groups[1] == per_group[1])


class ChannelShuffle:
    """The fused step's run function: each group of the concatenated channels copied, in NHWC
    memory, to every g-th channel of the result, where the steps apart copied the
    concatenation, then the shuffle (a transposing reshape) into NCHW order. The same values
    (data movement only); the result is in NHWC memory, as the convolutions that read it take
    it."""

    def __init__(self, block, constants):
        self.steps = block
        self.constants = constants
        self.groups, self.per_group = block[1].attrs["shape"][1:3]

    def __call__(self, xs):
        n, _, h, w = xs[0].shape
        if any(x.ndim != 4 or x.shape[0] != n or x.shape[2:] != (h, w) or x.dtype != xs[0].dtype
               for x in xs) or sum(x.shape[1] for x in xs) != self.groups * self.per_group:
            joined = _run_step(self.steps[0], list(xs))[0]
            return [_run_in_sequence(self.steps[1:], joined, self.constants)]
        parts = [nhwc(x) for x in xs]
        if any(part.shape[3] != self.per_group for part in parts):
            parts = np.split(np.concatenate(parts, axis=3), self.groups, axis=3)
        out = np.empty((n, h, w, self.per_group, self.groups), xs[0].dtype)
        for group, part in enumerate(parts):
            out[..., group] = part
        return [out.reshape(n, h, w, -1).transpose(0, 3, 1, 2)]


def _channel_shuffle_step(block, constants):
    concat = block[0]
    return _fused_step(block, "channel_shuffle", ChannelShuffle(block, constants),
                       concat.operands, concat.types)


def _build_fused(program, a, types, operands, runtime, results):
    """A fused step's program step: its run function's ``build``."""
    return a["block"].build(program, operands, results)


native_step("inverted_residual")(_build_fused)
native_step("qconv2d_max_pool2d")(_build_fused)
native_step("conv2d_max_pool2d")(_build_fused)
native_step("concat_elementwise")(_build_fused)
