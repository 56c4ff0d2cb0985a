"""Renders docs/ops.md from the op table, so the list of ops cannot drift from the code.

Regenerate with ``python -m nimbus.compiler.ops.docs > docs/ops.md``; a test checks it is current.
"""

from __future__ import annotations

from . import OP_TABLE
from .registry import REQUIRED

FAMILY_TITLES = {
    "elementwise": "Elementwise",
    "nn": "Neural network",
    "shape": "Data movement",
    "reduce": "Reductions",
    "quant": "Quantization and integer ops",
    "fused": "Fused ops (produced by the fuse pass)",
}


def _attr_text(name, attr) -> str:
    default = "required" if attr.default is REQUIRED else f"default `{_value_text(attr.default)}`"
    return f"`{name}`: {attr.kind}, {default}" + (f" ({attr.doc})" if attr.doc else "")


def _value_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return "[" + ", ".join(_value_text(v) for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def render_markdown() -> str:
    lines = [
        "# Ops",
        "",
        "Every op nimbus knows, generated from the op table (`compiler/ops/`); each entry there",
        "also holds the op's type rule, numpy reference and FLOP count. Layouts follow PyTorch",
        "(NCHW activations, OIHW conv weights, [out, in] linear weights). Operands marked `?`",
        "are optional, `*` takes any number.",
        "",
        f"{len(OP_TABLE)} ops.",
    ]
    for family, title in FAMILY_TITLES.items():
        ops = sorted((op for op in OP_TABLE.values() if op.family == family), key=lambda o: o.name)
        lines += ["", f"## {title}", "", "| op | operands | attributes | meaning |",
                  "| --- | --- | --- | --- |"]
        for op in ops:
            attrs = "<br>".join(_attr_text(n, a) for n, a in op.attrs.items()) or "—"
            operands = ", ".join(op.operands) or "—"
            lines.append(f"| `{op.name}` | {operands} | {attrs} | {op.doc} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")
