"""prune: magnitude pruning of conv and linear weights: unstructured, N:M, or whole channels."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from nimbus.compiler.ir import Graph, Node, TensorType, Value
from nimbus.compiler.ops import get_op

from .layers import excluded_by_name
from .manager import PassContext, PassFailure
from .registry import register_pass

CONV_OPS = ("conv2d", "fused_conv2d")
LINEAR_OPS = ("linear", "fused_linear")
# matmul with a constant [in, out] operand b is a linear layer too (unstructured and N:M only)
MATMUL_OPS = ("matmul", "fused_matmul")
# ops that keep channels on axis 1 of NCHW and treat them independently
CHANNEL_POOLS = ("max_pool2d", "avg_pool2d", "adaptive_avg_pool2d")


@register_pass("prune")
def prune(graph: Graph, ctx: PassContext, *, sparsity: float = 0.5, scope: str = "layer",
          n: int = 0, m: int = 0, structured: bool = False, norm: str = "l1",
          multiple_of: int = 1, exclude: str = "", min_size: int = 0) -> bool:
    """Magnitude pruning of conv2d, linear (plain or fused) and constant-weight matmul layers.
    By default each layer's smallest-magnitude weights are set to zero until it reaches
    ``sparsity`` (the count rounds half up; zeros already there count), and
    shapes stay. ``scope=global`` ranks the raw magnitudes of all layers together, as
    compiler.training.prune_for_training does, so the overall sparsity is reached and layers
    with larger weights keep more of them. ``n`` and ``m`` (e.g. n=2 m=4) keep the n largest
    magnitudes of every m consecutive weights along the reduction axis: input features of a
    linear, input channels at each kernel tap of a conv (the order sparse tensor cores read);
    a last partial group of r weights keeps ceil(n * r / m); ``sparsity`` is then unused.
    ``structured=true`` removes whole output channels with the smallest L1 (or L2) norms and
    shrinks the graph: the layer's weight and bias lose those rows (a removed channel's bias
    goes with it, the standard behavior: its consumers lose that input entirely rather than see
    act(bias)), and its consumers lose the matching inputs through activations and other
    elementwise ops with constant operands, pooling, batch_norm, depthwise convolutions (which
    shrink in turn), a flatten into a linear, and the input channels of the next conv2d or
    linear. A layer whose channels reach a graph output, a residual add, a concat, an excluded
    layer or any consumer not listed is left whole and counted as skipped with the reason, so
    outputs never change shape; the kept channel count is C - round(sparsity * C), at least
    one, rounded up to a multiple of ``multiple-of``. Statistics: ``sparsity: <weight>`` (share
    of zeros) or ``channel-sparsity: <weight>`` (share of output channels removed) per layer;
    ``layers-pruned``, ``weights-zeroed`` and ``sparsity`` (over the layers considered) or
    ``channels-removed``; ``skipped: <reason>``. Recommended order: fold-batchnorm, then prune (folding rescales
    weights, so magnitudes are only comparable after it; it keeps zeros either way), then
    quantize, which keeps zeros as int8 zeros.

    Options:
    sparsity: share of weights (or, structured, of output channels) to remove, in [0, 1)
    scope: layer (each layer reaches the sparsity) or global (all layers ranked together)
    n: keep n weights of every m (N:M pruning); 0 turns N:M off
    m: group size of N:M pruning
    structured: remove whole output channels and shrink the graph
    norm: l1 or l2, the channel norm structured pruning ranks by
    multiple-of: structured: round the kept channel count up to a multiple of this
    exclude: comma-separated name patterns (weights or module paths) left unpruned
    min-size: layers with fewer weights than this are left unpruned
    """
    _check_options(sparsity, scope, n, m, structured, norm, multiple_of, min_size)
    patterns = [p.strip() for p in exclude.split(",") if p.strip()]
    if structured:
        return _prune_channels(graph, ctx, sparsity, norm, multiple_of, patterns, min_size)
    layers = _prunable_weights(graph, ctx, patterns, min_size)
    if n:
        masks = {w: _n_of_m_mask(users[0], w.data, n, m) for w, users in layers.items()}
    elif scope == "global":
        masks = _global_masks(list(layers), sparsity)
    else:
        masks = {w: _keep_mask(np.abs(w.data), _rounded(sparsity * w.data.size)) for w in layers}
    return _zero_weights(graph, ctx, layers, masks)


def _check_options(sparsity, scope, n, m, structured, norm, multiple_of, min_size) -> None:
    if not 0.0 <= sparsity < 1.0:
        raise PassFailure(f"sparsity must be in [0, 1), got {sparsity}")
    if scope not in ("layer", "global"):
        raise PassFailure(f"scope must be layer or global, got '{scope}'")
    if (n, m) != (0, 0) and not 1 <= n <= m:
        raise PassFailure(f"N:M pruning keeps n of every m weights and needs 1 <= n <= m, "
                          f"got n={n} m={m}")
    if n and structured:
        raise PassFailure("N:M pruning is unstructured: give either n and m or structured=true")
    if scope == "global" and (n or structured):
        raise PassFailure("scope=global ranks single weights across layers; N:M groups and "
                          "structured channels are ranked within each layer")
    if norm not in ("l1", "l2"):
        raise PassFailure(f"norm must be l1 or l2, got '{norm}'")
    if multiple_of < 1:
        raise PassFailure(f"multiple-of must be at least 1, got {multiple_of}")
    if min_size < 0:
        raise PassFailure(f"min-size must not be negative, got {min_size}")


def _rounded(count: float) -> int:
    return int(np.floor(count + 0.5))


def _skip_reason(node: Node, patterns: list[str], min_size: int) -> str | None:
    """Why a layer is left unpruned, or None."""
    weight = node.operands[1]
    if not weight.is_constant:
        return "weight is not a constant"
    if excluded_by_name(node, patterns):
        return "excluded by name"
    if weight.data.size < min_size:
        return "smaller than min-size"
    return None


def _is_layer(node: Node) -> bool:
    if node.op in CONV_OPS + LINEAR_OPS:
        return True
    weight = node.operands[1] if node.op in MATMUL_OPS else None
    return weight is not None and weight.is_constant and weight.type.rank == 2


def _prunable_weights(graph: Graph, ctx: PassContext, patterns: list[str],
                      min_size: int) -> dict[Value, list[Node]]:
    """Each prunable weight with its layers; a weight shared by layers is pruned once, and not
    at all when one of them is left alone."""
    users: dict[Value, list[Node]] = {}
    reasons: dict[Value, str] = {}
    for node in filter(_is_layer, graph.nodes):
        weight = node.operands[1]
        users.setdefault(weight, []).append(node)
        reason = _skip_reason(node, patterns, min_size)
        if reason is not None:
            reasons.setdefault(weight, reason)
    for reason in reasons.values():
        ctx.count(f"skipped: {reason}")
    return {w: nodes for w, nodes in users.items() if w not in reasons}


def _keep_mask(scores: np.ndarray, pruned: int) -> np.ndarray:
    """False for the ``pruned`` smallest scores (earlier entries first among equals)."""
    order = np.argsort(scores, axis=None, kind="stable")
    keep = np.ones(scores.size, dtype=bool)
    keep[order[:pruned]] = False
    return keep.reshape(scores.shape)


def _global_masks(weights: list[Value], sparsity: float) -> dict[Value, np.ndarray]:
    scores = np.concatenate([np.abs(w.data).ravel() for w in weights]) if weights else np.zeros(0)
    keep = _keep_mask(scores, _rounded(sparsity * scores.size))
    ends = np.cumsum([w.data.size for w in weights])[:-1]
    return {w: part.reshape(w.data.shape) for w, part in zip(weights, np.split(keep, ends))}


def _n_of_m_mask(layer: Node, weight: np.ndarray, n: int, m: int) -> np.ndarray:
    """The N:M mask with groups along the reduction axis, which goes last for grouping: conv
    OIHW as OHWI (input channels at each tap), matmul [in, out] as [out, in]."""
    if layer.op in CONV_OPS:
        return _group_mask(weight.transpose(0, 2, 3, 1), n, m).transpose(0, 3, 1, 2)
    if layer.op in MATMUL_OPS:
        return _group_mask(weight.T, n, m).T
    return _group_mask(weight, n, m)


def _group_mask(rows: np.ndarray, n: int, m: int) -> np.ndarray:
    """Keep the n largest magnitudes of every m consecutive entries along the last axis; a last
    partial group of r entries keeps ceil(n * r / m)."""
    width = rows.shape[-1]
    groups = -(-width // m)
    padded = np.full(rows.shape[:-1] + (groups * m,), -1.0)  # padding ranks below every weight
    padded[..., :width] = np.abs(rows)
    grouped = padded.reshape(rows.shape[:-1] + (groups, m))
    rank = np.argsort(np.argsort(-grouped, axis=-1, kind="stable"), axis=-1)
    sizes = np.minimum(m, width - m * np.arange(groups))
    keep = rank < -(-n * sizes // m)[:, None]
    return keep.reshape(padded.shape)[..., :width]


def _replace_constant(graph: Graph, old: Value, data: np.ndarray) -> Value:
    """A constant holding ``data`` under ``old``'s name and place among the constants, so later
    passes' exclude patterns and the accuracy ledger still find the layer by its name; the
    caller moves the uses."""
    new = Value(TensorType.of_array(data), name=old.name, data=np.asarray(data, order="C"))
    graph.constants = {name: new if value is old else value
                       for name, value in graph.constants.items()}
    return new


def _zero_weights(graph: Graph, ctx: PassContext, layers: dict[Value, list[Node]],
                  masks: dict[Value, np.ndarray]) -> bool:
    changed = False
    zeros = total = 0
    for weight, users in layers.items():
        pruned = np.where(masks[weight], weight.data, 0).astype(weight.data.dtype)
        layer_zeros = int(np.count_nonzero(pruned == 0))
        zeros, total = zeros + layer_zeros, total + pruned.size
        ctx.count(f"sparsity: {weight.name}", layer_zeros / pruned.size)
        if np.array_equal(pruned, weight.data):
            continue
        changed = True
        ctx.count("layers-pruned")
        ctx.count("weights-zeroed", int(np.count_nonzero(pruned != weight.data)))
        graph.replace_all_uses(weight, _replace_constant(graph, weight, pruned))
        for node in users:
            ctx.touched(node)
    if total:
        ctx.count("sparsity", zeros / total)
    return changed


# ---- structured pruning ------------------------------------------------------------------------
@dataclass
class _ChannelPlan:
    """What removing output channels of a layer changes: constants to slice, each along an axis
    where every channel owns ``block`` consecutive entries (a flatten gives each channel H*W
    features); every node whose operands change (the layer first); and the consumers among
    them whose results keep their shape."""

    slices: dict[Value, tuple[int, int]] = field(default_factory=dict)
    nodes: dict[Node, None] = field(default_factory=dict)  # an ordered set
    ends: set[Node] = field(default_factory=set)


def _prune_channels(graph: Graph, ctx: PassContext, sparsity: float, norm: str, multiple_of: int,
                    patterns: list[str], min_size: int) -> bool:
    changed = False
    decided: set = set()  # weight names (pruning a layer rebuilds its consumers) or nodes
    while True:
        layer = next((n for n in graph.nodes
                      if n.op in CONV_OPS + LINEAR_OPS and _key(n) not in decided), None)
        if layer is None:
            return changed
        decided.add(_key(layer))
        weight = layer.operands[1]
        plan = _skip_reason(layer, patterns, min_size)
        if plan is None and layer.attrs.get("groups", 1) > 1:
            plan = "is a grouped convolution (its channels follow its input's)"
        if plan is None:
            plan = _plan_channels(layer, graph.uses(), patterns)
        if isinstance(plan, str):
            ctx.count(f"skipped: {plan}")
            continue
        keep = _channels_to_keep(weight.data, sparsity, norm, multiple_of)
        ctx.count(f"channel-sparsity: {weight.name}", 1 - keep.size / weight.data.shape[0])
        if keep.size < weight.data.shape[0]:
            _remove_channels(graph, ctx, plan, keep)
            ctx.count("layers-pruned")
            ctx.count("channels-removed", weight.data.shape[0] - keep.size)
            changed = True


def _key(layer: Node):
    weight = layer.operands[1]
    return weight.name if weight.is_constant else layer


def _channels_to_keep(weight: np.ndarray, sparsity: float, norm: str, multiple_of: int) -> np.ndarray:
    """Indices of the output channels with the largest norms; their count is rounded up to a
    multiple of ``multiple_of`` (at most all, at least one)."""
    channels = weight.shape[0]
    magnitudes = np.abs(weight.reshape(channels, -1).astype(np.float64))
    norms = magnitudes.sum(axis=1) if norm == "l1" else np.sqrt((magnitudes ** 2).sum(axis=1))
    kept = max(1, channels - _rounded(sparsity * channels))
    kept = min(channels, -(-kept // multiple_of) * multiple_of)
    return np.flatnonzero(_keep_mask(norms, channels - kept))


def _plan_channels(layer: Node, uses: dict, patterns: list[str]) -> _ChannelPlan | str:
    """Follow the layer's output channels to the consumers that absorb them, or say why not."""
    plan = _ChannelPlan()
    if len(layer.operands) > 3 and layer.operands[3] is not None:
        return "has a fused residual add"
    _take_output_channels(layer, plan)
    result = layer.result
    pending = [(result, 1 if layer.op in CONV_OPS else result.type.rank - 1, 1)]
    while pending:
        value, axis, block = pending.pop()
        for user in dict.fromkeys(uses.get(value, [])):
            if user is None:
                return "reaches a graph output"
            reason = _follow(user, value, axis, block, plan, pending, patterns)
            if reason is not None:
                return reason
    if any(len(uses[constant]) > 1 for constant in plan.slices):
        return "a weight it would shrink is shared"
    return plan


