"""Which mixes of member precisions keep the ensemble's answers within tolerance.

Input: each member's logits on the calibration set in fp32 (the reference ensemble) and in
each reduced precision it can run. An *assignment* maps some members to a reduced
precision (the rest stay fp32). It is admitted when the ensemble's top-1 answers under it
agree with the fp32 ensemble's on at least `min_top1_agreement` of the rows and, with
labels and `max_accuracy_drop`, its accuracy is at most that much below fp32's.

Every assignment is evaluated when there are at most `MAX_COMBINATIONS`; beyond that, each
member alone, then members added greedily (smallest loss first) while admitted. The
combination rules are monotone transforms of a (weighted) sum or max of per-member
scores, so each member's scores are computed once and an assignment costs one sum.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from enserve.combine import log_softmax, softmax

MAX_COMBINATIONS = 4096


@dataclass(frozen=True)
class Tolerance:
    min_top1_agreement: float = 0.99
    max_accuracy_drop: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"min_top1_agreement": self.min_top1_agreement,
                "max_accuracy_drop": self.max_accuracy_drop}


def _member_scores(rule: str, logits: np.ndarray) -> np.ndarray:
    """What the rule sums (or maxes) over members, for one member's logits [N, C]."""
    x = logits.astype(np.float64)
    if rule in ("mean_prob", "weighted_mean_prob", "max_prob"):
        return softmax(x)
    if rule == "mean_logits":
        return x
    if rule == "geometric_mean":
        return log_softmax(x)
    if rule == "majority_vote":
        votes = np.zeros_like(x)
        votes[np.arange(len(x)), x.argmax(axis=1)] = 1.0
        return votes
    raise ValueError(f"unknown combiner '{rule}'")


def _weights(rule: str, weights: Sequence[float] | None, count: int) -> np.ndarray:
    if rule in ("mean_prob", "max_prob") or weights is None:
        return np.full(count, 1.0 / count)
    w = np.asarray(weights, dtype=np.float64)
    return w / w.sum()


def ensemble_top1(rule: str, weights: Sequence[float] | None,
                  logits: Sequence[np.ndarray]) -> np.ndarray:
    """The ensemble's top-1 class per row (ties: lowest index, as `combine`)."""
    w = _weights(rule, weights, len(logits))
    scores = [_member_scores(rule, x) for x in logits]
    return _top1(rule, w, scores)


def _top1(rule: str, w: np.ndarray, scores: Sequence[np.ndarray]) -> np.ndarray:
    if rule == "max_prob":
        total = np.max(np.stack(scores), axis=0)
    else:
        total = sum(wi * s for wi, s in zip(w, scores, strict=True))
    return np.asarray(total).argmax(axis=1)


def assess(
    members: Sequence[str],
    rule: str,
    weights: Sequence[float] | None,
    reference: Mapping[str, np.ndarray],
    reduced: Mapping[str, Mapping[str, np.ndarray]],
    tolerance: Tolerance,
    labels: np.ndarray | None = None,
    max_combinations: int = MAX_COMBINATIONS,
) -> dict[str, Any]:
    """The profile's `accuracy` section: per-member effects and every assessed assignment.

    `reference[m]`: member m's fp32 logits [N, C]; `reduced[m][precision]`: its logits in
    that precision. Assignments list only members that are not fp32.
    """
    w = _weights(rule, weights, len(members))
    ref_scores = {m: _member_scores(rule, reference[m]) for m in members}
    red_scores = {m: {p: _member_scores(rule, x) for p, x in reduced.get(m, {}).items()}
                  for m in members}
    fp32_top1 = _top1(rule, w, [ref_scores[m] for m in members])
    fp32_acc = float(np.mean(fp32_top1 == labels)) if labels is not None else None

    def evaluate(assignment: Mapping[str, str]) -> dict[str, Any]:
        scores = [red_scores[m][assignment[m]] if m in assignment else ref_scores[m]
                  for m in members]
        top1 = _top1(rule, w, scores)
        agreement = float(np.mean(top1 == fp32_top1))
        row: dict[str, Any] = {"precisions": dict(assignment), "top1_agreement": agreement}
        admitted = agreement >= tolerance.min_top1_agreement
        if labels is not None and fp32_acc is not None:
            accuracy = float(np.mean(top1 == labels))
            row["accuracy"] = accuracy
            row["accuracy_drop"] = fp32_acc - accuracy
            if tolerance.max_accuracy_drop is not None:
                admitted &= fp32_acc - accuracy <= tolerance.max_accuracy_drop + 1e-12
        row["admitted"] = bool(admitted)
        return row

    per_member = {}
    for m in members:
        ref_top1 = reference[m].argmax(axis=1)
        ref_prob = softmax(reference[m].astype(np.float64))
        per_member[m] = {
            p: {"top1_agreement": float(np.mean(x.argmax(axis=1) == ref_top1)),
                "max_abs_prob_diff": float(np.max(np.abs(softmax(x.astype(np.float64))
                                                          - ref_prob)))}
            for p, x in reduced.get(m, {}).items()}

    choices = [[None, *red_scores[m]] for m in members]
    total = int(np.prod([len(c) for c in choices]))
    rows: list[dict[str, Any]] = []
    if total <= max_combinations:
        search = f"every assignment ({total})"
        for combo in itertools.product(*choices):
            rows.append(evaluate({m: p for m, p in zip(members, combo, strict=True) if p}))
    else:
        search = f"greedy ({total} assignments exceed {max_combinations})"
        rows.append(evaluate({}))
        singles = [evaluate({m: p}) for m in members for p in red_scores[m]]
        rows += singles
        current: dict[str, str] = {}
        for row in sorted(singles, key=lambda r: -r["top1_agreement"]):
            ((m, p),) = row["precisions"].items()
            if not row["admitted"] or m in current:
                continue
            trial = evaluate({**current, m: p})
            if trial["admitted"]:
                if len(trial["precisions"]) > 1:
                    rows.append(trial)
                current = dict(trial["precisions"])
    return {
        "rows": len(fp32_top1),
        "labels": labels is not None,
        "tolerance": tolerance.to_dict(),
        "fp32_accuracy": fp32_acc,
        "members": per_member,
        "search": search,
        "assignments": rows,
    }


def admitted_assignments(section: Mapping[str, Any] | None) -> list[dict[str, str]]:
    """Admitted assignments of a profile's `accuracy` section (all-fp32 always included)."""
    found: list[dict[str, str]] = [{}]
    for row in (section or {}).get("assignments", []):
        if row.get("admitted") and row.get("precisions"):
            found.append(dict(row["precisions"]))
    return found


def lookup(section: Mapping[str, Any] | None, assignment: Mapping[str, str]
           ) -> dict[str, Any] | None:
    """The assessed row for exactly `assignment` (None if it was not assessed)."""
    if not assignment:
        return {"precisions": {}, "top1_agreement": 1.0, "admitted": True,
                **({"accuracy": section.get("fp32_accuracy"), "accuracy_drop": 0.0}
                   if section and section.get("fp32_accuracy") is not None else {})}
    for row in (section or {}).get("assignments", []):
        if row.get("precisions") == dict(assignment):
            return dict(row)
    return None
