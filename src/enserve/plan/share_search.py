"""Search over compute shares when they may not time-share a device (hard shares).

With time-sharing disabled (the ESEN / MPS setting: shares on a device sum to at most its
units), the throughput objective is a covering problem per device: every member must reach
the target X samples/s from its instances on all devices, and each device has a budget of
compute units and memory. The hill climbing of `enserve.plan.search` changes one or two
instances at a time and stalls where the optimum redistributes a whole device's units
(e.g. 4 x 25% -> 20/30/50%). This module re-allocates one device at a time, exactly:

* `refill(problem, counts, device, target)`: with every other device fixed, give each member
  on `device` instances whose capacity covers its deficit (target minus what its other
  instances give), using at most the device's share units and memory and the fewest bytes.
  Per member, a dynamic program over share units keeps, for each number of units, the
  Pareto front of (capacity reached, memory); members are then combined by a second dynamic
  program over units (min total memory). Exact for the device (capacity capped at the
  deficit; fronts truncated at `FRONT` points, which the tests never reach).
* `best_refill(problem, counts, device)`: binary search on the target for the largest X the
  device can be refilled for.
* `improve(problem, counts)`: refill device after device, keeping a refill whenever the
  plan's score (`enserve.plan.search.better`) improves, polishing with the local search,
  until a round changes nothing. Then the same for pairs of devices: clear both, refill
  the first for each split of the members' deficits the second can absorb (the second
  device is refilled for the rest).

Shares are discretised on the device's grid: the greatest common divisor of its options'
shares (integers, else tenths of a unit). A device with more than `MAX_CELLS` grid cells is
left to the local search.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from enserve.plan.cost import member_capacities, throughput
from enserve.plan.problem import IntArray, Problem
from enserve.plan.search import better, climb, current_score
from enserve.plan.share_tables import FRONT, Grid, grid_of, member_table

TARGET_STEPS = 12  # bisection steps on the target throughput, at most
TARGET_TOLERANCE = 1e-2  # stop bisecting once the bracket is this narrow (relative): the
# climb after a refill polishes the last percent, and bisection steps are most of the time
MAX_ROUNDS = 8


def refill(problem: Problem, counts: IntArray, device: int, target: float,
           grid: Grid | None = None) -> IntArray | None:
    """`counts` with `device` emptied and refilled so every member reaches `target`
    (see the module docstring); None if the device cannot cover the deficits."""
    grid = grid if grid is not None else grid_of(problem, device)
    if grid is None:
        return None
    base = counts.copy()
    base[grid.options] = 0
    other = member_capacities(problem, base)
    combined: list[tuple[float, tuple[int, ...]] | None] = [(0.0, ())] + [None] * grid.total
    for member in range(problem.n_members):
        table = member_table(problem, grid, member, target - other[member])
        if all(t is None for t in table):
            return None
        merged: list[tuple[float, tuple[int, ...]] | None] = [None] * (grid.total + 1)
        for u in range(grid.total + 1):
            best: tuple[float, tuple[int, ...]] | None = None
            for v in range(u + 1):
                left, right = combined[u - v], table[v]
                if left is None or right is None:
                    continue
                mem = left[0] + right[0]
                if best is None or mem < best[0]:
                    best = (mem, left[1] + right[1])
            merged[u] = best
        combined = merged
    final = combined[grid.total]
    if final is None or final[0] > problem.usable_mem[device] + 0.5:
        return None
    if len(final[1]) > problem.constraints.max_instances_per_device:
        return None
    for k in final[1]:
        base[k] += 1
    return base


def best_refill(problem: Problem, counts: IntArray, device: int) -> IntArray | None:
    """The refill of `device` for the largest target it can cover (binary search), or None
    if it cannot reach the current throughput."""
    grid = grid_of(problem, device)
    if grid is None:
        return None
    empty = counts.copy()
    empty[grid.options] = 0
    other = member_capacities(problem, empty)
    upper = min(float(other[m] + _max_add(problem, grid, m)) for m in range(problem.n_members))
    return _search(throughput(problem, counts), upper,
                   lambda target: refill(problem, counts, device, target, grid))


def _search(current: float, upper: float,
            build: Callable[[float], IntArray | None]) -> IntArray | None:
    """Largest target in [current, upper] that `build` can reach (bisection); None if even
    the current throughput is out of reach. (A refill at the current throughput still
    helps: it packs the device differently, and the local search may go on from there.)"""
    lo = current
    if lo > upper * (1 + 1e-9) or lo <= 0:
        return None
    best = build(lo)
    if best is None:
        return None
    hi = upper
    for _ in range(TARGET_STEPS):
        if hi <= lo * (1 + TARGET_TOLERANCE):
            break
        mid = (lo + hi) / 2
        found = build(mid)
        if found is None:
            hi = mid
        else:
            lo, best = mid, found
    return best


def _max_add(problem: Problem, grid: Grid, member: int) -> float:
    """Most samples/s the member's options on the device could give with all its cells."""
    mine = np.flatnonzero(problem.opt_member[grid.options] == member)
    if not len(mine):
        return 0.0
    per_cell = problem.cap[grid.options[mine]] / np.maximum(grid.cells[mine], 1)
    return float(per_cell.max() * grid.total)


