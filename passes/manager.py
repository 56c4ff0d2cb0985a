"""The pass manager: runs a pipeline, verifies after every pass, times passes, prints IR on
request and collects statistics."""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, TextIO

from nimbus.compiler.ir import Graph, Node
from nimbus.compiler.verifier import VerificationError, verify

from .pipeline import Pipeline, parse_pipeline
from .registry import get_pass


class PassError(RuntimeError):
    """A pass failed or left an invalid graph; names the pass, node and the pipeline so far."""

    def __init__(self, message: str, pass_name: str, completed: list[str], node: Node | None = None):
        where = f" on {node.op} ({node.loc.describe()})" if node is not None else ""
        before = f" after [{', '.join(completed)}]" if completed else ""
        super().__init__(f"pass '{pass_name}' failed{where}{before}: {message}")
        self.pass_name = pass_name
        self.node = node


class PassFailure(Exception):
    """Raised inside a pass to report a problem with one node; the manager adds context."""

    def __init__(self, message: str, node: Node | None = None):
        super().__init__(message)
        self.node = node


@dataclass
class PassContext:
    """What a running pass may read (data given to run_passes) and write (statistics)."""

    pass_name: str
    data: dict[str, Any] = field(default_factory=dict)
    stats: Counter = field(default_factory=Counter)

    def count(self, key: str, amount: float = 1) -> None:
        self.stats[key] += amount

    def touched(self, node: Node) -> Node:
        """Record in the node's location that this pass created or changed it."""
        node.loc = node.loc.touched_by(self.pass_name)
        return node


@dataclass
class PassRecord:
    name: str
    options: dict[str, Any]
    changed: bool
    seconds: float
    nodes_before: int
    nodes_after: int
    stats: dict[str, float]


@dataclass
class PassReport:
    records: list[PassRecord] = field(default_factory=list)

    def table(self) -> str:
        header = f"{'pass':<32} {'changed':>7} {'ms':>9} {'nodes':>13}  statistics"
        lines = [header, "-" * len(header)]
        for r in self.records:
            stats = ", ".join(f"{k}={_number(v)}" for k, v in sorted(r.stats.items()) if v)
            lines.append(f"{r.name:<32} {('yes' if r.changed else 'no'):>7} {r.seconds * 1e3:>9.2f} "
                         f"{r.nodes_before:>5} -> {r.nodes_after:<5}  {stats}")
        return "\n".join(lines)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


class PassManager:
    """Runs a pipeline over a graph, in place.

    ``verify`` checks the graph after every pass; ``print_ir_before`` / ``print_ir_after``
    name passes (or "all") whose input / output IR is written to ``stream``.
    """

    def __init__(self, pipeline: str | Pipeline, *, verify: bool = True,
                 print_ir_before: Iterable[str] = (), print_ir_after: Iterable[str] = (),
                 stream: TextIO | None = None, data: dict[str, Any] | None = None):
        self.pipeline = parse_pipeline(pipeline)
        self.verify = verify
        self.print_ir_before = set(print_ir_before)
        self.print_ir_after = set(print_ir_after)
        self.stream = stream or sys.stderr
        self.data = dict(data or {})
        self.report = PassReport()

    def run(self, graph: Graph) -> Graph:
        completed: list[str] = []
        for invocation in self.pipeline.passes:
            info = get_pass(invocation.name)
            if self._wants(self.print_ir_before, info.name):
                self._dump(graph, f"before {invocation}")
            ctx = PassContext(info.name, self.data)
            nodes_before = len(graph.nodes)
            start = time.perf_counter()
            try:
                changed = bool(info.run(graph, ctx, **info.resolve_options(invocation.options)))
            except PassFailure as failure:
                raise PassError(str(failure), info.name, completed, failure.node) from failure
            except (ValueError, TypeError, KeyError, IndexError) as err:
                raise PassError(f"{type(err).__name__}: {err}", info.name, completed) from err
            seconds = time.perf_counter() - start
            if self.verify:
                try:
                    verify(graph)
                except VerificationError as err:
                    raise PassError(f"left an invalid graph: {err}", info.name, completed,
                                    err.node) from err
            self.report.records.append(PassRecord(info.name, dict(invocation.options), changed,
                                                  seconds, nodes_before, len(graph.nodes),
                                                  dict(ctx.stats)))
            completed.append(info.name)
            if self._wants(self.print_ir_after, info.name):
                self._dump(graph, f"after {invocation}")
        return graph

    @staticmethod
    def _wants(names: set[str], pass_name: str) -> bool:
        return pass_name in names or "all" in names

    def _dump(self, graph: Graph, title: str) -> None:
        from nimbus.compiler.text import print_ir

        self.stream.write(f"// ----- IR {title} -----\n{print_ir(graph)}\n")


def run_passes(graph: Graph, pipeline: str | Pipeline, *, verify: bool = True,
               print_ir_after: Iterable[str] = (), calibration=None, **data) -> Graph:
    """Run ``pipeline`` over a copy of ``graph`` and return the result.

    Data some passes need (``calibration`` batches, metrics) is passed by keyword.
    """
    if calibration is not None:
        data["calibration"] = calibration
    manager = PassManager(pipeline, verify=verify, print_ir_after=print_ir_after, data=data)
    return manager.run(graph.copy())
