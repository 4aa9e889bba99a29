"""`plan(profile, ...) -> Plan`: build the problem, run one solver, check the limits."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from enserve.devices import Device
from enserve.errors import PlanError
from enserve.formats.plan import Plan
from enserve.formats.profile import Profile
from enserve.plan import baselines, exact, greedy, shares
from enserve.plan.cost import evaluate_counts
from enserve.plan.problem import Constraints, IntArray, Problem, build_problem
from enserve.plan.restrict import lists_groups_with_members, restrict_profile

Solver = Callable[[Problem], IntArray]
SOLVERS: dict[str, Solver] = {
    "greedy": greedy.greedy,
    "shares": shares.shares,
    "exact": exact.exact,
    "batch-only": baselines.batch_only,
    "sequential": baselines.sequential,
}
ALGORITHMS = tuple(SOLVERS)
_UNPRUNED = {"batch-only", "sequential"}  # baselines choose among the profile's own entries

def plan(
    profile: Profile,
    algorithm: str = "greedy",
    objective: str = "throughput",
    constraints: Constraints | None = None,
    devices: Sequence[Device] | None = None,
) -> Plan:
    """Plan `profile` on `devices` (default: the profile's) with one of `ALGORITHMS`.

    Raises PlanError if no plan fits (naming members and missing bytes) or meets the
    constraints, ProfileError if the profile lacks what the plan needs.
    """
    solver = SOLVERS.get(algorithm)
    if solver is None:
        raise PlanError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
    start = time.perf_counter()
    profile = _unfused_view(profile)
    problem = build_problem(profile, devices, objective, constraints,
                            prune=algorithm not in _UNPRUNED)
    counts = solver(problem)
    result = to_plan(problem, counts, algorithm, time.perf_counter() - start)
    hardware = (profile.model_extra or {}).get("hardware")  # the fingerprint it was made on
    return replace(result, hardware=hardware) if isinstance(hardware, dict) else result


def _unfused_view(profile: Profile) -> Profile:
    """A profile listing fused groups next to the members they cover (as `enserve profile`
    writes it) is planned without the groups; `enserve.plan.fusion.choose_fusion` is
    the entry point that weighs them."""
    return restrict_profile(profile, ()) if lists_groups_with_members(profile) else profile


def to_plan(problem: Problem, counts: IntArray, algorithm: str, planning_time_s: float) -> Plan:
    """Instances (devices in order, then members in profile order) and their predictions."""
    _check_limits(problem, counts)
    report = evaluate_counts(problem, counts)
    order = sorted(np.flatnonzero(counts), key=lambda k: (problem.opt_device[k],
                                                          problem.opt_member[k], k))
    instances = tuple(problem.options[k].instance() for k in order for _ in range(counts[k]))
    return Plan(algorithm, problem.objective, problem.devices, instances, report.predicted(),
                planning_time_s, members=problem.members)


def _check_limits(problem: Problem, counts: IntArray) -> None:
    """Safety net: a plan that breaks a hard limit is a bug in an algorithm."""
    memory = np.bincount(problem.opt_device, weights=counts * problem.mem,
                         minlength=problem.n_devices)
    shares = np.bincount(problem.opt_device, weights=counts * problem.share,
                         minlength=problem.n_devices)
    per_member = np.bincount(problem.opt_member, weights=counts, minlength=problem.n_members)
    report = evaluate_counts(problem, counts)
    used = np.array([report.device_compute_used[d.id] for d in problem.devices])
    problems = []
    if (counts < 0).any() or (counts > problem.max_count).any():
        problems.append("instance counts out of range")
    if (memory > problem.usable_mem + 0.5).any():
        problems.append("device memory exceeded")
    if (used > problem.units * (1 + 1e-9)).any():
        problems.append("device compute exceeded")
    if not problem.constraints.time_sharing and (shares > problem.units * (1 + 1e-9)).any():
        problems.append("shares exceed a device with time-sharing disabled")
    if (per_member < 1).any():
        problems.append("a member has no instance")
    if problems:
        raise RuntimeError("planner bug: " + "; ".join(problems))
