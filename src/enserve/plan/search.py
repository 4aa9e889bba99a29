"""Local search over instance counts: vectorised move evaluation, hill climbing, clean-up.

A move removes up to two instances and adds up to two. Single moves: add an instance,
remove one, change one's batch size / share / variant, move it to another device, replace
it by another member's. When no single move improves the plan, pairs of moves are tried:
one that frees room (remove, shrink, move away, replace) followed by one that helps a
bottleneck member (add or change one of its instances).

All candidate moves of one step are scored at once with numpy. Their throughput is first
estimated with the closed-form proportional-routing bound of `enserve.plan.cost` (exact when
no device is oversubscribed); for the best-ranked moves that oversubscribe a device, and for
the current plan, the exact throughput LP is solved before choosing. A test checks the
vectorised numbers against `enserve.plan.cost`.

Scores are compared lexicographically (bigger is better), first on constraint violation:
- throughput objective: throughput X, then fewer members tied at the minimum (so the search
  can leave a plateau where two members are the bottleneck together), then shorter
  completion time, then less memory (which lets the search shrink members that are not the
  bottleneck and so make room);
- latency objective: completion time (lower is better), then throughput, then fewer
  devices whose completion time is the maximum, then fewer tied members, then less memory.
Clean-up drops the tie count and only removes or shrinks instances.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, replace

import numpy as np

from enserve.plan.cost import (
    OVERSUBSCRIBED_TOL,
    member_capacities,
    proportional_terms,
    share_matrix,
    throughput_and_load,
)
from enserve.plan.problem import BoolArray, FloatArray, IntArray, Problem, group_sum

_REL_RESOLUTION = 1e-7  # relative differences below this count as ties
MAX_STEPS = 5000
LP_PER_STEP = 6  # exact LP evaluations of oversubscribing moves per step
LP_MEMO = 4096  # LP throughputs remembered per problem (a climb revisits plans)
_MEMO: weakref.WeakKeyDictionary[Problem, dict[bytes, float]] = weakref.WeakKeyDictionary()
PAIR_LIMIT = 20_000  # most move pairs scored in one step
REPLACE_WITHIN = 1.5  # replacements only by members within 1.5x of the lowest capacity
_TOP = 3  # slowest options tracked per device (enough for two removals)


@dataclass(frozen=True)
class Aggregates:
    counts: IntArray
    capacity: FloatArray  # (M,)
    shares: FloatArray  # (M, D)
    memory: FloatArray  # (D,)
    share_sum: FloatArray  # (D,)
    work: FloatArray  # (D,)
    count: FloatArray  # (D,)
    top_latency: FloatArray  # (D, _TOP) slowest distinct options present, descending
    top_option: IntArray  # (D, _TOP) those options, -1 if none


def aggregates(problem: Problem, counts: IntArray) -> Aggregates:
    dev = problem.opt_device
    n_dev = problem.n_devices

    def per_device(values: FloatArray) -> FloatArray:
        return group_sum(dev, counts * values, n_dev)

    top_latency = np.zeros((n_dev, _TOP))
    top_option = np.full((n_dev, _TOP), -1, dtype=np.int64)
    present = np.flatnonzero(counts > 0)
    # per device, the present options slowest first (ties: in option order), the first _TOP
    ranked = present[np.lexsort((-problem.lat[present], dev[present]))]
    on = dev[ranked]
    rank = np.arange(len(ranked)) - np.searchsorted(on, on)
    top = rank < _TOP
    top_option[on[top], rank[top]] = ranked[top]
    top_latency[on[top], rank[top]] = problem.lat[ranked[top]]
    return Aggregates(
        counts=counts,
        capacity=member_capacities(problem, counts),
        shares=share_matrix(problem, counts),
        memory=per_device(problem.mem),
        share_sum=per_device(problem.share),
        work=per_device(problem.work),
        count=group_sum(dev, counts.astype(np.float64), n_dev),
        top_latency=top_latency,
        top_option=top_option,
    )


@dataclass(frozen=True)
class MoveScores:
    valid: BoolArray
    throughput: FloatArray  # (N,)
    tied: FloatArray  # (N,) members whose estimated throughput is at the minimum
    completion: FloatArray  # (N, D) per-device completion time, sorted descending
    latency: FloatArray  # (N,)
    memory: FloatArray  # (N,) total bytes
    oversubscribed: BoolArray  # (N,) some device's shares sum above its units

    def violation(self, problem: Problem) -> FloatArray:
        """How far each move is from meeting the latency bound and throughput floor."""
        violation = np.zeros(len(self.latency))
        bound = problem.constraints.max_latency_s
        if bound is not None:
            violation += np.maximum(0.0, self.latency - bound) / bound
        floor = problem.constraints.min_throughput
        if floor is not None:
            violation += np.maximum(0.0, floor - self.throughput) / floor
        return violation


def _as_columns(moves: IntArray) -> IntArray:
    moves = np.asarray(moves, dtype=np.int64)
    return moves[:, None] if moves.ndim == 1 else moves


def _device_totals(problem: Problem, agg: Aggregates, rem: IntArray,
                   add: IntArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Memory, instance count and share sum per device after each move, (N, D) each."""
    n = len(rem)
    rows = np.arange(n)
    # (N, D, 3): memory, count and share sum, updated together (one indexed add per column)
    totals = np.repeat(np.stack([agg.memory, agg.count, agg.share_sum], axis=1)[None], n, axis=0)
    per_option = _per_option_totals(problem)
    for column, sign in [(c, -1.0) for c in rem.T] + [(c, 1.0) for c in add.T]:
        on = column >= 0
        k = np.where(on, column, 0)
        w = on * sign
        totals[rows, problem.opt_device[k]] += w[:, None] * per_option[k]
    return totals[:, :, 0], totals[:, :, 1], totals[:, :, 2]


