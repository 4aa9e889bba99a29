"""Confidence cascades (after Wang et al., ICLR 2022, "Wisdom of Committees").

Members run in stages, cheapest first. After each stage the answer combined from every
member run so far (the spec's combiner over those members, with their weights) is final
for the rows whose confidence passes the stage's threshold; only the other rows go on to
the next stage, gathered into a smaller batch. The last stage answers every row left.

A cascade whose thresholds never pass (> 1) runs every member on every row and returns
exactly what the reference executor returns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from enserve.combine import agreement, combine
from enserve.errors import SpecError
from enserve.result import EnsembleResult
from enserve.spec import EnsembleSpec

Confidence = Literal["max_prob", "margin"]
CONFIDENCES: tuple[Confidence, ...] = ("max_prob", "margin")
NEVER = 2.0  # a threshold no confidence (at most 1) reaches

# Runs `members` on a (sub)batch of inputs; returns each member's logits [rows, classes].
StageRunner = Callable[[Sequence[str], Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class Stage:
    """Members run together; rows with confidence >= `threshold` exit after them."""

    members: tuple[str, ...]
    threshold: float = NEVER


@dataclass(frozen=True)
class Cascade:
    stages: tuple[Stage, ...]
    confidence: Confidence = "max_prob"

    def validate(self, spec: EnsembleSpec) -> Cascade:
        """Raise SpecError unless every member of `spec` is in exactly one stage."""
        where = f"{spec.name}: cascade"
        if not self.stages:
            raise SpecError(f"{where}: no stages")
        if self.confidence not in CONFIDENCES:
            raise SpecError(f"{where}: confidence '{self.confidence}' is not one of "
                            f"{', '.join(CONFIDENCES)}")
        names = [m for s in self.stages for m in s.members]
        known = [m.name for m in spec.members]
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise SpecError(f"{where}: unknown member(s) {unknown}; the ensemble has {known}")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise SpecError(f"{where}: member(s) {repeated} appear in more than one stage")
        missing = [n for n in known if n not in names]
        if missing:
            raise SpecError(f"{where}: member(s) {missing} are in no stage")
        for i, s in enumerate(self.stages):
            if not s.members:
                raise SpecError(f"{where}: stage {i} has no members")
            if not np.isfinite(s.threshold) or s.threshold < 0:
                raise SpecError(f"{where}: stage {i}: threshold {s.threshold} is not a number >= 0")
        return self

    @property
    def members(self) -> list[str]:
        return [m for s in self.stages for m in s.members]


def confidence(probabilities: np.ndarray, kind: Confidence) -> np.ndarray:
    """Per row: the top probability (`max_prob`) or top minus runner-up (`margin`)."""
    if kind == "max_prob":
        return np.asarray(probabilities.max(axis=-1), dtype=np.float64)
    if probabilities.shape[-1] < 2:
        return np.ones(probabilities.shape[0])
    top2 = np.partition(probabilities, -2, axis=-1)[..., -2:]
    return np.asarray(top2[..., 1] - top2[..., 0], dtype=np.float64)


def combine_members(spec: EnsembleSpec, logits: Mapping[str, np.ndarray],
                    members: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The spec's combination over `members` (default: those in `logits`), taken in spec
    order with their own weights: (probabilities, agreement). Over all members this is
    exactly the reference executor's combination."""
    chosen = set(logits if members is None else members)
    order = [i for i, m in enumerate(spec.members) if m.name in chosen]
    weights = spec.member_weights()
    stacked = np.stack([logits[spec.members[i].name] for i in order])
    probs = combine(stacked, spec.combiner, [weights[i] for i in order])
    return probs, agreement(stacked, probs)


@dataclass
class CascadeResult:
    """The answer, and where each row exited."""

    result: EnsembleResult
    exit_stage: np.ndarray  # per row: index of the stage that answered it
    stage_rows: list[int]  # rows that entered each stage
    member_rows: dict[str, int] = field(default_factory=dict)  # rows each member computed

    def exits(self, stages: int) -> list[int]:
        """Rows answered by each stage."""
        return np.bincount(self.exit_stage, minlength=stages).astype(int).tolist()


class CascadeRun:
    """One batch going through a cascade, a stage at a time, whoever runs the members.

    `next_stage()` gives the next stage's members and the rows still open (a smaller batch
    after every exit); `feed(logits)` takes those members' logits for exactly those rows.
    Once `next_stage()` returns None, `result()` is the answer."""

    def __init__(self, spec: EnsembleSpec, cascade: Cascade,
                 inputs: Mapping[str, np.ndarray]) -> None:
        self.spec = spec
        self.cascade = cascade
        self.inputs = inputs
        self.rows = next(iter(inputs.values())).shape[0]
        self.active = np.arange(self.rows)
        self.stage = 0
        self.seen: dict[str, np.ndarray] = {}
        self.probs: np.ndarray | None = None
        self.agree = np.zeros(self.rows, dtype=np.int32)
        self.exit_stage = np.full(self.rows, -1, dtype=np.int64)
        self.stage_rows: list[int] = []
        self.member_rows: dict[str, int] = {}

    def next_stage(self) -> tuple[Stage, dict[str, np.ndarray]] | None:
        if self.active.size == 0 or self.stage >= len(self.cascade.stages):
            return None
        part = {k: v if self.active.size == self.rows else v[self.active]
                for k, v in self.inputs.items()}
        return self.cascade.stages[self.stage], part

    def feed(self, logits: Mapping[str, np.ndarray]) -> None:
        stage = self.cascade.stages[self.stage]
        active = self.active
        self.stage_rows.append(int(active.size))
        for member in stage.members:
            out = np.asarray(logits[member])
            if member not in self.seen:
                self.seen[member] = np.zeros((self.rows, *out.shape[1:]), dtype=out.dtype)
            self.seen[member][active] = out
            self.member_rows[member] = int(active.size)
        p, a = combine_members(self.spec, {m: v[active] for m, v in self.seen.items()})
        last = self.stage == len(self.cascade.stages) - 1
        done = (np.ones(active.size, dtype=bool) if last
                else confidence(p, self.cascade.confidence) >= stage.threshold)
        if self.probs is None:
            self.probs = np.zeros((self.rows, p.shape[-1]), dtype=p.dtype)
        self.probs[active[done]] = p[done]
        self.agree[active[done]] = a[done]
        self.exit_stage[active[done]] = self.stage
        self.active = active[~done]
        self.stage += 1

    def result(self) -> CascadeResult:
        """The answer; rows that never reached a member get zeros as its logits."""
        if self.probs is None or self.active.size:
            raise ValueError("the cascade has not answered every row yet")
        classes = self.probs.shape[-1]
        logits = {m.name: self.seen.get(m.name, np.zeros((self.rows, classes), np.float32))
                  for m in self.spec.members}
        return CascadeResult(EnsembleResult(self.probs, self.agree, logits), self.exit_stage,
                             self.stage_rows, self.member_rows)


def run_cascade(spec: EnsembleSpec, cascade: Cascade, inputs: Mapping[str, np.ndarray],
                run_stage: StageRunner) -> CascadeResult:
    """Answer a validated batch with `cascade`; `run_stage` computes members' logits."""
    run = CascadeRun(spec, cascade, inputs)
    while (step := run.next_stage()) is not None:
        stage, part = step
        run.feed(run_stage(stage.members, part))
    return run.result()
