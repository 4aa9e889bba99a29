"""Greedy vs the exact optimum, and greedy vs batch-only on the big scenarios (their
planning time is a benchmark: benchmarks/planning_time.py).

The exact optima of the random scenarios are stored in data/exact_reference.json (written by
`python benchmarks/planner_quality.py --write-reference tests/plan/data/exact_reference.json`,
about a minute of HiGHS): solving 50 integer programs here would make the suite slow. Each
stored plan is re-evaluated with the current cost model first, so a stale file fails loudly,
and a few are solved again live to check the exact planner itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from enserve.formats.profile import load_profile
from enserve.plan import Instance, plan
from enserve.plan.cost import throughput
from enserve.plan.exact import solve_exact
from enserve.plan.greedy import greedy
from enserve.plan.problem import build_problem, counts_from_instances
from enserve.plan.scenarios import random_profile

REFERENCE = Path(__file__).parent / "data" / "exact_reference.json"
SCENARIOS = Path(__file__).resolve().parents[2] / "benchmarks" / "scenarios"
N_SCENARIOS = 50
REGENERATE = ("regenerate with: python benchmarks/planner_quality.py --skip-heavy "
              "--write-reference tests/plan/data/exact_reference.json")


def reference() -> list[dict]:  # type: ignore[type-arg]
    data = json.loads(REFERENCE.read_text())
    return list(data["scenarios"])[:N_SCENARIOS]


def test_greedy_is_within_5_percent_of_exact_on_95_percent() -> None:
    rows = reference()
    assert len(rows) >= N_SCENARIOS
    gaps = []
    for row in rows:
        problem = build_problem(random_profile(row["seed"]))
        stored = counts_from_instances(problem, [Instance(**i) for i in row["instances"]])
        x_exact = throughput(problem, stored)
        assert x_exact == pytest.approx(row["throughput"], rel=1e-6), (
            f"seed {row['seed']}: stored exact plan evaluates differently; {REGENERATE}")
        x_greedy = throughput(problem, greedy(problem))
        assert x_greedy <= x_exact * (1 + 1e-6), f"seed {row['seed']}: greedy beats 'optimal'"
        gaps.append(1 - x_greedy / x_exact)
    gaps_arr = np.array(gaps)
    within = (gaps_arr <= 0.05).mean()
    assert within >= 0.95, f"greedy within 5% of exact on only {within:.0%}: {sorted(gaps)[-5:]}"


@pytest.mark.parametrize("index", [1, 2, 3])
def test_exact_reproduces_the_stored_optimum(index: int) -> None:
    row = reference()[index]
    problem = build_problem(random_profile(row["seed"]))
    result = solve_exact(problem, time_limit=30)
    assert result.optimal and result.counts is not None
    assert throughput(problem, result.counts) == pytest.approx(row["throughput"], rel=1e-4)


@pytest.mark.parametrize("name, at_least", [("pochelu_12x4", 2.0), ("pochelu_1x16", 10.0)])
def test_big_scenarios_beat_batch_only(name: str, at_least: float) -> None:
    """The planning time target (< 1 s each) is checked by benchmarks/planning_time.py."""
    profile = load_profile(SCENARIOS / f"{name}.json")
    result = plan(profile, "greedy")
    baseline = plan(profile, "batch-only")
    assert result.predicted is not None and baseline.predicted is not None
    assert result.predicted.throughput >= at_least * baseline.predicted.throughput