_PER_OPTION: weakref.WeakKeyDictionary[Problem, FloatArray] = weakref.WeakKeyDictionary()


def _per_option_totals(problem: Problem) -> FloatArray:
    """(K, 3): what one instance of each option adds to its device's memory, instance
    count and share sum."""
    found = _PER_OPTION.get(problem)
    if found is None:
        found = _PER_OPTION[problem] = np.stack(
            [problem.mem, np.ones(len(problem.mem)), problem.share], axis=1)
    return found


def evaluate_moves(problem: Problem, agg: Aggregates, rem: IntArray, add: IntArray) -> MoveScores:
    """Score every move j: remove options rem[j, :] and add options add[j, :] (one instance
    each; -1 = nothing). 1-D arrays mean one removal and one addition per move. Moves that
    break a memory, count or share limit are marked invalid and not scored further."""
    rem, add = _as_columns(rem), _as_columns(add)
    memory, count, share_sum = _device_totals(problem, agg, rem, add)
    valid: BoolArray = np.asarray((memory <= problem.usable_mem + 0.5).all(axis=1), dtype=np.bool_)
    valid &= (count <= problem.constraints.max_instances_per_device + 0.5).all(axis=1)
    for c in range(rem.shape[1]):  # never remove more instances than there are
        k = rem[:, c]
        times = (rem == k[:, None]).sum(axis=1)
        valid &= (k < 0) | (agg.counts[np.where(k >= 0, k, 0)] >= times)
    if not problem.constraints.time_sharing:
        valid &= (share_sum <= problem.units * (1 + 1e-9)).all(axis=1)
    keep = np.flatnonzero(valid)
    n_all, n_dev = len(rem), problem.n_devices
    x_all = np.zeros(n_all)
    tied_all = np.zeros(n_all)
    completion_all = np.zeros((n_all, n_dev))
    if len(keep):
        x, tied, completion, ok = _score_valid(problem, agg, rem[keep], add[keep], count[keep])
        x_all[keep], tied_all[keep], completion_all[keep] = x, tied, completion
        valid[keep] &= ok
    return MoveScores(
        valid=np.asarray(valid, dtype=np.bool_),
        throughput=x_all,
        tied=tied_all,
        completion=-np.sort(-completion_all, axis=1),
        latency=completion_all.max(axis=1) + problem.combine_s,
        memory=memory.sum(axis=1),
        oversubscribed=np.asarray(
            (share_sum > problem.units * (1 + OVERSUBSCRIBED_TOL)).any(axis=1), dtype=np.bool_),
    )


