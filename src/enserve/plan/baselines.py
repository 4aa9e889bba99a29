"""Baselines: `batch-only` (Pochelu's baseline) and `sequential`.

batch-only: one instance per member, members placed round-robin over the devices (member j
on device j mod D, or the next device with room), each at its default variant and the
largest profiled share (it runs unrestricted; with time-sharing disabled, members on one
device split it equally), with its batch size tuned: coordinate ascent
over the members' batch sizes on the planner's objective.

sequential: every member on one device, one instance each, default variant, largest share,
batch sizes tuned the same way; the device giving the best result is kept. Its members
time-share the device, so its completion time is the sum of their latencies.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from enserve.errors import PlanError
from enserve.plan.cost import require_feasible
from enserve.plan.packing import worst_fit_decreasing
from enserve.plan.problem import IntArray, Problem
from enserve.plan.search import better, current_score

_PASSES = 4


def _default_variant(problem: Problem, member: int) -> str | None:
    """The profile's default variant for the member if it has options, else unnamed
    (null) entries, else the alphabetically first variant."""
    variants = {problem.options[k].variant for k in problem.options_of(member)}
    declared = problem.default_variants[member] if problem.default_variants else None
    if declared is not None and declared in variants:
        return declared
    if None in variants:
        return None
    return min(v for v in variants if v is not None)


def _choices(problem: Problem, member: int, device: int, share_cap: float = np.inf) -> list[int]:
    """Options of `member` on `device` a baseline may use: default variant, largest share
    (not above `share_cap`), one per batch size."""
    variant = _default_variant(problem, member)
    opts = [k for k in problem.options_of(member)
            if problem.opt_device[k] == device and problem.options[k].variant == variant
            and problem.share[k] <= share_cap + 1e-9]
    if not opts:
        return []
    top = max(problem.share[k] for k in opts)
    return sorted((k for k in opts if problem.share[k] == top), key=lambda k: problem.options[k].batch_size)


def _fits(problem: Problem, counts: IntArray) -> bool:
    memory = np.bincount(problem.opt_device, weights=counts * problem.mem, minlength=problem.n_devices)
    shares = np.bincount(problem.opt_device, weights=counts * problem.share,
                         minlength=problem.n_devices)
    fits = bool((memory <= problem.usable_mem + 0.5).all())
    return fits and (problem.constraints.time_sharing
                     or bool((shares <= problem.units * (1 + 1e-9)).all()))


def _share_caps(problem: Problem, placement: Sequence[int]) -> list[float]:
    """Without time-sharing, members placed on one device split it equally."""
    if problem.constraints.time_sharing:
        return [np.inf] * len(placement)
    crowd = np.bincount(np.asarray(placement), minlength=problem.n_devices)
    return [float(problem.units[d] / crowd[d]) for d in placement]


def _tune_batches(problem: Problem, placement: Sequence[int]) -> IntArray | None:
    """Coordinate ascent over batch sizes with member i on device placement[i]."""
    caps = _share_caps(problem, placement)
    choices = [_choices(problem, i, d, cap)
               for (i, d), cap in zip(enumerate(placement), caps, strict=True)]
    if any(not c for c in choices):
        return None
    pick = [c[0] for c in choices]  # smallest batch first: least memory

    def counts_of(selection: Sequence[int]) -> IntArray:
        counts = problem.zero_counts()
        for k in selection:
            counts[k] += 1
        return counts

    current = counts_of(pick)
    if not _fits(problem, current):
        return None
    score = current_score(problem, current)
    for _ in range(_PASSES):
        changed = False
        for i, options in enumerate(choices):
            for k in options:
                if k == pick[i]:
                    continue
                trial = list(pick)
                trial[i] = k
                counts = counts_of(trial)
                if not _fits(problem, counts):
                    continue
                trial_score = current_score(problem, counts)
                if better(trial_score, score):
                    pick, score, current, changed = trial, trial_score, counts, True
        if not changed:
            break
    return current


def _round_robin(problem: Problem) -> list[int] | None:
    placement: list[int] = []
    free = problem.usable_mem.copy()
    for i in range(problem.n_members):
        for step in range(problem.n_devices):
            d = (i + step) % problem.n_devices
            choices = _choices(problem, i, d)
            if choices and problem.mem[choices[0]] <= free[d] + 0.5:
                placement.append(d)
                free[d] -= problem.mem[choices[0]]
                break
        else:
            return None
    return placement


def batch_only(problem: Problem) -> IntArray:
    worst_fit_decreasing(problem)  # raises a PlanError naming members and bytes if hopeless
    placement = _round_robin(problem)
    counts = _tune_batches(problem, placement) if placement is not None else None
    if counts is None:
        raise PlanError("batch-only: round-robin placement of one default instance per member "
                        "does not fit in device memory")
    require_feasible(problem, counts)
    return counts


def sequential(problem: Problem) -> IntArray:
    worst_fit_decreasing(problem)
    best: IntArray | None = None
    for d in range(problem.n_devices):
        counts = _tune_batches(problem, [d] * problem.n_members)
        if counts is None:
            continue
        if best is None or better(current_score(problem, counts), current_score(problem, best)):
            best = counts
    if best is None:
        raise PlanError("sequential: no single device holds one default instance of every member")
    require_feasible(problem, best)
    return best
