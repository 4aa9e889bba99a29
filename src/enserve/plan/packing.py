"""Getting every member onto some device: worst-fit decreasing, and why it may be impossible."""

from __future__ import annotations

import numpy as np

from enserve.errors import PlanError
from enserve.plan.mip import feasible_counts
from enserve.plan.problem import EPS, IntArray, Problem, format_bytes


def worst_fit_decreasing(problem: Problem) -> IntArray:
    """One instance per member; members by smallest footprint, largest first, each on the
    device with the most free memory (Pochelu's first step). Uses the member's smallest
    option there (fewest bytes, then smallest share, then most capacity).

    If this heuristic leaves a member out, an exact packing (integer program) is tried
    before declaring the ensemble infeasible with a PlanError naming members and bytes.
    """
    counts = problem.zero_counts()
    free = problem.usable_mem.copy()
    share_left = problem.units.copy()
    slots = np.full(problem.n_devices, problem.constraints.max_instances_per_device)
    footprint = [problem.mem[problem.options_of(i)].min() for i in range(problem.n_members)]
    order = sorted(range(problem.n_members), key=lambda i: (-footprint[i], i))
    unplaced: list[int] = []
    for member in order:
        opts = problem.options_of(member)
        dev = problem.opt_device[opts]
        ok = (problem.mem[opts] <= free[dev] + 0.5) & (slots[dev] > 0)
        if not problem.constraints.time_sharing:
            ok &= problem.share[opts] <= share_left[dev] + EPS
        if not ok.any():
            unplaced.append(member)
            continue
        candidates = opts[ok]
        target = max(set(problem.opt_device[candidates].tolist()), key=lambda d: (free[d], -d))
        here = candidates[problem.opt_device[candidates] == target]
        if problem.constraints.time_sharing:
            pick = min(here, key=lambda k: (problem.mem[k], problem.share[k], -problem.cap[k]))
        else:
            pick = min(here, key=lambda k: (problem.share[k], problem.mem[k], -problem.cap[k]))
        counts[pick] += 1
        free[target] -= problem.mem[pick]
        share_left[target] -= problem.share[pick]
        slots[target] -= 1
    if not unplaced:
        return counts
    packed = feasible_counts(problem)
    if packed is not None:
        return packed
    raise PlanError(does_not_fit_message(problem, unplaced, free, share_left, footprint))


def does_not_fit_message(
    problem: Problem,
    unplaced: list[int],
    free: np.ndarray,
    share_left: np.ndarray,
    footprint: list[float],
) -> str:
    parts = []
    largest_free = float(free.max())
    for member in unplaced:
        name = problem.members[member]
        need = footprint[member]
        if need > largest_free + 0.5:
            parts.append(f"member '{name}' needs {format_bytes(need)}, the largest free device "
                         f"memory left is {format_bytes(largest_free)}: "
                         f"{format_bytes(need - largest_free)} missing")
        else:
            smallest_share = problem.share[problem.options_of(member)].min()
            parts.append(f"member '{name}' needs a compute share of at least {smallest_share:g} "
                         f"but the devices have at most {share_left.max():g} units left "
                         f"(time-sharing is disabled)")
    total_need = float(sum(footprint))
    total_usable = float(problem.usable_mem.sum())
    summary = (f"the ensemble does not fit on {problem.n_devices} device(s): "
               + "; ".join(parts))
    if total_need > total_usable:
        summary += (f". The members' smallest footprints add up to {format_bytes(total_need)}, "
                    f"usable memory is {format_bytes(total_usable)}: "
                    f"{format_bytes(total_need - total_usable)} missing in total")
    return summary