def _score_valid(problem: Problem, agg: Aggregates, rem: IntArray, add: IntArray,
                 count: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray, BoolArray]:
    """Throughput estimate, number of binding terms, per-device completion time, and 'no
    member left without an instance' for moves already known to respect the limits.

    The proportional estimate is min(Cap_i, C_d / D_d) with D_d = sum_i S_id / Cap_i; a move
    changes only the members it touches, so D is updated from their rows alone."""
    n = len(rem)
    rows = np.arange(n)
    columns = [(c, -1.0) for c in rem.T] + [(c, 1.0) for c in add.T]
    members, devices, weights, options = [], [], [], []
    for column, sign in columns:
        on = column >= 0
        k = np.where(on, column, 0)
        options.append(k)
        members.append(problem.opt_member[k])
        devices.append(problem.opt_device[k])
        weights.append(on * sign)
    capacity = np.repeat(agg.capacity[None], n, axis=0)
    work = np.repeat(agg.work[None], n, axis=0)
    for k, m, d, w in zip(options, members, devices, weights, strict=True):
        capacity[rows, m] += w * problem.cap[k]
        work[rows, d] += w * problem.work[k]
    ok = (capacity > 1e-12).all(axis=1)

    with np.errstate(divide="ignore", invalid="ignore"):
        base_ratio = np.where(agg.shares > 0, agg.shares / agg.capacity[:, None], 0.0)
    demand = np.repeat(base_ratio.sum(axis=0)[None], n, axis=0)
    for c, (m, w) in enumerate(zip(members, weights, strict=True)):
        first = w != 0  # count each member once, at its first column in the move
        for j in range(c):
            first &= ~((weights[j] != 0) & (members[j] == m))
        if not first.any():
            continue
        idx = rows[first]
        row = agg.shares[m[idx]].copy()  # (F, D) new shares of that member
        for k2, m2, d2, w2 in zip(options, members, devices, weights, strict=True):
            same = (m2[idx] == m[idx]) & (w2[idx] != 0)
            row[np.arange(len(idx)), d2[idx]] += np.where(same, w2[idx] * problem.share[k2[idx]], 0.0)
        row[row < 1e-9] = 0.0
        new_cap = capacity[idx, m[idx]]
        safe = np.where(new_cap > 1e-12, new_cap, 1.0)
        demand[idx] += row / safe[:, None] - base_ratio[m[idx]]
    demand[demand < 1e-12] = 0.0
    with np.errstate(divide="ignore"):
        bound = np.where(demand > 0, problem.units / np.maximum(demand, 1e-300), np.inf)
    x = np.minimum(capacity.min(axis=1), bound.min(axis=1))
    limit = x[:, None] * (1 + 1e-6)
    tied = (capacity <= limit).sum(axis=1) + (bound <= limit).sum(axis=1)

    removed = np.zeros((n, problem.n_devices, _TOP), dtype=bool)
    for c in range(rem.shape[1]):  # slowest per device: drop options whose last instance goes
        k = rem[:, c]
        on = k >= 0
        times = (rem == k[:, None]).sum(axis=1)
        gone = on & (agg.counts[np.where(on, k, 0)] <= times)
        d = problem.opt_device[np.where(on, k, 0)]
        removed[rows[gone], d[gone]] |= agg.top_option[d[gone]] == k[gone][:, None]
    # the slowest present option left: the first of the (descending) three not removed
    top = agg.top_latency
    slowest = np.where(removed[:, :, 0], np.where(removed[:, :, 1], np.where(
        removed[:, :, 2], 0.0, top[:, 2]), top[:, 1]), top[:, 0])
    for k in add.T:
        on = k >= 0
        d = problem.opt_device[np.where(on, k, 0)]
        slowest[rows, d] = np.maximum(slowest[rows, d], on * problem.lat[np.where(on, k, 0)])
    completion = np.where(count > 0.5, np.maximum(slowest, work / problem.units), 0.0)
    return x, tied.astype(np.float64), completion, np.asarray(ok, dtype=np.bool_)


