"""Per-device share grids and per-member cover tables for the share search, remembered.

`enserve.plan.share_search` refills a device for many targets (bisection), for every
device and pair of devices, round after round; the same (device, member, deficit) table
is asked for again and again (pairs reuse the single-device deficits when nothing moved,
later rounds repeat the earlier ones). Everything here is a pure function of the problem,
so it is computed once per problem (weakly keyed: forgotten with the problem):

* `grid_of(problem, device)`: the device's options and shares in grid cells (the greatest
  common divisor of its options' shares: integers, else tenths of a unit), or None when
  the device has more than `MAX_CELLS` cells (left to the local search);
* `member_table(problem, grid, member, deficit)`: for u = 0..cells, the least memory (and
  the options) covering `deficit` samples/s with at most u cells of the member's options
  on the device: a dynamic program over cells keeping, for each number of cells, the
  Pareto front of (capacity capped at the deficit, memory), truncated at `FRONT` points.

The table is computed on plain Python numbers (the options' cells, capacity and memory
taken out of numpy once per device and member); the values and the order of the work
are those of a direct computation, so the results are the same to the last bit (a test
compares them with `member_table_reference`).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field

import numpy as np

from enserve.plan.problem import IntArray, Problem

MAX_CELLS = 400  # share grid cells per device the dynamic program accepts
FRONT = 24  # Pareto points kept per (member, units) state
TABLE_MEMO = 20_000  # member tables remembered per problem (cleared beyond)

Table = list[tuple[float, tuple[int, ...]] | None]
Point = tuple[float, float, tuple[int, ...]]


@dataclass(frozen=True)
class Grid:
    """A device's options and shares expressed in grid cells."""

    options: IntArray  # option ids on the device
    cells: IntArray  # share of each, in cells
    total: int  # cells the device has
    device: int = -1  # the device (the key of the remembered tables; -1: not remembered)


@dataclass
class _Memo:
    grids: dict[int, Grid | None] = field(default_factory=dict)
    # (device, member) -> [(cells, option, capacity, memory)] of its options there
    choices: dict[tuple[int, int], list[tuple[int, int, float, float]]] = field(
        default_factory=dict)
    tables: dict[tuple[int, int, float], Table] = field(default_factory=dict)


_MEMOS: weakref.WeakKeyDictionary[Problem, _Memo] = weakref.WeakKeyDictionary()


def _memo(problem: Problem) -> _Memo:
    memo = _MEMOS.get(problem)
    if memo is None:
        memo = _MEMOS[problem] = _Memo()
    return memo


def _compute_grid(problem: Problem, device: int) -> Grid | None:
    opts = problem.options_on(device)
    if not len(opts):
        return None
    shares = problem.share[opts]
    for scale in (1.0, 10.0):
        scaled = shares * scale
        if np.allclose(scaled, np.round(scaled), atol=1e-6):
            ints = np.round(scaled).astype(np.int64)
            step = int(np.gcd.reduce(ints))
            if step <= 0:
                return None
            total = math.floor(problem.units[device] * scale / step + 1e-9)
            if total > MAX_CELLS:
                return None
            return Grid(opts, ints // step, total, device)
    return None


def grid_of(problem: Problem, device: int) -> Grid | None:
    """The device's grid (see the module docstring), computed once per problem."""
    grids = _memo(problem).grids
    if device not in grids:
        grids[device] = _compute_grid(problem, device)
    return grids[device]


def _choices(problem: Problem, g: Grid, member: int) -> list[tuple[int, int, float, float]]:
    memo = _memo(problem)
    key = (g.device, member)
    found = memo.choices.get(key) if g.device >= 0 else None
    if found is None:
        mine = np.flatnonzero(problem.opt_member[g.options] == member)
        found = [(int(g.cells[j]), int(g.options[j]), float(problem.cap[g.options[j]]),
                  float(problem.mem[g.options[j]])) for j in mine]
        if g.device >= 0:
            memo.choices[key] = found
    return found


def member_table(problem: Problem, g: Grid, member: int, deficit: float) -> Table:
    """For u = 0..total cells: (least memory, options used) covering `deficit` with at most
    u cells of the member's options on the device; None where impossible. Remembered per
    (device, member, deficit); callers must not change the list."""
    deficit = float(deficit)
    if g.device < 0:
        return _table(_choices(problem, g, member), g.total, deficit)
    tables = _memo(problem).tables
    key = (g.device, member, deficit)
    table = tables.get(key)
    if table is None:
        if len(tables) >= TABLE_MEMO:
            tables.clear()
        table = tables[key] = _table(_choices(problem, g, member), g.total, deficit)
    return table


def _table(choices: list[tuple[int, int, float, float]], total: int, deficit: float) -> Table:
    if deficit <= 0:
        return [(0.0, ())] * (total + 1)
    table: Table = [None] * (total + 1)
    if not choices:
        return table
    # front[u]: Pareto list of (capacity capped at deficit, memory, options) using exactly u cells
    front: list[list[Point]] = [[] for _ in range(total + 1)]
    front[0] = [(0.0, 0.0, ())]
    need = deficit * (1 - 1e-9)
    for u in range(1, total + 1):
        candidates: list[Point] = []
        for c, k, cap_k, mem_k in choices:
            if c > u or c <= 0:
                continue
            for cap, mem, used in front[u - c]:
                if cap >= need or (used and used[-1] > k):  # complete, or not canonical order
                    continue
                candidates.append((min(deficit, cap + cap_k), mem + mem_k, (*used, k)))
        front[u] = pareto(candidates)
    best: tuple[float, tuple[int, ...]] | None = None
    for u in range(total + 1):
        for cap, mem, used in front[u]:
            if cap >= need and (best is None or mem < best[0]):
                best = (mem, used)
        table[u] = best
    return table


def pareto(points: list[Point]) -> list[Point]:
    """Points not beaten on both capacity (higher) and memory (lower); at most FRONT."""
    points.sort(key=lambda p: (-p[0], p[1]))
    kept: list[Point] = []
    least = math.inf
    for p in points:
        if p[1] < least - 0.5:
            kept.append(p)
            least = p[1]
    if len(kept) > FRONT:  # keep the extremes and an even spread between them
        picks = np.unique(np.linspace(0, len(kept) - 1, FRONT).round().astype(int))
        kept = [kept[i] for i in picks]
    return kept


__all__ = ["FRONT", "MAX_CELLS", "Grid", "grid_of", "member_table", "pareto"]
