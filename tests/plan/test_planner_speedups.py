"""The planner's speed-ups change no answer: remembered share-search tables, moves of the
share search skipped when the plan is as it was, the lexicographic argmax, the vectorised
dominance pruning. Each is compared with the direct computation it replaces (written out
here as it was) on hand-made and random profiles; no timings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from enserve.plan import Constraints
from enserve.plan.greedy import greedy
from enserve.plan.problem import Option, Problem, _dominates, _prune_dominated, build_problem
from enserve.plan.scenarios import FINE_GPU_SHARES, GPU_SHARES, random_profile
from enserve.plan.search import _lexicographic_argmax, better, climb, current_score
from enserve.plan.share_search import best_refill, best_refill_pair, improve
from enserve.plan.share_tables import FRONT, Grid, grid_of, member_table
from tests.helpers.profiles import entry, gpu, profile

HARD = Constraints(time_sharing=False)


def reference_table(problem: Problem, grid: Grid, member: int,
                    deficit: float) -> list[tuple[float, tuple[int, ...]] | None]:
    """The member table as computed before it was remembered (numpy numbers throughout)."""
    mine = np.flatnonzero(problem.opt_member[grid.options] == member)
    table: list[tuple[float, tuple[int, ...]] | None] = [None] * (grid.total + 1)
    if deficit <= 0:
        return [(0.0, ())] * (grid.total + 1)
    if not len(mine):
        return table
    front: list[list[tuple[float, float, tuple[int, ...]]]] = [[] for _ in range(grid.total + 1)]
    front[0] = [(0.0, 0.0, ())]
    need = deficit * (1 - 1e-9)
    for u in range(1, grid.total + 1):
        candidates = []
        for j in mine:
            c = int(grid.cells[j])
            if c > u or c <= 0:
                continue
            k = int(grid.options[j])
            for cap, mem, used in front[u - c]:
                if cap >= need or (used and used[-1] > k):
                    continue
                candidates.append((min(deficit, cap + problem.cap[k]), mem + problem.mem[k],
                                   (*used, k)))
        candidates.sort(key=lambda p: (-p[0], p[1]))
        kept: list[tuple[float, float, tuple[int, ...]]] = []
        least = math.inf
        for p in candidates:
            if p[1] < least - 0.5:
                kept.append(p)
                least = p[1]
        if len(kept) > FRONT:
            picks = np.unique(np.linspace(0, len(kept) - 1, FRONT).round().astype(int))
            kept = [kept[i] for i in picks]
        front[u] = kept
    best: tuple[float, tuple[int, ...]] | None = None
    for u in range(grid.total + 1):
        for cap, mem, used in front[u]:
            if cap >= need and (best is None or mem < best[0]):
                best = (mem, used)
        table[u] = best
    return table


def hand_made() -> Problem:
    """Two GPUs, three members with a knee in latency vs share, memory growing with batch."""
    entries = []
    for m, (work, knee) in {"a": (10, 30), "b": (20, 50), "c": (5, 20)}.items():
        for share in (10, 20, 30, 50, 100):
            for batch in (1, 4):
                latency = work / 1000 * batch ** 0.7 * max(1.0, knee / share)
                for d in (0, 1):
                    entries.append(entry(m, f"cuda:{d}", batch, share, latency * (1 + 0.3 * d),
                                         0.3 + 0.1 * batch))
    return build_problem(profile([gpu(0, memory_gb=2), gpu(1, memory_gb=2)], entries),
                         constraints=HARD)


def problems() -> list[Problem]:
    out = [hand_made()]
    for seed in range(6):
        for shares in (GPU_SHARES, FINE_GPU_SHARES):
            out.append(build_problem(random_profile(seed, gpu_shares=shares), constraints=HARD))
    return out


@pytest.mark.parametrize("index", range(13))
def test_remembered_member_tables_equal_the_direct_computation(index: int) -> None:
    problem = problems()[index]
    rng = np.random.default_rng(index)
    for device in range(problem.n_devices):
        grid = grid_of(problem, device)
        if grid is None:
            continue
        assert grid_of(problem, device) is grid  # computed once
        for member in range(problem.n_members):
            top = float(problem.cap[problem.opt_member == member].max()) * 3
            for deficit in [-1.0, 0.0, *rng.uniform(0, top, 6)]:
                expected = reference_table(problem, grid, member, deficit)
                assert member_table(problem, grid, member, deficit) == expected
                assert member_table(problem, grid, member, deficit) == expected  # remembered
                unkeyed = Grid(grid.options, grid.cells, grid.total)  # not remembered
                assert member_table(problem, unkeyed, member, deficit) == expected


def reference_improve(problem: Problem, counts: np.ndarray) -> np.ndarray:
    """`improve` as it was: every move tried in every round."""
    best, best_score = counts, current_score(problem, counts, clean=False)
    moves: list[tuple[int, ...]] = [(d,) for d in range(problem.n_devices)]
    moves += [(a, b) for a in range(problem.n_devices) for b in range(a + 1, problem.n_devices)]
    for _ in range(8):
        changed = False
        for devices in moves:
            found = (best_refill(problem, best, devices[0]) if len(devices) == 1
                     else best_refill_pair(problem, best, devices[0], devices[1]))
            if found is None or np.array_equal(found, best):
                continue
            found = climb(problem, found)
            score = current_score(problem, found, clean=False)
            if better(score, best_score):
                best, best_score, changed = found, score, True
        if not changed:
            break
    return best


@pytest.mark.parametrize("seed", range(8))
def test_share_search_skipping_unchanged_moves_finds_the_same_plan(seed: int) -> None:
    problem = build_problem(random_profile(seed, gpu_shares=FINE_GPU_SHARES), constraints=HARD)
    start = greedy(problem, share_search_on=False)
    assert np.array_equal(improve(problem, start), reference_improve(problem, start))


def test_lexicographic_argmax_equals_the_last_row_of_a_lexsort() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        rows, cols = int(rng.integers(1, 40)), int(rng.integers(1, 6))
        matrix = rng.integers(-2, 3, size=(rows, cols)).astype(np.float64)  # many ties
        matrix[rng.random(rows) < 0.2] = -np.inf  # invalid moves
        assert _lexicographic_argmax(matrix) == int(np.lexsort(matrix.T[::-1])[-1])


def reference_prune(options: list[Option], latency_matters: bool) -> list[Option]:
    groups: dict[tuple[str, str], list[Option]] = {}
    for option in options:
        groups.setdefault((option.member, option.device), []).append(option)
    kept = []
    for group in groups.values():
        for i, b in enumerate(group):
            if not any(_dominates(a, b, latency_matters)
                       and (not _dominates(b, a, latency_matters) or j < i)
                       for j, a in enumerate(group) if j != i):
                kept.append(b)
    return kept


@pytest.mark.parametrize("latency_matters", [False, True])
def test_vectorised_pruning_keeps_the_same_options(latency_matters: bool) -> None:
    rng = np.random.default_rng(1)
    options = []
    for _ in range(200):  # coarse values: many equal and mutually dominating options
        options.append(Option(member=str(rng.integers(3)), variant=None,
                              device=f"cuda:{rng.integers(2)}", batch_size=int(rng.integers(1, 4)),
                              share=float(rng.choice([25, 50, 100])),
                              latency_s=float(rng.choice([0.01, 0.02, 0.04])),
                              memory_bytes=int(rng.choice([1, 2, 3])) << 30))
    assert _prune_dominated(options, latency_matters) == reference_prune(options, latency_matters)
