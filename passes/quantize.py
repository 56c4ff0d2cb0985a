"""quantize: static post-training int8 quantization with calibration."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from nimbus.compiler.dtypes import DType
from nimbus.compiler.ir import Graph, Node, QuantParams, Value
from nimbus.compiler.ops.fused import ACTIVATIONS
from nimbus.compiler.interpreter import interpret
from nimbus.compiler.ops.quant import CLAMP_ACTIVATIONS, dequantize_array, quantize_array
from nimbus.runtime.cpu_ops.quant import requant_multiplier, residual_factor

from .calibration import OBSERVERS, CalibrationError, calibration_batches, observe, random_batches
from .fuse import EPILOGUES
from .layers import excluded_by_name
from .manager import PassContext, PassFailure
from .registry import register_pass
from .rewrite import apply_rules, remove_dead_nodes

# float layer -> integer op; the layer's weight is operand 1 with output channels on axis 0
INTEGER_OPS = {"conv2d": "qconv2d", "fused_conv2d": "qconv2d",
               "linear": "qlinear", "fused_linear": "qlinear"}
# ops that move quantized values unchanged, so int8 data can flow through them
PASS_THROUGH = {"max_pool2d", "reshape", "permute"}
WEIGHT_LEVELS = 127  # symmetric int8 weights use [-127, 127], so negation never overflows


def _float_reason(node: Node, exclude: list[str]) -> str | None:
    """Why a conv/linear stays in float, or None if it can become an integer op."""
    weight = node.operands[1]
    if not weight.is_constant:
        return "weight is not a constant"
    if node.operands[0].type.dtype != DType.f32:
        return f"input is {node.operands[0].type.dtype}"
    if not np.isfinite(weight.data).all():
        return "weights are not finite"
    if excluded_by_name(node, exclude):
        return "excluded by name"
    return None


def _decode_shared_weight(graph: Graph, node: Node) -> None:
    """share-weights stores a weight as gather(codebook, indices); the int8 weight is what ships
    (at most 2^bits distinct values per channel), so the layer gets the decoded constant, named
    as the original weight."""
    lookup = node.operands[1].producer
    if lookup is None or lookup.op != "gather" or not all(o.is_constant for o in lookup.operands):
        return
    codebook, indices = lookup.operands
    name = graph.unique_constant_name(indices.name.removesuffix(".indices"))
    node.operands[1] = graph.add_constant(name, np.take(codebook.data, indices.data, axis=0))


def _residual(node: Node) -> Value | None:
    return node.operands[3] if node.op.startswith("fused_") else None


def _integer_epilogue(node: Node, observed: set[Value]) -> bool:
    """The layer's whole epilogue fits an integer op: a clamp-like activation, and a residual
    (if any) of the result's own shape whose range calibration saw, which the integer op adds
    quantized before its rounding, so a residual block stays in int8 end to end."""
    if not node.op.startswith("fused_"):
        return True
    residual = _residual(node)
    return node.attrs["activation"] in CLAMP_ACTIVATIONS and (
        residual is None or (residual in observed and not residual.is_constant
                             and tuple(residual.type.shape) == tuple(node.result.type.shape)))


def _multipliers_overflow(node: Node, ranges: dict, dtype: DType,
                          weight_quant: QuantParams) -> bool:
    """Whether a float32 multiplier of the integer layer (input scale times weight scale, over
    the result's or by the residual's scale) would be inf: calibration saw values near 1e30,
    where the float layer overflows as well, and the integer kernels take finite scales only."""
    input_scale = activation_params(*ranges[node.operands[0]], dtype)[0]
    weight_scales = weight_quant.scale_array()
    divisors = [1.0]
    if node.result in ranges:
        divisors.append(activation_params(*ranges[node.result], dtype)[0])
    residual = _residual(node)
    residuals = []
    if residual in ranges:
        residuals.append(QuantParams([activation_params(*ranges[residual], dtype)[0]], [0]))
    with np.errstate(over="ignore"):
        products = [requant_multiplier(input_scale, weight_scales, d) for d in divisors]
        products += [residual_factor(r, d) for r in residuals for d in divisors]
    return not all(np.isfinite(p).all() for p in products)


def _bias_codes(bias: Value, input_scale: float, weight_quant: QuantParams) -> np.ndarray:
    """The bias in steps of s_in * s_w (float64): what the int32 bias holds, where it fits."""
    scales = np.float64(np.float32(input_scale)) * weight_quant.scale_array().astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.rint(bias.data.astype(np.float64) / scales)


def _bias_overflows(node: Node, ranges: dict, dtype: DType, weight_quant: QuantParams) -> bool:
    """Whether the layer's bias exceeds int32 in steps of s_in * s_w: calibration saw inputs
    that nearly vanish (GoogLeNet's classifier with random weights: s_in = 1e-13), and a
    clipped bias would silently replace the layer's answer."""
    bias = node.operands[2]
    if bias is None:
        return False
    input_scale = activation_params(*ranges[node.operands[0]], dtype)[0]
    codes = _bias_codes(bias, input_scale, weight_quant)
    limit = np.iinfo(np.int32)
    return not bool(np.all((codes >= limit.min) & (codes <= limit.max)))


def _applies_float_activation(node: Node) -> bool:
    """A layer whose activation (gelu, silu, ...) the integer op applies itself, on its f32
    values before any quantization of its result, without a residual."""
    return _residual(node) is None and node.attrs.get("activation", "none") not in CLAMP_ACTIVATIONS


def activation_params(low: float, high: float, dtype: DType) -> tuple[float, int]:
    """(scale, zero point) for a real range: u8 asymmetric, or i8 symmetric. Scales are float32
    values, as every type stores them."""
    with np.errstate(over="ignore"):
        if dtype == DType.u8:
            scale = float(np.float32((high - low) / 255.0)) or 1.0
            zero_point = int(np.clip(np.rint(-low / scale), 0, 255)) if np.isfinite(scale) else 0
        else:
            scale, zero_point = float(np.float32(max(-low, high) / 127.0)) or 1.0, 0
    if not np.isfinite(scale):
        raise PassFailure(f"an activation range [{low:g}, {high:g}] is too wide for int8")
    return scale, zero_point


def symmetric_scales(peaks: np.ndarray) -> np.ndarray:
    """Symmetric int8 scales from each channel's peak |w|. Scales are float32: a channel whose
    scale would round to 0 there (all zeros, or subnormal weights) gets 1 and quantizes to
    zeros."""
    scales = peaks.astype(np.float64) / WEIGHT_LEVELS
    return np.where(scales.astype(np.float32) > 0, scales, 1.0)


def weight_params(weight: np.ndarray) -> QuantParams:
    """Symmetric per-output-channel scales (axis 0)."""
    return QuantParams(symmetric_scales(np.abs(weight.reshape(weight.shape[0], -1)).max(axis=1)),
                       [0], axis=0)


class _Quantizer:
    """Rewrites the chosen layers, tracking the quantized twin of each float value."""

    def __init__(self, graph: Graph, ctx: PassContext, ranges: dict | None = None,
                 dtype: DType = DType.u8, weight_quants: dict | None = None):
        self.graph, self.ctx, self.ranges, self.dtype = graph, ctx, ranges or {}, dtype
        self.weight_quants = weight_quants or {}  # weight -> its QuantParams, where known
        self.twins: dict[Value, Value] = {}

    def quantized(self, value: Value, before: Node) -> Value:
        """The int8 form of a float value: an earlier integer result, a pass-through op on one,
        or a new quantize node."""
        if value in self.twins:
            return self.twins[value]
        producer = value.producer
        if self._reaches_integer_result(value):
            source = self.quantized(producer.operands[0], before)
            node = self.graph.add_node(producer.op, [source], producer.attrs, producer.loc,
                                       before=before)
            twin = node.result
        else:
            scale, zero_point = activation_params(*self.ranges[value], self.dtype)
            node = self.graph.add_node("quantize", [value], {
                "dtype": self.dtype, "scale": [scale], "zero_point": [zero_point]},
                self._loc(value, before), before=before)
            twin = node.result
        self.ctx.touched(node)
        self.twins[value] = twin
        return twin

    def _reaches_integer_result(self, value: Value) -> bool:
        """``value`` is an integer result seen through pass-through ops."""
        while value not in self.twins:
            producer = value.producer
            if producer is None or producer.op not in PASS_THROUGH:
                return False
            value = producer.operands[0]
        return True

    def _loc(self, value: Value, before: Node):
        return value.producer.loc if value.producer is not None else before.loc

    def rewrite(self, node: Node, integer_epilogue: bool, quantized_output: bool) -> None:
        x, weight, bias = node.operands[:3]
        q_input = self.quantized(x, node)
        q_weight = self.quantized_weight(weight)
        weight_quant = q_weight.type.quant
        q_bias = None
        if bias is not None:
            q_bias = self._bias(bias, q_input.type.quant.scale[0], weight_quant)
        attrs = {k: v for k, v in node.attrs.items() if k != "activation"}
        activation = node.attrs.get("activation", "none")
        # An integer layer applies any activation to its tiles while they are in cache, and
        # quantizes them there for a quantized result: a BERT FFN's GELU or an EfficientNet
        # convolution's SiLU and the quantize before the next layer then cost no pass over it.
        if integer_epilogue or _applies_float_activation(node):
            attrs["activation"], activation = activation, "none"
        else:
            attrs["activation"] = "none"
        if quantized_output:
            scale, zero_point = activation_params(*self.ranges[node.result], self.dtype)
            attrs.update(dtype=self.dtype, scale=scale, zero_point=zero_point)
        else:
            attrs.update(dtype=DType.f32)
        operands = [q_input, q_weight, q_bias]
        if integer_epilogue and _residual(node) is not None:
            operands.append(self.quantized(_residual(node), node))
        replacement = self.graph.add_node(INTEGER_OPS[node.op], operands, attrs, node.loc,
                                          before=node)
        self.ctx.touched(replacement)
        result = replacement.result
        if not integer_epilogue:
            result = self._float_epilogue(node, result, activation)
        if quantized_output:
            self.twins[node.result] = result
            self.graph.record_origin(result, node.result)
        else:
            self.graph.replace_all_uses(node.result, result)
            if node.result in self.ranges:  # later layers quantize the new value instead
                self.ranges[result] = self.ranges[node.result]

    def rewrite_attention(self, node: Node) -> None:
        """attention -> qattention on the int8 forms of q, k and v (the projections' own
        quantized results where they feed it only through reshapes and permutes)."""
        operands = [self.quantized(x, node) for x in node.operands[:3]] + [node.operands[3]]
        replacement = self.graph.add_node("qattention", operands, {"scale": node.attrs["scale"]},
                                          node.loc, before=node)
        self.ctx.touched(replacement)
        self.graph.replace_all_uses(node.result, replacement.result)

    def quantized_weight(self, weight: Value) -> Value:
        quant = self.weight_quants.get(weight) or weight_params(weight.data)
        return self.graph.add_constant(self.graph.unique_constant_name(f"{weight.name}.q"),
                                       quantize_array(weight.data, quant, DType.i8), quant)

    def rewrite_dynamic(self, node: Node) -> None:
        """linear -> dynamic_qlinear: input ranges come from each batch at run time."""
        x, weight, bias = node.operands[:3]
        replacement = self.graph.add_node("dynamic_qlinear", [x, self.quantized_weight(weight), bias],
                                          {}, node.loc, before=node)
        self.ctx.touched(replacement)
        result = self._float_epilogue(node, replacement.result, node.attrs.get("activation", "none"))
        self.graph.replace_all_uses(node.result, result)

    def rewrite_weight_only(self, node: Node) -> None:
        """The weight is stored as int8 and dequantized when the layer runs."""
        weight = node.operands[1]
        dequantized = self.graph.add_node("dequantize", [self.quantized_weight(weight)], {},
                                          node.loc, before=node)
        self.ctx.touched(dequantized)
        node.operands[1] = dequantized.result
        self.ctx.touched(node)

    def _float_epilogue(self, node: Node, result: Value, activation: str) -> Value:
        """What the integer op cannot fuse, in float after it: residual add, then activation."""
        residual = node.operands[3] if len(node.operands) > 3 else None
        if residual is not None:
            result = self.graph.add_node("add", [result, residual], {}, node.loc, before=node).result
        if activation != "none":
            op, attrs = ACTIVATIONS[activation]
            result = self.graph.add_node(op, [result], attrs, node.loc, before=node).result
        return result

    def _bias(self, bias: Value, input_scale: float, weight_quant: QuantParams) -> Value:
        data = _bias_codes(bias, input_scale, weight_quant).astype(np.int32)  # they fit
        return self.graph.add_constant(self.graph.unique_constant_name(f"{bias.name}.q"), data)


def _feeds_only_integer_layers(value: Value, uses: dict, chosen: set[Node],
                               integer_residual: set[Node], attentions: set[Node]) -> bool:
    """Every path from ``value`` (through pass-through ops) ends at a layer being quantized, as
    its input or as a residual that the layer adds in integer arithmetic, or at an attention
    being quantized, as its q, k or v."""
    for user in uses.get(value, ()):
        if user is None:
            return False
        if user.op in PASS_THROUGH and user.operands[0] is value:
            if not _feeds_only_integer_layers(user.result, uses, chosen, integer_residual,
                                              attentions):
                return False
        elif user in attentions:
            if value is user.operands[3]:
                return False
        elif user not in chosen or not (
                user.operands[0] is value
                or (user in integer_residual and _residual(user) is value)):
            return False
    return True


def _attention_float_reason(node: Node, exclude: list[str]) -> str | None:
    """Why an attention stays in float, or None if it can become a qattention."""
    if any(x.type.dtype != DType.f32 for x in node.operands[:3]):
        return "attention operands are not f32"
    if excluded_by_name(node, exclude):
        return "excluded by name"
    return None


@dataclass(frozen=True)
class _Settings:
    mode: str
    observer: str
    percentile: float
    dtype: DType
    exclude: tuple[str, ...]
    random_data: bool
    attention: bool


@register_pass("quantize")
def quantize(graph: Graph, ctx: PassContext, *, mode: str = "static",
             calibration: str = "percentile", percentile: float = 99.99, activations: str = "u8",
             exclude: str = "", random_data: bool = False, min_sqnr: float = 0.0,
             max_drop: float = -1.0, embeddings: bool = True, attention: bool = True) -> bool:
    """Static post-training int8 quantization. Calibration data (given to run_passes or compile
    as ``calibration=``) runs through the float graph with observers; every conv2d and linear
    with constant weights becomes qconv2d / qlinear with int8 symmetric per-channel weights,
    int32 bias and a fused ReLU/ReLU6, taking u8 (or i8) activations; a fused residual add of the
    result's shape is added quantized in the integer epilogue, while a broadcasting residual
    follows in float on the dequantized result; other activations (gelu, silu, ...) run in the
    integer op on its f32 values, which it then quantizes (in float after it where a residual
    is added too). Integer results feed integer
    consumers directly (through max pooling and reshapes); quantize and dequantize appear only at
    the float boundaries. Layers that stay in float are counted with the reason.
    ``mode=dynamic`` needs no calibration: linear layers become dynamic_qlinear, which quantizes
    each batch's input from its own range at run time (for transformer linears);
    ``mode=weight-only`` stores conv and linear weights in int8 and dequantizes them when run.
    Embedding tables (float constants read only by lookups) are stored in int8 in every mode,
    with symmetric per-column scales: the lookup picks int8 rows and a dequantize follows.
    With an accuracy budget, the most sensitive layers fall back to float until it holds:
    ``min-sqnr`` is a floor on each layer's output SQNR against float, and ``max-drop`` bounds
    the drop of the user's metric (``metric=`` and optionally ``evaluation=`` data given to
    run_passes); layers go back in order of lowest SQNR. In static mode each attention becomes
    qattention: its q, k and v quantized per tensor (a projection's quantized result feeds it
    directly), q @ k^T and softmax @ v exact int32 products, the softmax weights u8.

    Options:
    mode: static, dynamic or weight-only
    calibration: observer for activation ranges: minmax, percentile, entropy or mse
    percentile: the percentile the percentile observer keeps
    activations: u8 (asymmetric, default) or i8 (symmetric)
    exclude: comma-separated name patterns (weights or module paths) kept in float
    random-data: calibrate on random inputs when no data is given (with a warning)
    min-sqnr: layers whose output SQNR (dB) against float falls below this stay in float
    max-drop: largest allowed drop of the user's metric; negative means no metric budget
    embeddings: store embedding tables in int8 (default true)
    attention: quantize attention (static mode; default true)
    """
    if mode not in ("static", "dynamic", "weight-only"):
        raise PassFailure(f"mode must be static, dynamic or weight-only, got '{mode}'")
    if calibration not in OBSERVERS:
        raise PassFailure(f"unknown observer '{calibration}' (known: {', '.join(OBSERVERS)})")
    if activations not in ("u8", "i8"):
        raise PassFailure(f"activations must be u8 or i8, got '{activations}'")
    if mode == "static" and ctx.data.get("calibration") is None and not random_data:
        raise PassFailure("quantize needs calibration data: pass calibration=... to run_passes "
                          "or compile, or set random-data=true to calibrate on noise")
    if max_drop >= 0 and ctx.data.get("metric") is None:
        raise PassFailure("max-drop needs a metric: pass metric=fn(outputs) to run_passes")
    patterns = tuple(p.strip() for p in exclude.split(",") if p.strip())
    settings = _Settings(mode, calibration, percentile, DType.parse(activations), patterns,
                         random_data, attention)
    if min_sqnr <= 0 and max_drop < 0:
        changed = _quantize_layers(graph, ctx, settings, frozenset())
    else:
        changed = _quantize_within_budget(graph, ctx, settings, min_sqnr, max_drop)
    if embeddings:
        changed = _quantize_embeddings(graph, ctx, list(patterns)) or changed
    return changed


EMBEDDING_MIN_ELEMENTS = 4096  # smaller tables save less than their dequantize costs


def _quantize_embeddings(graph: Graph, ctx: PassContext, exclude: list[str]) -> bool:
    """Store embedding tables in int8: f32 constants of rank 2 read only by lookups along axis 0
    (gathers of non-constant indices). Scales are symmetric per column, the axis every looked-up
    row keeps, so the lookup picks int8 rows and one dequantize gives the floats back. A table
    that something else reads as well (a layer kept in float, an output) stays float; a layer
    quantized with it has its own int8 copy by then."""
    uses = graph.uses()
    tables: dict[Value, Value] = {}  # float table -> its int8 copy
    for node in list(graph.nodes):
        if node.op != "gather":
            continue
        table, indices = node.operands
        if (not table.is_constant or table.type.dtype != DType.f32 or table.type.rank != 2
                or indices.is_constant or node.attrs["axis"] not in (0, -2)):
            continue
        if any(user is None or user.op != "gather" or user.operands[0] is not table
               for user in uses[table]):
            ctx.count("kept-float: embedding table has other uses")
            continue
        if table.data.size < EMBEDDING_MIN_ELEMENTS:
            ctx.count("kept-float: small embedding table")
            continue
        if excluded_by_name(node, exclude, weight=table):
            ctx.count("kept-float: excluded by name")
            continue
        if table not in tables:
            quant = QuantParams(symmetric_scales(np.abs(table.data).max(axis=0)), [0], axis=1)
            tables[table] = graph.add_constant(graph.unique_constant_name(f"{table.name}.q"),
                                               quantize_array(table.data, quant, DType.i8), quant)
        lookup = graph.add_node("gather", [tables[table], indices], dict(node.attrs), node.loc,
                                before=node)
        result = graph.add_node("dequantize", [lookup.result], {}, node.loc, before=node)
        ctx.touched(lookup)
        ctx.touched(result)
        graph.replace_all_uses(node.result, result.result)
    if not tables:
        return False
    remove_dead_nodes(graph)
    graph.remove_unused_constants()
    ctx.count("embedding-tables-quantized", len(tables))
    return True


def _quantize_layers(graph: Graph, ctx: PassContext, settings: _Settings,
                     fallback: frozenset[str]) -> bool:
    """Quantize every eligible layer except those whose weight is named in ``fallback``."""
    apply_rules(graph, [EPILOGUES[1]], ctx.pass_name, ctx.stats)  # activations into layers
    for node in graph.nodes:  # shared weights are decoded, except where the layer stays float
        if node.op in INTEGER_OPS:
            lookup = node.operands[1]
            _decode_shared_weight(graph, node)
            if lookup is not node.operands[1] and _float_reason(node, list(settings.exclude)):
                node.operands[1] = lookup
    graph.remove_unused_constants()
    chosen = []
    for node in graph.nodes:
        if node.op not in INTEGER_OPS:
            continue
        reason = _float_reason(node, list(settings.exclude))
        if reason is None and node.operands[1].name in fallback:
            reason = "over the accuracy budget"
        if reason is None and settings.mode == "dynamic" and INTEGER_OPS[node.op] != "qlinear":
            reason = "dynamic mode quantizes linear layers only"
        if reason is None:
            chosen.append(node)
        else:
            ctx.count(f"kept-float: {reason}")
    if not chosen:
        return False
    if settings.mode != "static":
        quantizer = _Quantizer(graph, ctx)
        for node in chosen:
            if settings.mode == "dynamic":
                quantizer.rewrite_dynamic(node)
            else:
                quantizer.rewrite_weight_only(node)
        return _finish(graph, ctx, chosen)
    attentions = []
    for node in graph.nodes if settings.attention else ():
        if node.op != "attention":
            continue
        reason = _attention_float_reason(node, list(settings.exclude))
        if reason is None:
            attentions.append(node)
        else:
            ctx.count(f"kept-float: {reason}")
    data = ctx.data.get("calibration")
    batches = calibration_batches(data, graph) if data is not None else random_batches(graph)
    try:
        observed = {v for n in chosen for v in (n.operands[0], n.result, _residual(n))
                    if v is not None}
        observed |= {x for n in attentions for x in n.operands[:3]}
        observers = observe(graph, observed, batches)
    except CalibrationError as err:
        raise PassFailure(str(err)) from err
    blind = [n for n in chosen if not observers[n.operands[0]].seen]
    blind += [n for n in attentions if not all(observers[x].seen for x in n.operands[:3])]
    for node in blind:
        ctx.count("kept-float: calibration saw no finite input values")
    chosen = [n for n in chosen if n not in blind]
    attentions = [n for n in attentions if n not in blind]
    ranges = {value: observer.range(settings.observer, settings.percentile)
              for value, observer in observers.items() if observer.seen}
    weight_quants = {n.operands[1]: weight_params(n.operands[1].data) for n in chosen}
    overflowing = [n for n in chosen if _multipliers_overflow(n, ranges, settings.dtype,
                                                              weight_quants[n.operands[1]])]
    for node in overflowing:
        ctx.count("kept-float: its scales overflow float32")
    chosen = [n for n in chosen if n not in overflowing]
    wide_bias = [n for n in chosen if _bias_overflows(n, ranges, settings.dtype,
                                                      weight_quants[n.operands[1]])]
    for node in wide_bias:
        ctx.count("kept-float: its bias overflows int32 at the input's scale")
    chosen = [n for n in chosen if n not in wide_bias]
    if not chosen:
        return bool(ctx.stats.get("act(layer) -> fused layer"))
    uses = graph.uses()
    chosen_set = set(chosen)
    seen = set(ranges)
    integer_epilogues = {n for n in chosen if _integer_epilogue(n, seen)}
    integer_residual = {n for n in integer_epilogues if _residual(n) is not None}
    quantized_outputs = {n: (n in integer_epilogues or _applies_float_activation(n))
                         and n.result in seen
                         and _feeds_only_integer_layers(n.result, uses, chosen_set,
                                                        integer_residual, set(attentions))
                         for n in chosen}
    quantizer = _Quantizer(graph, ctx, ranges, settings.dtype, weight_quants)
    for node in chosen:
        quantizer.rewrite(node, node in integer_epilogues, quantized_outputs[node])
    for node in attentions:
        quantizer.rewrite_attention(node)
    if attentions:
        ctx.count("attentions-quantized", len(attentions))
    return _finish(graph, ctx, chosen)


def _finish(graph: Graph, ctx: PassContext, chosen: list[Node]) -> bool:
    # A value's quantize goes before the first node that asked for it, which may follow a
    # later-rewritten reader (an attention before a linear layer on the same input).
    graph.sort()
    remove_dead_nodes(graph)
    graph.remove_unused_constants()
    ctx.count("layers-quantized", len(chosen))
    ctx.count("quantize-nodes", sum(n.op == "quantize" for n in graph.nodes))
    return True


BUDGET_BATCHES = 4  # evaluation batches used to measure layers against the budget


def _quantize_within_budget(graph: Graph, ctx: PassContext, settings: _Settings,
                            min_sqnr: float, max_drop: float) -> bool:
    """Quantize, measure, and hand the most sensitive layers back to float until the budget
    holds; each round quantizes a fresh copy of the float graph."""
    data = ctx.data.get("evaluation", ctx.data.get("calibration"))
    if data is None:
        raise PassFailure("an accuracy budget needs evaluation or calibration data")
    feeds = list(itertools.islice(calibration_batches(data, graph), BUDGET_BATCHES))
    metric = ctx.data.get("metric")
    baseline = _metric(graph, feeds, metric) if max_drop >= 0 else None
    fallback: frozenset[str] = frozenset()
    while True:
        trial = graph.copy()
        trial.origins = {}  # trace values back to this float graph only
        trial_ctx = PassContext(ctx.pass_name, ctx.data)
        reference = [interpret(trial, feed, keep_intermediates=True)["values"] for feed in feeds]
        changed = _quantize_layers(trial, trial_ctx, settings, fallback)
        sensitivity = _layer_sqnr(trial, feeds, reference)
        offenders = {name for name, sqnr in sensitivity.items() if sqnr < min_sqnr}
        if not offenders and baseline is not None and sensitivity:
            drop = baseline - _metric(trial, feeds, metric)
            if drop > max_drop:
                offenders = {min(sensitivity, key=sensitivity.get)}
        if not offenders:
            break
        fallback = fallback | offenders
    graph.assign(trial)
    ctx.stats.update(trial_ctx.stats)
    ctx.count("layers-over-budget", len(fallback))
    return changed


def _metric(graph: Graph, feeds: list[dict], metric) -> float:
    outputs = [interpret(graph, feed) for feed in feeds]
    return float(metric({name: np.concatenate([o[name] for o in outputs]) for name in outputs[0]}))


def _layer_sqnr(graph: Graph, feeds: list[dict], reference: list[dict]) -> dict[str, float]:
    """Output SQNR (dB) of every integer layer against its float original, by weight name."""
    layers = {n: n.operands[1].name.removesuffix(".q") for n in graph.nodes
              if n.op in ("qconv2d", "qlinear", "dynamic_qlinear")}
    signal = dict.fromkeys(layers, 0.0)
    noise = dict.fromkeys(layers, 0.0)
    for feed, ref in zip(feeds, reference):
        values = interpret(graph, feed, keep_intermediates=True)["values"]
        for node in layers:
            result = node.results[0]
            actual = values[result]
            if result.type.quant is not None:
                actual = dequantize_array(actual, result.type.quant)
            expected = ref[graph.origin(result)].astype(np.float64)
            signal[node] += float(np.sum(expected ** 2))
            noise[node] += float(np.sum((actual - expected) ** 2))
    return {name: (np.inf if noise[n] == 0 else 10 * np.log10(max(signal[n], 1e-30) / noise[n]))
            for n, name in layers.items()}
