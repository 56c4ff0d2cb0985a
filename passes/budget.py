"""One accuracy budget for a whole compression pipeline.

``compress_within_budget`` runs the pipeline with the accuracy ledger; while the user's metric
drops by more than ``max_drop``, it finds the (pass, layer) whose step cost that layer the most
output SQNR and backs that pass off for that layer (adds the layer to the pass's ``exclude``
option: no pruning, clipping, sharing or quantization there), then runs again. The ledger lists
each back-off.
"""

from __future__ import annotations

import math
from typing import Iterable

from nimbus.compiler.ir import Graph

from .ledger import Ledger, Metric, NodeRow, build_ledger
from .pipeline import PassInvocation, Pipeline, parse_pipeline
from .registry import get_pass


SQNR_CEILING = 100.0  # dB; an exact value counts as this, so losses stay finite and comparable


class BudgetError(RuntimeError):
    """The budget cannot be met by backing off the passes that can be backed off."""


def compress_within_budget(graph: Graph, pipeline: str, evaluation: Iterable, *, metric: Metric,
                           max_drop: float, calibration=None,
                           max_rounds: int = 20) -> tuple[Graph, Ledger]:
    parsed = parse_pipeline(pipeline)
    evaluation = list(evaluation) if not isinstance(evaluation, (str, bytes)) else evaluation
    excluded: dict[int, list[str]] = {}
    backoffs: list[str] = []
    for _ in range(max_rounds):
        result, ledger = build_ledger(graph, str(_with_exclusions(parsed, excluded)), evaluation,
                                      metric=metric, calibration=calibration)
        ledger.backoffs = list(backoffs)
        drop = ledger.steps[0].metric - ledger.steps[-1].metric
        if drop <= max_drop:
            return result, ledger
        step, layer, harm = _most_harmful(parsed, ledger, excluded)
        if step is None:
            raise BudgetError(f"metric drops by {drop:.4g} > {max_drop:g} and no pass can back "
                              f"off further")
        excluded.setdefault(step, []).append(layer)
        backoffs.append(f"{parsed.passes[step].name}: {layer} left out (cost {harm:.1f} dB; "
                        f"metric drop was {drop:.4g})")
    raise BudgetError(f"the budget was not met in {max_rounds} rounds")


def _with_exclusions(parsed: Pipeline, excluded: dict[int, list[str]]) -> Pipeline:
    passes = []
    for index, invocation in enumerate(parsed.passes):
        names = excluded.get(index)
        if names:
            given = invocation.options.get("exclude", "")
            patterns = [p for p in given.split(",") if p] + [f"{name}*" for name in names]
            invocation = PassInvocation(invocation.name,
                                        dict(invocation.options, exclude=",".join(patterns)))
        passes.append(invocation)
    return Pipeline(tuple(passes))


def _most_harmful(parsed: Pipeline, ledger: Ledger, excluded: dict[int, list[str]]):
    """(pass index, layer, dB lost) of the worst step a pass with an ``exclude`` option took."""
    by_step: dict[str, list[NodeRow]] = {}
    for row in ledger.rows:
        by_step.setdefault(row.step, []).append(row)
    last_sqnr: dict[str, float] = {}
    worst = (None, None, -math.inf)
    for index, (invocation, step) in enumerate(zip(parsed.passes, ledger.steps[1:])):
        can_back_off = "exclude" in get_pass(invocation.name).options
        for row in by_step.get(step.name, []):
            if not row.layer:
                continue
            before = last_sqnr.get(row.layer, SQNR_CEILING)
            harm = min(before, SQNR_CEILING) - min(row.sqnr_db, SQNR_CEILING)
            if can_back_off and row.layer not in excluded.get(index, []) and harm > worst[2]:
                worst = (index, row.layer, harm)
            last_sqnr[row.layer] = row.sqnr_db
    return worst