def _take_output_channels(layer: Node, plan: _ChannelPlan) -> None:
    for constant in layer.operands[1:3]:
        if constant is not None:
            plan.slices[constant] = (0, 1)
    plan.nodes[layer] = None


def _follow(user: Node, value: Value, axis: int, block: int, plan: _ChannelPlan, pending: list,
            patterns: list[str]) -> str | None:
    """Add what ``user`` needs to the plan (and its result to ``pending`` when the channels
    flow on), or return why the channels cannot be removed."""
    positions = [i for i, operand in enumerate(user.operands) if operand is value]
    op = user.op
    if op in CONV_OPS + LINEAR_OPS and positions == [0]:
        return _follow_layer(user, value, axis, block, plan, pending, patterns)
    if op in CONV_OPS + LINEAR_OPS and positions == [3]:
        return "joins another branch in a fused residual add"
    if get_op(op).family == "elementwise" or op == "fused_elementwise":
        return _follow_elementwise(user, value, axis, block, plan, pending)
    flows_on = None
    if op == "batch_norm" and positions == [0] and axis == 1 and block == 1:
        for param in user.operands[1:]:
            if param is not None:
                if not param.is_constant:
                    return "feeds a batch_norm with computed parameters"
                plan.slices[param] = (0, 1)
        flows_on = (1, 1)
    elif op in CHANNEL_POOLS and axis == 1 and block == 1:
        flows_on = (1, 1)
    elif op == "reshape" and _flattens_channels(value, user.result, axis):
        flows_on = (1, block * int(np.prod(value.type.shape[2:])))
    if flows_on is None:
        return f"feeds {op}"
    plan.nodes[user] = None
    pending.append((user.result, *flows_on))
    return None


