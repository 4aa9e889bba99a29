"""The share search for hard shares (no time-sharing): refills are valid and optimal on small
hand-made cases, and greedy with it matches the exact optimum where hill climbing alone did not."""

from __future__ import annotations

import numpy as np
import pytest

from enserve.plan import Constraints, plan
from enserve.plan.cost import member_capacities, throughput
from enserve.plan.exact import solve_exact
from enserve.plan.greedy import greedy
from enserve.plan.problem import Problem, build_problem
from enserve.plan.scenarios import random_profile
from enserve.plan.share_search import best_refill, improve, refill
from tests.helpers.profiles import cpu, entry, gpu, profile

HARD = Constraints(time_sharing=False)
SHARES = (10, 20, 30, 40, 50, 60, 70, 80, 90, 100)


def knee(work_ms: float, saturate: float) -> dict[int, float]:
    """Latency (s) per share: flat above the share the member can use, slower below it."""
    return {s: work_ms / 1000 * max(1.0, saturate / s) for s in SHARES}


def one_gpu() -> Problem:
    members = {"a": knee(10, 30), "b": knee(20, 50), "c": knee(5, 20)}
    entries = [entry(m, "cuda:0", 1, s, lat, 0.5) for m, row in members.items()
               for s, lat in row.items()]
    return build_problem(profile([gpu(0, memory_gb=4)], entries), constraints=HARD)


def shares_per_device(problem: Problem, counts: np.ndarray) -> np.ndarray:
    return np.bincount(problem.opt_device, weights=counts * problem.share,
                       minlength=problem.n_devices)


def test_refill_meets_the_target_within_the_units() -> None:
    problem = one_gpu()
    counts = problem.zero_counts()
    target = 40.0
    filled = refill(problem, counts, 0, target)
    assert filled is not None
    assert member_capacities(problem, filled).min() >= target * (1 - 1e-9)
    assert shares_per_device(problem, filled)[0] <= 100 + 1e-9


def test_refill_says_none_when_the_device_cannot_cover_the_target() -> None:
    problem = one_gpu()
    assert refill(problem, problem.zero_counts(), 0, 1e6) is None


def test_best_refill_reaches_the_exact_optimum_on_one_device() -> None:
    problem = one_gpu()
    start = problem.zero_counts()
    for i in range(problem.n_members):  # one whole-device-sized instance each: a poor start
        k = next(k for k in problem.options_of(i) if problem.share[k] == 10)
        start[k] = 1
    found = best_refill(problem, start, 0)
    exact = solve_exact(problem, time_limit=30)
    assert exact.optimal and exact.counts is not None
    assert found is not None
    assert throughput(problem, found) == pytest.approx(throughput(problem, exact.counts),
                                                       rel=2e-3)


def test_greedy_with_hard_shares_is_optimal_and_valid_on_one_gpu() -> None:
    problem = one_gpu()
    counts = greedy(problem)
    exact = solve_exact(problem, time_limit=30)
    assert exact.counts is not None
    assert throughput(problem, counts) == pytest.approx(throughput(problem, exact.counts),
                                                        rel=1e-6)
    assert shares_per_device(problem, counts)[0] <= 100 + 1e-9


def test_improve_swaps_members_between_devices() -> None:
    """Scenario 73: the optimum moves one member from the GPU to the CPU and another back;
    plain hill climbing stopped 9.9% short of it."""
    problem = build_problem(random_profile(73), constraints=HARD)
    counts = greedy(problem)
    assert throughput(problem, counts) == pytest.approx(179.85699650864066, rel=1e-3)
    assert (shares_per_device(problem, counts) <= problem.units + 1e-9).all()


def test_improve_leaves_time_shared_problems_alone() -> None:
    problem = build_problem(random_profile(73))
    counts = greedy(problem)
    assert improve(problem, counts) is counts


def test_plans_with_hard_shares_never_exceed_a_device() -> None:
    entries = [entry(m, d, 1, s, 0.01 * (1 + i) * 100 / s, 1.0)
               for i, m in enumerate("abcd") for d in ("cuda:0", "cuda:1") for s in (25, 50, 100)]
    entries += [entry(m, "cpu", 1, c, 0.05 * (1 + i) / c, 1.0) for i, m in enumerate("abcd")
                for c in (1, 2)]
    result = plan(profile([gpu(0, 4), gpu(1, 4), cpu(2, 4)], entries), "greedy",
                  constraints=HARD)
    used: dict[str, float] = {}
    for inst in result.instances:
        used[inst.device] = used.get(inst.device, 0.0) + inst.share
    units = {d.id: d.compute_units for d in result.devices}
    assert all(used[d] <= units[d] + 1e-9 for d in used)
    assert {i.member for i in result.instances} == set("abcd")
