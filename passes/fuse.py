"""fuse: fold epilogues into layers, recognise decomposed normalizations and attention, and merge
chains of elementwise ops into single regions."""

from __future__ import annotations

from nimbus.compiler.ir import Graph, Node, Value
from nimbus.compiler.ops import get_op
from nimbus.compiler.ops.common import normalize_axis
from nimbus.compiler.ops.fused import activation_of, parse_expr

from .manager import PassContext
from .registry import register_pass
from .rewrite import Absent, Const, Match, Pat, Rewriter, Rule, Var, apply_rules, remove_dead_nodes

FUSED_LAYER = {"conv2d": "fused_conv2d", "linear": "fused_linear", "matmul": "fused_matmul"}
RESIDUAL_POSITION = {"fused_conv2d": 3, "fused_linear": 3, "fused_matmul": 2}


def _open_epilogue(node: Node) -> bool:
    """A layer whose result can still take a residual add and an activation."""
    if node.op in FUSED_LAYER:
        return True
    return (node.op in RESIDUAL_POSITION and node.attrs["activation"] == "none"
            and node.operands[RESIDUAL_POSITION[node.op]] is None)


def _accepts_activation(node: Node) -> bool:
    return node.op in FUSED_LAYER or (node.op in RESIDUAL_POSITION
                                      and node.attrs["activation"] == "none")


def _fused_layer(m: Match, rw: Rewriter, residual: Value | None = None, activation: str = "none"):
    layer = m.node("layer")
    op = FUSED_LAYER.get(layer.op, layer.op)
    attrs = {k: v for k, v in layer.attrs.items() if k != "activation"}
    position = RESIDUAL_POSITION[op]
    operands = list(layer.operands[:position]) + [None] * (position - len(layer.operands))
    kept_residual = layer.operands[position] if layer.op in RESIDUAL_POSITION else None
    operands.append(residual if residual is not None else kept_residual)
    return rw.op(op, *operands, activation=activation, **attrs)


def _residual(m: Match, rw: Rewriter):
    layer_type = m.node("layer").results[0].type
    if m.root.results[0].type != layer_type or m["r"].type.dtype != layer_type.dtype:
        return None  # the add broadcasts the layer's result: not an epilogue
    return _fused_layer(m, rw, residual=m["r"])


def _activation(m: Match, rw: Rewriter):
    activation = activation_of(m.root.op, m.root.attrs)
    return None if activation is None else _fused_layer(m, rw, activation=activation)