def score_matrix(problem: Problem, s: MoveScores, clean: bool) -> FloatArray:
    """Columns to compare lexicographically, bigger is better (see the module docstring)."""
    cols: list[FloatArray] = [-s.violation(problem)[:, None]]
    if problem.objective == "throughput":
        cols.append(s.throughput[:, None])
        if not clean:
            cols.append(-s.tied[:, None])
        cols.append(-s.latency[:, None])
    else:
        cols.append(-s.latency[:, None])
        cols.append(s.throughput[:, None])
        if not clean:
            slowest = s.completion[:, :1]
            at_max = (s.completion >= slowest * (1 - 1e-6)) & (s.completion > 0)
            cols.append(-at_max.sum(axis=1, keepdims=True).astype(np.float64))
            cols.append(-s.tied[:, None])
    cols.append(-s.memory[:, None])
    matrix = np.hstack(cols)
    matrix[~s.valid] = -np.inf
    return matrix


def best_improvement(matrix: FloatArray) -> int | None:
    """Row with the lexicographically largest score if it beats row 0 (the null move)."""
    current = np.abs(matrix[0])
    scale = np.where((current > 0) & np.isfinite(current), current, 1.0)
    with np.errstate(invalid="ignore"):
        quantized = np.round(matrix / (scale * _REL_RESOLUTION))
    quantized[~np.isfinite(matrix)] = -np.inf
    best = _lexicographic_argmax(quantized)
    with np.errstate(invalid="ignore"):
        diff = quantized[best] - quantized[0]
    nonzero = np.flatnonzero(np.nan_to_num(diff, nan=0.0) != 0)
    if best == 0 or len(nonzero) == 0 or diff[nonzero[0]] <= 0:
        return None
    return best


def _lexicographic_argmax(matrix: FloatArray) -> int:
    """`np.lexsort(matrix.T[::-1])[-1]`: the lexicographically largest row (the last of
    equal ones), without sorting: keep the rows at the maximum, column after column."""
    rows = np.arange(len(matrix))
    for column in matrix.T:
        if len(rows) == 1:
            break
        values = column[rows]
        rows = rows[values == values.max()]
    return int(rows[-1])


def neighbourhood(problem: Problem, agg: Aggregates, clean: bool) -> tuple[IntArray, IntArray]:
    """Single moves as (rem, add) arrays; row 0 is the null move (the current plan).

    For each instance: remove it; change its option on the same device; move it, as is, to
    another device; replace it by an instance of a member whose capacity is near the lowest
    (other replacements cannot raise the throughput). Clean-up only removes and changes."""
    present = np.flatnonzero(agg.counts > 0)
    rems: list[IntArray] = [np.array([-1]), present]
    adds: list[IntArray] = [np.array([-1]), np.full(len(present), -1)]
    if not clean:
        free = problem.usable_mem - agg.memory
        room = agg.count < problem.constraints.max_instances_per_device
        fits = (problem.mem <= free[problem.opt_device] + 0.5) & room[problem.opt_device]
        addable = np.flatnonzero(fits)
        rems.append(np.full(len(addable), -1))
        adds.append(addable)
        weak = agg.capacity <= agg.capacity.min() * REPLACE_WITHIN
        weak_option = weak[problem.opt_member]
    for p in present:
        same_device = problem.opt_device == problem.opt_device[p]
        same_member = problem.opt_member == problem.opt_member[p]
        if clean:
            targets = same_device & same_member
        else:
            targets = (same_device & (same_member | weak_option)) | (
                problem.opt_config == problem.opt_config[p])
        targets[p] = False
        idx = np.flatnonzero(targets)
        rems.append(np.full(len(idx), p))
        adds.append(idx)
    return np.concatenate(rems).astype(np.int64), np.concatenate(adds).astype(np.int64)