def refill_pair(problem: Problem, counts: IntArray, first: int, second: int,
                target: float) -> IntArray | None:
    """`counts` with both devices emptied and refilled so every member reaches `target`;
    each member's deficit is covered on one of the two (the local search may split it
    afterwards). A dynamic program over (cells used on each device) keeps the Pareto front
    of (memory on each device). None if no assignment covers the deficits."""
    grid_a, grid_b = grid_of(problem, first), grid_of(problem, second)
    if grid_a is None or grid_b is None:
        return None
    base = counts.copy()
    base[grid_a.options] = 0
    base[grid_b.options] = 0
    other = member_capacities(problem, base)
    limit_a, limit_b = problem.usable_mem[first] + 0.5, problem.usable_mem[second] + 0.5
    states: dict[tuple[int, int], list[tuple[float, float, tuple[int, ...]]]] = {
        (0, 0): [(0.0, 0.0, ())]}
    for member in range(problem.n_members):
        deficit = target - other[member]
        if deficit <= 0:
            continue
        choices = []  # (device slot, cells, memory, options)
        for slot, grid in ((0, grid_a), (1, grid_b)):
            for u, item in enumerate(_breakpoints(member_table(problem, grid, member, deficit))):
                if item is not None:
                    choices.append((slot, u, item[0], item[1]))
        if not choices:
            return None
        nxt: dict[tuple[int, int], list[tuple[float, float, tuple[int, ...]]]] = {}
        for (ua, ub), front in states.items():
            for slot, u, mem, used in choices:
                key = (ua + u, ub) if slot == 0 else (ua, ub + u)
                if key[0] > grid_a.total or key[1] > grid_b.total:
                    continue
                for ma, mb, prev in front:
                    na, nb = (ma + mem, mb) if slot == 0 else (ma, mb + mem)
                    if na <= limit_a and nb <= limit_b:
                        nxt.setdefault(key, []).append((na, nb, prev + used))
        states = {key: _pareto2(front) for key, front in nxt.items()}
        if not states:
            return None
    _, _, used = min((p for front in states.values() for p in front), key=lambda p: p[0] + p[1])
    for k in used:
        base[k] += 1
    per_device = np.bincount(problem.opt_device[list(used)], minlength=problem.n_devices)
    if (per_device > problem.constraints.max_instances_per_device).any():
        return None
    return base


def _breakpoints(table: list[tuple[float, tuple[int, ...]] | None]
                 ) -> list[tuple[float, tuple[int, ...]] | None]:
    """Only the cell counts where the least memory drops (others are never worth using)."""
    out: list[tuple[float, tuple[int, ...]] | None] = []
    least = math.inf
    for item in table:
        if item is not None and item[0] < least - 0.5:
            out.append(item)
            least = item[0]
        else:
            out.append(None)
    return out


def _pareto2(points: list[tuple[float, float, tuple[int, ...]]]
             ) -> list[tuple[float, float, tuple[int, ...]]]:
    points.sort(key=lambda p: (p[0], p[1]))
    kept: list[tuple[float, float, tuple[int, ...]]] = []
    least = math.inf
    for p in points:
        if p[1] < least - 0.5:
            kept.append(p)
            least = p[1]
    return kept[:FRONT]


def best_refill_pair(problem: Problem, counts: IntArray, first: int,
                     second: int) -> IntArray | None:
    """The pair refill for the largest target it can cover (binary search), or None."""
    grid_a, grid_b = grid_of(problem, first), grid_of(problem, second)
    if grid_a is None or grid_b is None:
        return None
    empty = counts.copy()
    empty[grid_a.options] = 0
    empty[grid_b.options] = 0
    other = member_capacities(problem, empty)
    upper = min(float(other[m] + _max_add(problem, grid_a, m) + _max_add(problem, grid_b, m))
                for m in range(problem.n_members))
    return _search(throughput(problem, counts), upper,
                   lambda target: refill_pair(problem, counts, first, second, target))


def improve(problem: Problem, counts: IntArray) -> IntArray:
    """Refill single devices, then pairs of devices, while the plan's score improves
    (throughput objective, time-sharing disabled; otherwise `counts` is returned as is)."""
    if problem.constraints.time_sharing or problem.objective != "throughput":
        return counts
    best, best_score = counts, current_score(problem, counts, clean=False)
    moves: list[tuple[int, ...]] = [(d,) for d in range(problem.n_devices)]
    moves += [(a, b) for a in range(problem.n_devices) for b in range(a + 1, problem.n_devices)]
    version = 0  # bumped whenever `best` changes
    seen: dict[tuple[int, ...], int] = {}  # move -> version of `best` it was last tried on
    for _ in range(MAX_ROUNDS):
        changed = False
        for devices in moves:
            if seen.get(devices) == version:
                continue  # same plan as when it was tried and did not help: same answer
            seen[devices] = version
            if len(devices) == 1:
                found = best_refill(problem, best, devices[0])
            else:
                found = best_refill_pair(problem, best, devices[0], devices[1])
            if found is None or np.array_equal(found, best):
                continue  # nothing to gain, or the refill packs the device as it was
            found = climb(problem, found)
            score = current_score(problem, found, clean=False)
            if better(score, best_score):
                best, best_score, changed = found, score, True
                version += 1
        if not changed:
            break
    return best


__all__ = ["best_refill", "best_refill_pair", "improve", "refill", "refill_pair"]