def _flattens_channels(value: Value, result: Value, axis: int) -> bool:
    """reshape [N, C, ...] -> [N, C * ...]: channel c owns a run of consecutive features."""
    shape = value.type.shape
    return (axis == 1 and result.type.rank == 2 and result.type.shape[0] == shape[0]
            and all(isinstance(d, int) for d in shape[1:]))


def _follow_layer(user: Node, value: Value, axis: int, block: int, plan: _ChannelPlan,
                  pending: list, patterns: list[str]) -> str | None:
    weight = user.operands[1]
    if not weight.is_constant:
        return f"feeds a {user.op} with a computed weight"
    if excluded_by_name(user, patterns):
        return "feeds an excluded layer"  # an excluded layer is left exactly as it is
    if user.op in LINEAR_OPS:
        if axis != value.type.rank - 1:
            return "feeds a linear along another axis"
        plan.slices[weight] = (1, block)
    elif (axis, block) != (1, 1):
        return "feeds a conv2d along another axis"
    elif user.attrs["groups"] == 1:
        plan.slices[weight] = (1, 1)
    elif user.attrs["groups"] == value.type.shape[1] == weight.type.shape[0]:
        if len(user.operands) > 3 and user.operands[3] is not None:
            return "feeds a depthwise convolution with a fused residual add"
        _take_output_channels(user, plan)  # depthwise: its own outputs go too
        pending.append((user.result, 1, 1))
        return None
    else:
        return "feeds a grouped convolution"
    plan.nodes[user] = None
    plan.ends.add(user)
    return None


