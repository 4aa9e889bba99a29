"""Share search (ESEN): co-located members get compute partitions chosen by search.

One instance per member, all at the same batch size b (one ensemble job = one batch).
For a target completion time T, each member needs, on each device, the smallest profiled
share whose latency is at most T (no interpolation between profiled shares: only measured
points are used). Members are then packed onto devices so that on every device the shares
sum to at most its compute units and the memory fits (largest demand first, each onto the
device with the most units left). A binary search over the profiled latencies finds the
smallest T that packs. With one device the packing test is exact, so T is the minimal
completion time over partitions; with several devices the packing is a heuristic.

This is done for every batch size all members were profiled at; the objective picks among
them (latency: smallest completion time; throughput: largest b / T within the bounds).
Shares never sum above a device's units, so instances never time-share.
"""

from __future__ import annotations

import numpy as np

from enserve.errors import PlanError
from enserve.plan.cost import require_feasible
from enserve.plan.packing import worst_fit_decreasing
from enserve.plan.problem import EPS, IntArray, Problem
from enserve.plan.search import better, current_score


def _pick(problem: Problem, member: int, device: int, batch: int, target: float) -> int | None:
    """Smallest-share option (then fewest bytes) of member on device at batch within T."""
    best: int | None = None
    for k in problem.options_of(member):
        o = problem.options[k]
        if problem.opt_device[k] != device or o.batch_size != batch or o.latency_s > target + EPS:
            continue
        if best is None or (o.share, o.memory_bytes, o.latency_s) < (
                problem.share[best], problem.mem[best], problem.lat[best]):
            best = int(k)
    return best


def _pack(problem: Problem, batch: int, target: float) -> IntArray | None:
    n_dev = problem.n_devices
    picks = [[_pick(problem, i, d, batch, target) for d in range(n_dev)]
             for i in range(problem.n_members)]
    demand = []
    for i, row in enumerate(picks):
        shares = [problem.share[k] / problem.units[d] for d, k in enumerate(row) if k is not None]
        if not shares:
            return None
        demand.append((min(shares), i))
    share_left = problem.units.copy()
    free = problem.usable_mem.copy()
    slots = np.full(n_dev, problem.constraints.max_instances_per_device)
    counts = problem.zero_counts()
    for _, i in sorted(demand, reverse=True):
        fitting = [d for d, k in enumerate(picks[i]) if k is not None
                   and problem.share[k] <= share_left[d] + EPS
                   and problem.mem[k] <= free[d] + 0.5 and slots[d] > 0]
        if not fitting:
            return None
        d = max(fitting, key=lambda j: (share_left[j] / problem.units[j], free[j], -j))
        k = picks[i][d]
        assert k is not None
        counts[k] += 1
        share_left[d] -= problem.share[k]
        free[d] -= problem.mem[k]
        slots[d] -= 1
    return counts


def _best_for_batch(problem: Problem, batch: int) -> IntArray | None:
    at_batch = [k for k in range(len(problem.options)) if problem.options[k].batch_size == batch]
    targets = sorted({float(problem.lat[k]) for k in at_batch})
    lo, hi = 0, len(targets) - 1
    if not targets or _pack(problem, batch, targets[hi]) is None:
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if _pack(problem, batch, targets[mid]) is not None:
            hi = mid
        else:
            lo = mid + 1
    return _pack(problem, batch, targets[lo])


def shares(problem: Problem) -> IntArray:
    worst_fit_decreasing(problem)  # raises a PlanError naming members and bytes if hopeless
    batch_sets = [{problem.options[k].batch_size for k in problem.options_of(i)}
                  for i in range(problem.n_members)]
    common = sorted(set.intersection(*batch_sets))
    best: IntArray | None = None
    for batch in common:
        counts = _best_for_batch(problem, batch)
        if counts is None:
            continue
        if best is None or better(current_score(problem, counts), current_score(problem, best)):
            best = counts
    if best is None:
        raise PlanError("shares: no common batch size lets every member get a compute partition "
                        "(shares summing to at most each device's units) that fits in memory; "
                        "try --algorithm greedy, which can time-share devices")
    require_feasible(problem, best)
    return best
