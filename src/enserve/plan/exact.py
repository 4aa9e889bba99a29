"""Exact planner: the mixed-integer program of `enserve.plan.mip`, started from the
worst-fit packing and polished with the same local search the greedy uses (never worsening
the objective) so that ties are broken the same way."""

from __future__ import annotations

from enserve.errors import PlanError
from enserve.plan.mip import TIME_LIMIT_S, ExactResult, solve_exact
from enserve.plan.packing import worst_fit_decreasing
from enserve.plan.problem import IntArray, Problem
from enserve.plan.search import climb

__all__ = ["ExactResult", "exact", "solve_exact"]


def exact(problem: Problem, time_limit: float = TIME_LIMIT_S) -> IntArray:
    start = worst_fit_decreasing(problem)  # a PlanError naming members and bytes if hopeless
    result = solve_exact(problem, time_limit, start=start)
    if result.counts is None:
        raise PlanError(f"no plan satisfies the constraints (solver status: {result.status})")
    counts = climb(problem, result.counts)
    return climb(problem, counts, clean=True)