def _follow_elementwise(user: Node, value: Value, axis: int, block: int, plan: _ChannelPlan,
                        pending: list) -> str | None:
    """An elementwise op whose other operands are constants: per-channel ones lose the removed
    channels, broadcast ones stay."""
    rank = user.result.type.rank
    result_axis = axis + rank - value.type.rank
    for operand in user.operands:
        if operand is None or operand is value:
            continue
        if not operand.is_constant:
            return f"joins another branch in {user.op}"
        aligned = result_axis - (rank - operand.type.rank)
        if aligned >= 0 and operand.type.shape[aligned] != 1:
            plan.slices[operand] = (aligned, block)
    plan.nodes[user] = None
    pending.append((user.result, result_axis, block))
    return None


def _remove_channels(graph: Graph, ctx: PassContext, plan: _ChannelPlan, keep: np.ndarray) -> None:
    """Rebuild the planned nodes on the sliced constants. Shrunk values are new values with no
    origin, so the ledger never compares them with their wider float originals; the consumers
    that keep their shape replace their originals."""
    renamed: dict[Value, Value] = {}
    for constant, (axis, block) in plan.slices.items():
        entries = (keep[:, None] * block + np.arange(block)).ravel()
        renamed[constant] = _replace_constant(graph, constant, np.take(constant.data, entries, axis))
    order = sorted(plan.nodes, key=graph.nodes.index)
    for old in order:
        operands = [renamed.get(o, o) if o is not None else None for o in old.operands]
        node = ctx.touched(graph.add_node(old.op, operands, _resized_attrs(old, operands[0]),
                                          old.loc, before=old))
        if old in plan.ends:
            graph.replace_all_uses(old.result, node.result)
        else:
            renamed[old.result] = node.result
    for old in order:
        graph.remove_node(old)


def _resized_attrs(node: Node, source: Value) -> dict:
    """Attributes that count channels follow the narrower input: a flatten's feature count, a
    depthwise convolution's groups."""
    attrs = dict(node.attrs)
    if node.op == "reshape":
        attrs["shape"] = (attrs["shape"][0], int(np.prod(source.type.shape[1:])))
    elif node.op in CONV_OPS and attrs["groups"] > 1:
        attrs["groups"] = source.type.shape[1]
    return attrs
