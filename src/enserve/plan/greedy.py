"""Greedy planner (Pochelu et al.): worst-fit decreasing, then hill climbing.

1. Worst-fit decreasing puts one instance of every member into device memory
   (`enserve.plan.packing`), the paper's first step.
2. Steepest-ascent hill climbing (`enserve.plan.search`): add an instance, remove one,
   change its batch size / share / variant, move it to another device, replace it by an
   instance of a weak member; when no single move helps, a pair (make room, then help the
   bottleneck member). The best improving move is applied until none improves the
   predicted objective.

Additions of ours, to avoid poor local optima (the paper's greedy has no such guard):
- extra starts built for a target throughput (`_build_for_target`, binary search on the
  target; members in a "hardest first" order and in a few seeded random orders);
- a few kicks: random valid moves applied to the best plan, then a new climb.
The best plan over all starts is kept, then a clean-up pass drops instances that do not
help. Everything is seeded: the same problem always gives the same plan. Problems larger
than 6 members or 3 devices get fewer starts and kicks so that they plan in well under a
second (12 models on 4 GPUs: ~0.3 s here).
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import replace

import numpy as np

from enserve.errors import PlanError
from enserve.plan import share_search
from enserve.plan.cost import require_feasible, throughput
from enserve.plan.packing import worst_fit_decreasing
from enserve.plan.problem import EPS, IntArray, Problem
from enserve.plan.search import (
    aggregates,
    better,
    climb,
    current_score,
    evaluate_moves,
    neighbourhood,
)

KICKS = 3  # random perturbations of the best plan, each followed by a climb
TARGET_ORDERS = 8  # target-driven starts (member orders) on small problems
THOROUGH_MEMBERS, THOROUGH_DEVICES = 6, 3  # up to this size: all starts and kicks
KICK_MOVES = 3
TARGET_STEPS = 16


def _kick(problem: Problem, counts: IntArray, rng: np.random.Generator) -> IntArray:
    """Apply a few random valid moves (ignoring the score) to leave a local optimum."""
    for _ in range(KICK_MOVES):
        agg = aggregates(problem, counts)
        rem, add = neighbourhood(problem, agg, clean=False)
        scores = evaluate_moves(problem, agg, rem, add)
        valid = np.flatnonzero(scores.valid[1:]) + 1
        if len(valid) == 0:
            break
        j = int(rng.choice(valid))
        counts = counts.copy()
        if rem[j] >= 0:
            counts[rem[j]] -= 1
        if add[j] >= 0:
            counts[add[j]] += 1
    return counts


def greedy(problem: Problem, seed: int = 0, share_search_on: bool = True) -> IntArray:
    """Pochelu's worst-fit + hill climbing, with extra starts and perturbations (see the
    module docstring). Deterministic for a given `seed`. `share_search_on=False` skips the
    share search of hard shares (for the ablation in benchmarks/planner_quality.py)."""
    rng = np.random.default_rng(seed)
    large = problem.n_members > THOROUGH_MEMBERS or problem.n_devices > THOROUGH_DEVICES
    start = worst_fit_decreasing(problem)
    best = climb(problem, start)
    best_score = current_score(problem, best, clean=False)

    def consider(candidate: IntArray) -> None:
        nonlocal best, best_score
        score = current_score(problem, candidate, clean=False)
        if better(score, best_score):
            best, best_score = candidate, score

    orders = [_hardest_first(problem)]
    orders += [list(rng.permutation(problem.n_members))
               for _ in range((2 if large else TARGET_ORDERS) - 1)]
    floor = throughput(problem, best)
    climbed: set[bytes] = set()  # starts already climbed (orders repeat with few members)
    for order in dict.fromkeys(tuple(o) for o in orders):
        built = _target_start(problem, floor * 0.5, list(order))
        if built is not None and built.tobytes() not in climbed:
            climbed.add(built.tobytes())
            consider(climb(problem, built))
    if problem.objective == "latency" and problem.constraints.min_throughput is not None:
        # also start from the fastest plan ignoring the floor, then add capacity: a climb
        # that meets the floor first tends to get there with slow, large batches
        free = replace(problem, constraints=replace(problem.constraints, min_throughput=None))
        with suppress(PlanError):  # if the bound alone is impossible, the main search says why
            consider(climb(problem, greedy(free, seed)))
    for _ in range(1 if large else KICKS):
        consider(climb(problem, _kick(problem, best, rng)))
    if share_search_on:  # hard shares: re-allocate whole devices (enserve.plan.share_search)
        best = share_search.improve(problem, best)
    best = climb(problem, best, clean=True)
    require_feasible(problem, best)
    return best


def _build_for_target(problem: Problem, target: float, order: list[int]) -> IntArray | None:
    """Give every member at least `target` samples/s, cheapest resources first.

    Members in `order`; each gets instances one at a time, the option producing the most
    per unit of resource it uses, resource being memory and compute relative to what is
    still free on that device. Compute is counted as busy time (work conserved), or as the
    whole share when time-sharing is off. None if some member cannot reach the target.
    """
    counts = problem.zero_counts()
    free = problem.usable_mem.copy()
    units = problem.units.copy()
    slots = np.full(problem.n_devices, float(problem.constraints.max_instances_per_device))
    sharing = problem.constraints.time_sharing
    efficiency = problem.cap / problem.share
    for member in order:
        opts = problem.options_of(member)
        dev = problem.opt_device[opts]
        need = target
        while need > target * 1e-9:
            ok = (problem.mem[opts] <= free[dev] + 0.5) & (slots[dev] > 0.5)
            if sharing:
                ok &= units[dev] > 1e-9
                produce = np.minimum(np.minimum(problem.cap[opts], need),
                                     np.maximum(units[dev], 0) * efficiency[opts])
                compute = produce / efficiency[opts]
            else:
                ok &= problem.share[opts] <= units[dev] + EPS
                produce = np.minimum(problem.cap[opts], need)
                compute = problem.share[opts]
            if not ok.any():
                return None
            cost = (problem.mem[opts] / np.maximum(free[dev], 1.0)
                    + compute / np.maximum(units[dev], 1e-12))
            value = np.where(ok, produce / np.maximum(cost, 1e-12), -np.inf)
            j = int(np.argmax(value))
            k, d = opts[j], dev[j]
            counts[k] += 1
            free[d] -= problem.mem[k]
            units[d] -= compute[j]
            slots[d] -= 1
            need -= produce[j]
    return counts


def _hardest_first(problem: Problem) -> list[int]:
    """Members whose cheapest option takes the largest fraction of a device first."""
    hardness = []
    for i in range(problem.n_members):
        opts = problem.options_of(i)
        dev = problem.opt_device[opts]
        hardness.append(float(np.min(problem.mem[opts] / problem.usable_mem[dev]
                                     + problem.share[opts] / problem.cap[opts] / problem.units[dev])))
    return sorted(range(problem.n_members), key=lambda i: -hardness[i])


def _target_start(problem: Problem, floor: float, order: list[int]) -> IntArray | None:
    """Binary search on the target throughput for `_build_for_target`; the best plan built."""
    upper = float(min(problem.cap[problem.options_of(i)].max() * problem.max_count.max()
                      * problem.n_devices for i in range(problem.n_members)))
    lo, hi = floor, upper
    best: IntArray | None = None
    for _ in range(TARGET_STEPS):
        if hi <= lo * (1 + 1e-3):
            break
        mid = (lo + hi) / 2
        built = _build_for_target(problem, mid, order)
        if built is None:
            hi = mid
        else:
            lo, best = mid, built
    return best
