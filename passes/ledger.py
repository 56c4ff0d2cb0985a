"""The accuracy ledger: run a compression pipeline one pass at a time and record, after every
pass, how far each changed value and each output moved from the float original (SQNR, cosine,
max error) on evaluation data, the user's metric, and the model's size, sparsity and FLOPs, so
a loss can be traced to a pass and a node.

The float reference is computed once on the evaluation batches and kept in memory, so use a
few batches (``max_batches``). Values are matched to the reference through ``Graph.origins``,
which every replacement records; quantized values are dequantized before comparison.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from nimbus.compiler.interpreter import interpret
from nimbus.compiler.ir import Graph, Value
from nimbus.compiler.ops.quant import dequantize_array
from nimbus.compiler.summary import node_costs, symbol_names

from .calibration import calibration_batches
from .manager import PassManager
from .pipeline import parse_pipeline

Metric = Callable[[dict[str, np.ndarray]], float]


@dataclass
class Drift:
    """How far one value moved from its float reference, over all evaluation batches."""

    signal: float = 0.0
    noise: float = 0.0
    dot: float = 0.0
    norm_actual: float = 0.0
    max_error: float = 0.0

    def add(self, actual: np.ndarray, reference: np.ndarray) -> None:
        actual, reference = actual.astype(np.float64), reference.astype(np.float64)
        finite = np.isfinite(actual) & np.isfinite(reference)
        actual, reference = actual[finite], reference[finite]
        self.signal += float(np.sum(reference ** 2))
        self.noise += float(np.sum((actual - reference) ** 2))
        self.dot += float(np.sum(actual * reference))
        self.norm_actual += float(np.sum(actual ** 2))
        self.max_error = max(self.max_error, float(np.abs(actual - reference).max(initial=0.0)))

    def summary(self) -> dict[str, float]:
        sqnr = np.inf if self.noise == 0 else 10 * np.log10(max(self.signal, 1e-30) / self.noise)
        denominator = np.sqrt(self.signal * self.norm_actual)
        cosine = self.dot / denominator if denominator > 0 else 1.0
        return {"sqnr_db": float(sqnr), "cosine": float(cosine), "max_error": self.max_error}


@dataclass
class NodeRow:
    step: str
    op: str
    source: str
    sqnr_db: float
    cosine: float
    max_error: float
    layer: str = ""  # the weight the node applies, named as in the float graph


@dataclass
class Step:
    name: str
    outputs: dict[str, dict[str, float]]
    metric: float | None
    weight_bytes: int
    weight_sparsity: float
    mflops: float
    int8_flop_share: float
    nodes: int
    statistics: dict[str, float] = field(default_factory=dict)


@dataclass
class Ledger:
    pipeline: str
    steps: list[Step] = field(default_factory=list)
    rows: list[NodeRow] = field(default_factory=list)
    backoffs: list[str] = field(default_factory=list)  # what a budget changed, in order

    def to_json(self) -> dict:
        return {"pipeline": self.pipeline, "steps": [asdict(s) for s in self.steps],
                "rows": [asdict(r) for r in self.rows], "backoffs": self.backoffs}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1, allow_nan=True))

    @staticmethod
    def load(path: str | Path) -> "Ledger":
        data = json.loads(Path(path).read_text())
        return Ledger(data["pipeline"], [Step(**s) for s in data["steps"]],
                      [NodeRow(**r) for r in data["rows"]], data.get("backoffs", []))

    def table(self) -> str:
        lines = [f"accuracy ledger for {self.pipeline}", "",
                 f"{'step':<28}{'nodes':>6}{'weights KB':>12}{'sparsity':>9}{'MFLOPs':>10}"
                 f"{'int8':>6}{'out SQNR dB':>12}{'cosine':>9}{'metric':>9}"]
        for step in self.steps:
            worst = min(step.outputs.values(), key=lambda o: o["sqnr_db"])
            metric = f"{step.metric:.4g}" if step.metric is not None else "-"
            lines.append(f"{step.name:<28}{step.nodes:>6}{step.weight_bytes / 1024:>12.1f}"
                         f"{step.weight_sparsity:>9.1%}{step.mflops:>10.2f}"
                         f"{step.int8_flop_share:>6.0%}{worst['sqnr_db']:>12.1f}"
                         f"{worst['cosine']:>9.5f}{metric:>9}")
        if self.rows:
            lines += ["", f"{'step':<28}{'op':<18}{'SQNR dB':>9}{'cosine':>9}{'max err':>11}  source"]
            for row in sorted(self.rows, key=lambda r: r.sqnr_db):
                lines.append(f"{row.step:<28}{row.op:<18}{row.sqnr_db:>9.1f}{row.cosine:>9.5f}"
                             f"{row.max_error:>11.4g}  {row.source}")
        kept = {k: v for s in self.steps for k, v in s.statistics.items() if k.startswith("kept-float")}
        if kept:
            lines += ["", "kept in float:"] + [f"  {k.split(': ', 1)[1]}: {int(v)}" for k, v in kept.items()]
        if self.backoffs:
            lines += ["", "changed to meet the accuracy budget:"] + [f"  {b}" for b in self.backoffs]
        return "\n".join(lines)


def _real(value: Value, array: np.ndarray) -> np.ndarray:
    quant = value.type.quant
    return dequantize_array(array, quant) if quant is not None else array


def _weights_of(graph: Graph) -> tuple[int, float]:
    """Bytes of all constants, and the share of zeros among layer weights (rank >= 2)."""
    total = sum(v.data.nbytes for v in graph.constants.values())
    weights = [v.data for v in graph.constants.values() if v.data.ndim >= 2]
    count = sum(w.size for w in weights)
    zeros = sum(int(np.count_nonzero(w == 0)) for w in weights)
    return total, zeros / count if count else 0.0


def _cost(graph: Graph, batch: int) -> tuple[float, float]:
    rows = node_costs(graph, {name: batch for name in symbol_names(graph)})
    total = sum(r.flops for r in rows)
    integer = sum(r.flops for r in rows if r.op.startswith(("q", "dynamic_q")))
    return total / 1e6, integer / total if total else 0.0


def build_ledger(graph: Graph, pipeline: str, evaluation: Iterable, *, metric: Metric | None = None,
                 max_batches: int = 4, calibration=None) -> tuple[Graph, Ledger]:
    """Run ``pipeline`` over a copy of ``graph`` pass by pass; return it with its ledger.

    ``evaluation`` is calibration-style data (see calibration_batches); ``calibration`` is
    handed to passes that need it (defaults to the evaluation data). ``metric`` maps the
    concatenated outputs on the evaluation batches to a number (e.g. accuracy).
    """
    work = graph.copy()
    work.origins = {}  # trace values back to this float graph only
    batches = []
    for feed in calibration_batches(evaluation, work):
        batches.append(feed)
        if len(batches) == max_batches:
            break
    reference = [interpret(work, feed, keep_intermediates=True)["values"] for feed in batches]
    parsed = parse_pipeline(pipeline)
    ledger = Ledger(str(parsed))
    batch = int(next(iter(batches[0].values())).shape[0]) if batches else 1
    data = {"calibration": calibration if calibration is not None else evaluation}
    ledger.steps.append(_step("float", work, reference, batches, metric, batch, {}))
    for invocation in parsed.passes:
        manager = PassManager(str(invocation), data=data)
        manager.run(work)
        statistics = manager.report.records[0].stats
        step = _step(str(invocation), work, reference, batches, metric, batch, statistics)
        ledger.steps.append(step)
        ledger.rows.extend(_changed_rows(str(invocation), invocation.name, work, reference, batches))
    return work, ledger


def _step(name, graph, reference, batches, metric, batch, statistics) -> Step:
    drifts = {output: Drift() for output in graph.output_names}
    outputs = []
    for feed, ref in zip(batches, reference):
        result = interpret(graph, feed)
        outputs.append(result)
        for output_name, value in zip(graph.output_names, graph.outputs):
            original = reference_output(graph, output_name, ref)
            drifts[output_name].add(_real(value, result[output_name]), original)
    score = None
    if metric is not None:
        score = float(metric({k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}))
    weight_bytes, sparsity = _weights_of(graph)
    mflops, int8_share = _cost(graph, batch)
    return Step(name, {k: d.summary() for k, d in drifts.items()}, score, weight_bytes, sparsity,
                mflops, int8_share, len(graph.nodes), dict(statistics))


def reference_output(graph: Graph, output_name: str, reference_values: dict) -> np.ndarray:
    """The float reference of a graph output (outputs keep their names through every pass)."""
    value = graph.outputs[graph.output_names.index(output_name)]
    return reference_values[graph.origin(value)]


def _changed_rows(step: str, pass_name: str, graph: Graph, reference, batches) -> list[NodeRow]:
    """One row per node this pass created or changed whose value has a float reference."""
    touched = [n for n in graph.nodes if pass_name in n.loc.passes]
    tracked = {n: graph.origin(n.results[0]) for n in touched if len(n.results) == 1}
    tracked = {n: origin for n, origin in tracked.items() if origin in reference[0]}
    if not tracked:
        return []
    drifts = {n: Drift() for n in tracked}
    for feed, ref in zip(batches, reference):
        values = interpret(graph, feed, keep_intermediates=True)["values"]
        for node, origin in tracked.items():
            drifts[node].add(_real(node.results[0], values[node.results[0]]), ref[origin])
    originals = set(reference[0])
    return [NodeRow(step, node.op, node.loc.describe(), **drifts[node].summary(),
                    layer=_layer_of(node, originals)) for node in tracked]


def _layer_of(node, originals: set) -> str:
    """The float graph's name of the weight a layer applies (through renames like ``.q``)."""
    weight = node.operands[1] if len(node.operands) > 1 else None
    if weight is not None and not weight.is_constant and weight.producer is not None:
        # a weight decoded at run time (codebook lookup, dequantize): name it by its data
        stored = [o for o in weight.producer.operands if o is not None and o.is_constant]
        weight = stored[-1] if stored else None
    if weight is None or not weight.is_constant:
        return ""
    names = sorted((v.name for v in originals if v.is_constant), key=len, reverse=True)
    return next((n for n in names if weight.name == n or weight.name.startswith(n + ".")),
                weight.name)
