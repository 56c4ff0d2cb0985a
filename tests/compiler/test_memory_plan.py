"""Liveness-based buffer sharing on every test model: valid, and smaller than a buffer per value."""

from __future__ import annotations

import pytest

from models.cases import CASES, converted
from nimbus.compiler.memory_plan import check_plan, plan_memory
from nimbus.passes import DEFAULT_OPTIMIZATION, run_passes


@pytest.mark.parametrize("name", CASES)
def test_plan_shares_buffers_safely(name):
    _, graph = converted(name)
    for candidate in (graph, run_passes(graph, DEFAULT_OPTIMIZATION)):
        plan = plan_memory(candidate)
        check_plan(candidate, plan)
        for batch in (1, 8):
            peak = plan.peak_bytes({"N": batch})
            unshared = plan.unshared_bytes({"N": batch})
            assert 0 < peak <= unshared
        if len(candidate.nodes) > 4:
            assert plan.peak_bytes({"N": 8}) < plan.unshared_bytes({"N": 8}), name
        print(f"\n{name}: {len(plan.slot_bytes)} buffers for {len(plan.slot_of)} values, "
              f"{plan.peak_bytes({'N': 8}) / 1024:.0f} KiB vs {plan.unshared_bytes({'N': 8}) / 1024:.0f}"
              f" KiB at batch 8")