LAYER_OPS = (*FUSED_LAYER, *RESIDUAL_POSITION)
ACTIVATION_OPS = ("relu", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish")

EPILOGUES = [
    # layer(x, w, b) + r -> fused_layer(x, w, b, residual=r)
    Rule("layer + residual -> fused layer",
         Pat("add", Pat(LAYER_OPS, name="layer", single_use=True, where=_open_epilogue), Var("r"),
             commutative=True), _residual),
    # act(layer(x, w, b) [+ r]) -> fused_layer{activation=act}
    Rule("act(layer) -> fused layer",
         Pat(ACTIVATION_OPS, Pat(LAYER_OPS, name="layer", single_use=True, where=_accepts_activation)),
         _activation),
]


# ---- normalizations written out by hand ---------------------------------------------------------
def _shortest_float(scalar: Value) -> float:
    """The scalar's value as the shortest decimal that rounds to it in its own precision."""
    return float(str(scalar.data.reshape(())))


def _trailing_axes(node: Node) -> bool:
    rank = node.operands[0].type.rank
    axes = sorted(normalize_axis(a, rank) for a in node.attrs["axes"])
    return node.attrs["keepdim"] and bool(axes) and axes == list(range(rank - len(axes), rank))


def _scalar(value: float | None = None):
    def check(v: Value) -> bool:
        return v.data.size == 1 and (value is None or float(v.data.reshape(())) == value)

    return check


def _layer_norm(m: Match, rw: Rewriter):
    mean_node, variance_node = m.node("mu"), m.node("var")
    if mean_node.attrs["axes"] != variance_node.attrs["axes"]:
        return None
    rank = m["x"].type.rank
    axis = min(normalize_axis(a, rank) for a in mean_node.attrs["axes"])
    return rw.op("layer_norm", m["x"], axis=axis, eps=_shortest_float(m["eps"]))


_CENTERED = Pat("sub", Var("x"), Pat("mean", Var("x"), name="mu", where=_trailing_axes), name="centered")
_VARIANCE = Pat("mean", Pat(("pow", "mul"), _CENTERED, Var("square")), name="var", where=_trailing_axes)
_VARIANCE_EPS = Pat("add", _VARIANCE, Const("eps", _scalar()), commutative=True)


def _squares(m: Match) -> bool:
    square = m["square"]
    return square is m.node("centered").results[0] or (square.is_constant and _scalar(2.0)(square))


def _checked_layer_norm(m: Match, rw: Rewriter):
    return _layer_norm(m, rw) if _squares(m) else None


def _affine(slot: int, captured: str):
    """Put the captured constant into layer_norm's weight (slot 1) or bias (slot 2) operand."""

    def rewrite(m: Match, rw: Rewriter):
        ln, value = m.node("ln"), m[captured]
        x = ln.operands[0]
        if tuple(value.type.shape) != tuple(x.type.shape[ln.attrs["axis"]:]) \
                or value.type.dtype != x.type.dtype:
            return None
        operands = list(ln.operands)
        operands[slot] = value
        return rw.op("layer_norm", *operands, **ln.attrs)

    return rewrite


def _softmax(m: Match, rw: Rewriter):
    total = m.node("total")
    axes = total.attrs["axes"]
    if len(axes) != 1 or ("peak" in m.nodes and m.node("peak").attrs["axes"] != axes):
        return None
    return rw.op("softmax", m["x"], axis=normalize_axis(axes[0], m["x"].type.rank))


def _single_axis(node: Node) -> bool:
    return node.attrs["keepdim"] and len(node.attrs["axes"]) == 1


_EXP_SHIFTED = Pat("exp", Pat("sub", Var("x"), Pat("reduce_max", Var("x"), name="peak",
                                                   where=_single_axis)), name="e")
_EXP_PLAIN = Pat("exp", Var("x"), name="e")

NORMALIZATIONS = [
    # (x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) -> layer_norm(x)
    Rule("decomposed layer norm (sqrt) -> layer_norm",
         Pat("div", _CENTERED, Pat("sqrt", _VARIANCE_EPS)), _checked_layer_norm),
    # (x - mean(x)) * rsqrt(var + eps) -> layer_norm(x)
    Rule("decomposed layer norm (rsqrt) -> layer_norm",
         Pat("mul", _CENTERED, Pat("rsqrt", _VARIANCE_EPS), commutative=True), _checked_layer_norm),
    # layer_norm(x) * g -> layer_norm(x, g)
    Rule("layer_norm * weight -> layer_norm",
         Pat("mul", Pat("layer_norm", Var("x"), Absent(), Absent(), name="ln", single_use=True),
             Const("g"), commutative=True), _affine(1, "g")),
    # layer_norm(x, g) + b -> layer_norm(x, g, b)
    Rule("layer_norm + bias -> layer_norm",
         Pat("add", Pat("layer_norm", Var("x"), Var("_w", optional=True), Absent(), name="ln",
                        single_use=True),
             Const("b"), commutative=True), _affine(2, "b")),
    # exp(x - max(x)) / sum(exp(x - max(x))) -> softmax(x)
    Rule("decomposed softmax -> softmax",
         Pat("div", _EXP_SHIFTED, Pat("sum", _EXP_SHIFTED, name="total", where=_single_axis)),
         _softmax),
    Rule("exp(x) / sum(exp(x)) -> softmax",
         Pat("div", _EXP_PLAIN, Pat("sum", _EXP_PLAIN, name="total", where=_single_axis)), _softmax),
]


# ---- attention -------------------------------------------------------------------------------------
def _key_permutation(perm) -> list[int] | None:
    """For k^T = permute(x, perm), the permutation that gives k itself (last two axes back)."""
    perm = list(perm)
    return perm[:-2] + [perm[-1], perm[-2]] if len(perm) >= 2 else None


def _last_axis_softmax(node: Node) -> bool:
    rank = node.operands[0].type.rank
    return normalize_axis(node.attrs["axis"], rank) == rank - 1


def _attention_scale(m: Match, scaling: str) -> float:
    if scaling == "none":
        return 1.0
    if scaling == "mul":
        return _shortest_float(m["s"])
    if scaling == "div":
        return 1.0 / _shortest_float(m["s"])
    return _shortest_float(m["s_q"]) * _shortest_float(m["s_k"])


def _attention(scaling: str):
    def rewrite(m: Match, rw: Rewriter):
        mask, q = m.values.get("mask"), m["q"]
        if mask is not None and mask.type.dtype != q.type.dtype:
            return None
        key_perm = _key_permutation(m.node("kt").attrs["perm"])
        k = m["k"]
        if key_perm != list(range(len(key_perm))):
            k = rw.op("permute", k, perm=key_perm)
        return rw.op("attention", q, k, m["v"], mask, scale=_attention_scale(m, scaling))

    return rewrite


def _is_zero(value: Value) -> bool:
    node = value.producer
    if value.is_constant:
        return not value.data.any()
    return node is not None and node.op == "full" and node.attrs["value"] == 0.0


def _scores(scaling: str, masked: bool) -> Pat:
    """q @ k^T, scaled one of four ways, plus an optional additive mask (named 'scores')."""
    key_t = Pat("permute", Var("k"), name="kt")
    if scaling == "split":  # sqrt(scale) applied to q and to k^T, as PyTorch's math SDPA does
        scores = Pat("matmul", Pat("mul", Var("q"), Const("s_q", _scalar()), single_use=True),
                     Pat("mul", key_t, Const("s_k", _scalar()), single_use=True), single_use=True)
    else:
        scores = Pat("matmul", Var("q"), key_t, single_use=True)
        if scaling != "none":
            scores = Pat(scaling, scores, Const("s", _scalar()), single_use=True)
    if masked:
        return Pat("add", scores, Var("mask"), commutative=True, name="scores")
    # The scores feed the softmax and, in the guarded form, the all-masked test as well.
    scores.name, scores.single_use = "scores", False
    return scores


def _attention_rules() -> list[Rule]:
    rules = []
    for scaling in ("split", "mul", "div", "none"):
        for masked in (True, False):
            for guarded in (True, False):
                scores = _scores(scaling, masked)
                probabilities = Pat("softmax", scores, where=_last_axis_softmax, single_use=True)
                if guarded:
                    # PyTorch's SDPA zeroes rows whose scores are all -inf; attention does too.
                    all_masked = Pat("logical_not", Pat("reduce_max", Pat("logical_not", Pat(
                        "eq", scores, Const("neg_inf", _scalar(float("-inf")))))))
                    probabilities = Pat("where", all_masked, Var("zero", where=_is_zero),
                                        probabilities)
                pattern = Pat("matmul", probabilities, Var("v"))
                text = (f"softmax(q @ k^T, scale {scaling}{', mask' if masked else ''}"
                        f"{', guarded' if guarded else ''}) @ v -> attention")
                rules.append(Rule(text, pattern, _attention(scaling)))
    return rules


ATTENTION = _attention_rules()


# ---- elementwise regions -----------------------------------------------------------------------------
def _is_elementwise(node: Node | None) -> bool:
    return node is not None and get_op(node.op).family == "elementwise" and len(node.results) == 1


def fuse_elementwise_regions(graph: Graph, ctx: PassContext, min_ops: int = 2) -> bool:
    """Merge every maximal tree of single-use elementwise nodes into one fused_elementwise."""
    uses = graph.uses()
    absorbed: set[Node] = set()
    changed = False
    for root in reversed(list(graph.nodes)):
        if root in absorbed or not _is_elementwise(root):
            continue
        inputs: list[Value] = []
        members: list[Node] = []

        def express(value: Value, top: bool = False) -> str:
            node = value.producer
            if top or (_is_elementwise(node) and len(uses.get(value, ())) == 1 and node not in absorbed):
                members.append(node)
                attrs = _expr_attrs(node)
                args = ",".join(express(o) for o in node.operands if o is not None)
                return f"{node.op}{attrs}({args})"
            if value not in inputs:
                inputs.append(value)
            return f"${inputs.index(value)}"

        text = express(root.results[0], top=True)
        if len(members) < min_ops:
            continue
        expr = str(parse_expr(text, len(inputs)))
        node = graph.add_node("fused_elementwise", inputs, {"expr": expr}, root.loc, before=root)
        node.loc = node.loc.merge([root.loc, *(m.loc for m in members)]).touched_by(ctx.pass_name)
        graph.replace_all_uses(root.results[0], node.results[0])
        absorbed.update(members)
        ctx.count("elementwise-regions")
        ctx.count("elementwise-ops-fused", len(members))
        changed = True
    if changed:
        remove_dead_nodes(graph)
    return changed


def _expr_attrs(node: Node) -> str:
    schema = get_op(node.op).attrs
    shown = [(k, v) for k, v in node.attrs.items() if v != schema[k].default]
    if not shown:
        return ""
    return "[" + ",".join(f"{k}={_expr_value(v)}" for k, v in shown) + "]"


def _expr_value(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


@register_pass("fuse")
def fuse(graph: Graph, ctx: PassContext, *, activations: bool = True, residual: bool = True,
         normalizations: bool = True, attention: bool = True, elementwise: bool = True) -> bool:
    """Fuse for fewer, larger kernels: conv2d, linear and matmul absorb a following residual add
    and activation (relu, relu6, gelu, silu, sigmoid, tanh, hardswish) into fused_conv2d,
    fused_linear and fused_matmul; layer norms and softmaxes written out by hand become
    layer_norm and softmax; softmax(q @ k^T * scale + mask) @ v becomes one attention op; and
    every remaining tree of single-use elementwise ops becomes one fused_elementwise region.

    Options:
    activations: fold activations into the layer before them
    residual: fold residual adds into the layer before them
    normalizations: recognise decomposed layer norm and softmax
    attention: recognise the attention pattern
    elementwise: merge chains of elementwise ops into regions
    """
    changed = False
    if normalizations:
        changed |= apply_rules(graph, NORMALIZATIONS, ctx.pass_name, ctx.stats)
    if attention:
        changed |= apply_rules(graph, ATTENTION, ctx.pass_name, ctx.stats)
    epilogues = [EPILOGUES[0]] * residual + [EPILOGUES[1]] * activations
    if epilogues:
        changed |= apply_rules(graph, epilogues, ctx.pass_name, ctx.stats)
    if elementwise:
        changed |= fuse_elementwise_regions(graph, ctx)
    return changed