def pair_moves(problem: Problem, agg: Aggregates, rem: IntArray,
               add: IntArray) -> tuple[IntArray, IntArray]:
    """Pairs (frees room, then helps a bottleneck member) as (N, 2) rem and add arrays.

    The first move removes an instance from the device where the second adds one, and
    frees memory or compute there; the second adds or changes an instance of a member whose
    estimated throughput is the lowest."""
    capacity, device_bound = proportional_terms(problem, agg.counts)
    hosted = agg.shares > 0
    effective = np.minimum(capacity, np.where(hosted, device_bound[None, :], np.inf).min(axis=1))
    weakest = np.isin(problem.opt_member, np.flatnonzero(effective <= effective.min() * (1 + 1e-6)))
    # second moves: add a weakest member's option, or change one of its instances
    helper_add = np.flatnonzero(weakest)
    second_rem = [np.full(len(helper_add), -1)]
    second_add = [helper_add]
    for p in np.flatnonzero((agg.counts > 0) & weakest):
        same = helper_add[(problem.opt_member[helper_add] == problem.opt_member[p])
                          & (helper_add != p)]
        second_rem.append(np.full(len(same), p))
        second_add.append(same)
    s_rem, s_add = np.concatenate(second_rem), np.concatenate(second_add)
    # first moves: remove (or replace by something smaller) on the device of the second add
    first = np.flatnonzero(rem >= 0)
    r_dev = problem.opt_device[rem[first]]
    a_opt = np.maximum(add[first], 0)
    stays = (add[first] >= 0) & (problem.opt_device[a_opt] == r_dev)
    freed_mem = problem.mem[rem[first]] - np.where(stays, problem.mem[a_opt], 0.0)
    freed_share = problem.share[rem[first]] - np.where(stays, problem.share[a_opt], 0.0)
    useful = (freed_mem > 0) | (freed_share > 0) | ~stays
    first, r_dev, freed_mem = first[useful], r_dev[useful], freed_mem[useful]
    pairs_f: list[IntArray] = []
    pairs_s: list[IntArray] = []
    budget = PAIR_LIMIT // max(1, problem.n_devices)
    s_dev = problem.opt_device[s_add]
    for d in range(problem.n_devices):
        f_here = first[r_dev == d]
        s_here = np.flatnonzero(s_dev == d)
        if not len(f_here) or not len(s_here):
            continue
        if len(f_here) * len(s_here) > budget:  # keep the first moves freeing most memory
            order = np.argsort(-freed_mem[r_dev == d], kind="stable")
            f_here = f_here[order[: max(1, budget // len(s_here))]]
        pairs_f.append(np.repeat(f_here, len(s_here)))
        pairs_s.append(np.tile(s_here, len(f_here)))
    if not pairs_f:
        empty = np.zeros((0, 2), dtype=np.int64)
        return empty, empty
    f, s = np.concatenate(pairs_f), np.concatenate(pairs_s)
    pair_rem = np.stack([rem[f], s_rem[s]], axis=1)
    pair_add = np.stack([add[f], s_add[s]], axis=1)
    return pair_rem, pair_add


def _moved(counts: IntArray, rem: IntArray, add: IntArray) -> IntArray:
    out = counts.copy()
    for k in np.atleast_1d(rem):
        if k >= 0:
            out[k] -= 1
    for k in np.atleast_1d(add):
        if k >= 0:
            out[k] += 1
    return out


def _with_exact_throughput(problem: Problem, agg: Aggregates, rem: IntArray, add: IntArray,
                           scores: MoveScores, clean: bool) -> MoveScores:
    """Replace the estimated throughput by the LP value for the current plan and for the
    best-ranked valid moves that oversubscribe a device."""
    over = scores.oversubscribed & scores.valid
    if not over.any():
        return scores
    candidates = np.flatnonzero(over)  # ranked alone: lexsort is stable, so their order
    # is the one they have in the ranking of every move
    matrix = score_matrix(problem, scores, clean)[candidates]
    order = candidates[np.lexsort(matrix.T[::-1])[::-1]]
    chosen = [int(j) for j in order[order != 0][:LP_PER_STEP]]
    if over[0]:
        chosen.append(0)
    x = scores.throughput.copy()
    for j in chosen:
        x[j] = _lp_throughput(problem, _moved(agg.counts, rem[j], add[j]))
    return replace(scores, throughput=x)


def _lp_throughput(problem: Problem, counts: IntArray) -> float:
    """`throughput_and_load(...)[0]`, remembered: a climb evaluates the plan it moved to
    again as the next step's current plan and its repeated move's base."""
    memo = _MEMO.get(problem)
    if memo is None:
        memo = _MEMO[problem] = {}
    key = counts.tobytes()
    if key not in memo:
        if len(memo) >= LP_MEMO:
            memo.clear()
        memo[key] = throughput_and_load(problem, counts)[0]
    return memo[key]


def _best(problem: Problem, agg: Aggregates, rem: IntArray, add: IntArray,
          clean: bool) -> int | None:
    scores = evaluate_moves(problem, agg, rem, add)
    scores = _with_exact_throughput(problem, agg, rem, add, scores, clean)
    return best_improvement(score_matrix(problem, scores, clean))


def step(problem: Problem, counts: IntArray, clean: bool,
         pairs: bool = True) -> tuple[IntArray, IntArray] | None:
    """The best improving move (removed options, added options), or None at a local
    optimum. Pairs of moves are tried only when no single move improves."""
    agg = aggregates(problem, counts)
    rem, add = neighbourhood(problem, agg, clean)
    best = _best(problem, agg, rem, add, clean)
    if best is not None:
        return rem[best : best + 1], add[best : best + 1]
    if clean or not pairs:
        return None
    pair_rem, pair_add = pair_moves(problem, agg, rem, add)
    if not len(pair_rem):
        return None
    null = np.full((1, 2), -1, dtype=np.int64)
    all_rem, all_add = np.vstack([null, pair_rem]), np.vstack([null, pair_add])
    best = _best(problem, agg, all_rem, all_add, clean)
    if best is None:
        return None
    return all_rem[best], all_add[best]


def _repeat_improves(problem: Problem, counts: IntArray, rem: IntArray, add: IntArray,
                     clean: bool) -> bool:
    """Would applying the same move once more improve the plan again?"""
    agg = aggregates(problem, counts)
    rems = np.vstack([np.full((1, rem.size), -1), rem.reshape(1, -1)])
    adds = np.vstack([np.full((1, add.size), -1), add.reshape(1, -1)])
    return _best(problem, agg, rems, adds, clean) == 1


def climb(problem: Problem, counts: IntArray, clean: bool = False, pairs: bool = True,
          max_steps: int = MAX_STEPS) -> IntArray:
    """Steepest-ascent hill climbing from `counts` until no move improves the score. A move
    that improved is repeated while it keeps improving (cheap: replicas are added this way)."""
    steps = 0
    while steps < max_steps:
        move = step(problem, counts, clean, pairs)
        if move is None:
            break
        rem, add = move
        counts = _moved(counts, rem, add)
        steps += 1
        while steps < max_steps and _repeat_improves(problem, counts, rem, add, clean):
            counts = _moved(counts, rem, add)
            steps += 1
    return counts


def current_score(problem: Problem, counts: IntArray, clean: bool = True) -> FloatArray:
    """The score row of a plan itself (for comparing plans from different starts)."""
    agg = aggregates(problem, counts)
    none = np.array([-1], dtype=np.int64)
    scores = evaluate_moves(problem, agg, none, none)
    x = np.array([_lp_throughput(problem, counts)])
    return score_matrix(problem, replace(scores, throughput=x), clean)[0]


def better(a: FloatArray, b: FloatArray) -> bool:
    """Is score row `a` lexicographically better than `b` (beyond the tie resolution)?"""
    matrix = np.vstack([b, a])
    return best_improvement(matrix) == 1
