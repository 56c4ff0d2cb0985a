"""gelu-tanh: an example nimbus pass in a package of its own (see docs/writing-a-pass.md)."""

from nimbus.passes import PassContext, register_pass
from nimbus.passes.rewrite import Match, Pat, Rewriter, Rule, Var, apply_rules


def _erf_gelu_in_scope(prefix: str):
    def check(node) -> bool:
        return node.attrs["approximate"] == "none" and node.loc.scope.startswith(prefix)

    return check


def _tanh_form(m: Match, rw: Rewriter):
    return rw.op("gelu", m["x"], approximate="tanh")


@register_pass("gelu-tanh")
def gelu_tanh(graph, ctx: PassContext, *, scope: str = "") -> bool:
    """Replace exact (erf) GELUs by the tanh approximation, which is cheaper on most hardware
    and within about 1e-3 of the exact form.

    Options:
    scope: only rewrite GELUs from modules whose path starts with this prefix
    """
    rules = [
        # gelu(x){approximate=none} -> gelu(x){approximate=tanh}
        Rule("gelu(x) -> gelu(x){tanh}",
             Pat("gelu", Var("x"), where=_erf_gelu_in_scope(scope)), _tanh_form),
    ]
    return apply_rules(graph, rules, ctx.pass_name, ctx.stats)
