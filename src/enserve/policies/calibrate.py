"""Choosing a cascade on labelled data: the member order and per-stage thresholds that
minimize the expected cost per row while the accuracy stays within `max_accuracy_drop`
of the full ensemble's on the same data.

The bound is kept conservatively: at most `max_accuracy_drop` x rows may be *lost* (rows
the full ensemble gets right and the cascade gets wrong); rows the cascade happens to get
right where the full ensemble does not are not counted against the losses, so thresholds
do not lean on lucky rows of the calibration data.

Pure: it takes every member's logits on the data (computed once) and a cost per row for
each member (from a profile, or measured), and touches no hardware.

Search: every order of the members (up to 6 members; beyond that, cheapest first), one
member per stage; per order, thresholds by coordinate descent from "never exit" over a
grid of the observed confidences (each step takes the single threshold change that
lowers the cost most while the losses stay allowed). Stages whose threshold is never
reached are merged into the next one (same answer, one round trip less).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from enserve.errors import EnserveError
from enserve.policies.cascade import (
    CONFIDENCES,
    NEVER,
    Cascade,
    Confidence,
    Stage,
    combine_members,
    confidence,
)
from enserve.spec import EnsembleSpec

MAX_PERMUTED = 6
GRID = 48


@dataclass(frozen=True)
class Calibration:
    """The chosen cascade and what it is expected to do on the calibration data."""

    cascade: Cascade
    rows: int
    full_accuracy: float
    accuracy: float
    full_cost_s: float  # per row, every member
    cost_s: float  # per row, expected under the cascade
    exit_rates: list[float]  # fraction of rows answered by each stage
    reach: dict[str, float]  # fraction of rows each member computes
    member_cost_s: dict[str, float] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        return self.full_cost_s / self.cost_s if self.cost_s > 0 else math.inf

    def to_dict(self) -> dict[str, object]:
        return {
            "rows": self.rows,
            "full_accuracy": self.full_accuracy,
            "accuracy": self.accuracy,
            "full_cost_s_per_row": self.full_cost_s,
            "cost_s_per_row": self.cost_s,
            "expected_speedup": self.speedup,
            "exit_rates": self.exit_rates,
            "member_cost_s_per_row": self.member_cost_s,
        }


@dataclass
class _Order:
    members: list[str]
    conf: np.ndarray  # [stages, rows]
    correct: np.ndarray  # [stages, rows] bool
    cost: np.ndarray  # [stages]
    loss: np.ndarray  # [stages, rows] bool: the full ensemble is right, this answer is not

    def exit_stages(self, thresholds: np.ndarray) -> np.ndarray:
        """Per row, the first stage whose threshold its confidence passes (else the last)."""
        passed = np.vstack([self.conf[:-1] >= thresholds[:, None],
                            np.ones((1, self.conf.shape[1]), dtype=bool)])
        return np.asarray(passed.argmax(axis=0))

    def evaluate(self, thresholds: np.ndarray) -> tuple[int, float, np.ndarray]:
        """(rows lost, cost per row, exit stage per row) for thresholds of stages 0..n-2."""
        exit_stage = self.exit_stages(thresholds)
        lost = int(self.loss[exit_stage, np.arange(exit_stage.size)].sum())
        return lost, float(np.cumsum(self.cost)[exit_stage].mean()), exit_stage

    def correct_rows(self, exit_stage: np.ndarray) -> int:
        return int(self.correct[exit_stage, np.arange(exit_stage.size)].sum())

    def sweep(self, thresholds: np.ndarray, k: int, values: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
        """(rows lost, cost per row) for each value of stage k's threshold, the others
        fixed: rows that exit before k are unaffected; the rest exit at k if they pass,
        else where they would exit without stage k."""
        rows = np.arange(self.conf.shape[1])
        cumcost = np.cumsum(self.cost)
        without = thresholds.copy()
        without[k] = NEVER
        exit_without = self.exit_stages(without)
        before = exit_without < k
        fixed_lost = int(self.loss[exit_without[before], rows[before]].sum())
        fixed_cost = float(cumcost[exit_without[before]].sum())
        rest = rows[~before]
        passes = self.conf[k, rest][None, :] >= values[:, None]  # [values, rest]
        lost_here = self.loss[k, rest]
        lost_later = self.loss[exit_without[rest], rest]
        lost = fixed_lost + np.where(passes, lost_here, lost_later).sum(axis=1)
        cost = fixed_cost + np.where(passes, cumcost[k], cumcost[exit_without[rest]]).sum(axis=1)
        return lost, cost / rows.size


def _order_data(spec: EnsembleSpec, members: Sequence[str], logits: Mapping[str, np.ndarray],
                labels: np.ndarray, costs: Mapping[str, float], kind: Confidence,
                cache: dict[tuple[frozenset[str], str], tuple[np.ndarray, np.ndarray]]) -> _Order:
    conf, correct = [], []
    for k in range(1, len(members) + 1):
        key = (frozenset(members[:k]), kind)
        if key not in cache:
            probs, _ = combine_members(spec, logits, members[:k])
            cache[key] = (confidence(probs, kind), probs.argmax(axis=-1) == labels)
        conf.append(cache[key][0])
        correct.append(cache[key][1])
    correct_arr = np.array(correct)
    return _Order(list(members), np.array(conf), correct_arr,
                  np.array([costs[m] for m in members], dtype=np.float64),
                  correct_arr[-1][None, :] & ~correct_arr)


def _descend(order: _Order, allowed_losses: int) -> tuple[np.ndarray, float]:
    stages = len(order.members)
    thresholds = np.full(stages - 1, NEVER)
    _, best_cost, _ = order.evaluate(thresholds)
    grids = [np.unique(np.r_[np.quantile(order.conf[k], np.linspace(0.0, 1.0, GRID)), NEVER])
             for k in range(stages - 1)]
    while True:
        move: tuple[int, float, float] | None = None
        for k in range(stages - 1):
            lost, cost = order.sweep(thresholds, k, grids[k])
            allowed = (lost <= allowed_losses) & (cost < best_cost - 1e-15)
            if allowed.any():
                j = int(np.argmin(np.where(allowed, cost, np.inf)))
                if move is None or cost[j] < move[2]:
                    move = (k, float(grids[k][j]), float(cost[j]))
        if move is None:
            return thresholds, best_cost
        thresholds[move[0]] = move[1]
        best_cost = move[2]


def _merge_never(members: Sequence[str], thresholds: Sequence[float]) -> tuple[Stage, ...]:
    stages: list[Stage] = []
    pending: list[str] = []
    for i, m in enumerate(members):
        pending.append(m)
        threshold = thresholds[i] if i < len(thresholds) else NEVER
        if threshold < NEVER or i == len(members) - 1:
            stages.append(Stage(tuple(pending), float(threshold)))
            pending = []
    return tuple(stages)


def calibrate(spec: EnsembleSpec, logits: Mapping[str, np.ndarray], labels: np.ndarray,
              member_cost_s: Mapping[str, float], max_accuracy_drop: float = 0.002,
              confidences: Sequence[Confidence] = CONFIDENCES) -> Calibration:
    """The cheapest cascade (expected cost per row) within the accuracy drop."""
    names = [m.name for m in spec.members]
    missing = [n for n in names if n not in logits]
    if missing:
        raise EnserveError(f"calibrate: no logits for member(s) {missing}")
    missing = [n for n in names if n not in member_cost_s]
    if missing:
        raise EnserveError(f"calibrate: no cost for member(s) {missing}")
    labels = np.asarray(labels).reshape(-1)
    rows = labels.shape[0]
    if any(np.asarray(v).shape[0] != rows for v in logits.values()):
        raise EnserveError(f"calibrate: {rows} labels but logits of another row count")
    if not 0 <= max_accuracy_drop < 1:
        raise EnserveError(f"calibrate: max accuracy drop {max_accuracy_drop} is not in [0, 1)")
    full_probs, _ = combine_members(spec, logits)
    full_correct = int((full_probs.argmax(axis=-1) == labels).sum())
    allowed_losses = math.floor(max_accuracy_drop * rows + 1e-9)
    orders: list[tuple[str, ...]] = (
        list(itertools.permutations(names)) if len(names) <= MAX_PERMUTED
        else [tuple(sorted(names, key=lambda n: member_cost_s[n]))])
    full_cost = float(sum(member_cost_s[n] for n in names))
    best: tuple[float, _Order, np.ndarray, Confidence] | None = None
    cache: dict[tuple[frozenset[str], str], tuple[np.ndarray, np.ndarray]] = {}
    for kind in confidences:
        for members in orders:
            order = _order_data(spec, members, logits, labels, member_cost_s, kind, cache)
            thresholds, cost = _descend(order, allowed_losses)
            if best is None or cost < best[0] - 1e-15:
                best = (cost, order, thresholds, kind)
    assert best is not None
    cost, order, thresholds, kind = best
    _, _, exit_stage = order.evaluate(thresholds)
    correct = order.correct_rows(exit_stage)
    stages = _merge_never(order.members, thresholds.tolist())
    reach = {m: float((exit_stage >= j).mean()) for j, m in enumerate(order.members)}
    exit_rates = []
    for stage in stages:
        first = order.members.index(stage.members[0])
        last = first + len(stage.members) - 1
        exit_rates.append(float(((exit_stage >= first) & (exit_stage <= last)).mean()))
    return Calibration(
        cascade=Cascade(stages, kind).validate(spec), rows=rows,
        full_accuracy=full_correct / rows, accuracy=correct / rows,
        full_cost_s=full_cost, cost_s=cost, exit_rates=exit_rates,
        reach={n: reach[n] for n in names}, member_cost_s=dict(member_cost_s),
    )


def costs_from_profile(profile: object, members: Sequence[str]) -> dict[str, float]:
    """Per member, the cheapest profiled compute per row: min over its entries of
    latency x share / batch size (compute-unit-seconds per row)."""
    from enserve.formats.profile import Profile

    assert isinstance(profile, Profile)
    costs: dict[str, float] = {}
    for member in members:
        entries = profile.entries_for(member)
        if not entries:
            raise EnserveError(f"calibrate: the profile has no entries for member '{member}'")
        costs[member] = min(e.latency_s * e.share / e.batch_size for e in entries)
    return costs
