"""Combination rules: pure functions from member logits to ensemble probabilities.

Every rule takes `logits` of shape `[members, batch, classes]` and per-member weights,
and returns probabilities `[batch, classes]` whose rows sum to 1.

Tie rule (majority_vote, and top-k everywhere): among classes with equal score the
lowest class index ranks first, as `numpy.argmax` does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from enserve.spec import CombinerName


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def log_softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _normalized(weights: Sequence[float] | None, members: int) -> np.ndarray:
    w = np.ones(members, dtype=np.float64) if weights is None else np.asarray(weights, np.float64)
    if w.shape != (members,):
        raise ValueError(f"{w.size} weights for {members} members")
    if np.any(w <= 0):
        raise ValueError("weights must be positive")
    return w / w.sum()


def mean_prob(logits: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
    """Unweighted mean of member probabilities (weights are ignored)."""
    return softmax(logits.astype(np.float64)).mean(axis=0)


def weighted_mean_prob(logits: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
    w = _normalized(weights, logits.shape[0])
    return np.tensordot(w, softmax(logits.astype(np.float64)), axes=1)


def mean_logits(logits: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
    """Softmax of the (weighted) mean of logits."""
    w = _normalized(weights, logits.shape[0])
    return softmax(np.tensordot(w, logits.astype(np.float64), axes=1))


def majority_vote(logits: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
    """Share of (weighted) votes per class; each member votes for its argmax."""
    w = _normalized(weights, logits.shape[0])
    members, batch, classes = logits.shape
    votes = np.zeros((batch, classes), dtype=np.float64)
    choice = logits.argmax(axis=2)  # [members, batch]
    for m in range(members):
        np.add.at(votes, (np.arange(batch), choice[m]), w[m])
    return votes


def max_prob(logits: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
    """Per class, the highest member probability, renormalized."""
    best = softmax(logits.astype(np.float64)).max(axis=0)
    return best / best.sum(axis=-1, keepdims=True)


def geometric_mean(logits: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
    """(Weighted) geometric mean of member probabilities, renormalized."""
    w = _normalized(weights, logits.shape[0])
    return softmax(np.tensordot(w, log_softmax(logits.astype(np.float64)), axes=1))


COMBINERS: dict[str, Callable[[np.ndarray, Sequence[float] | None], np.ndarray]] = {
    "mean_prob": mean_prob,
    "weighted_mean_prob": weighted_mean_prob,
    "mean_logits": mean_logits,
    "majority_vote": majority_vote,
    "max_prob": max_prob,
    "geometric_mean": geometric_mean,
}


def combine(
    logits: np.ndarray | Sequence[np.ndarray],
    rule: CombinerName | str = "mean_prob",
    weights: Sequence[float] | None = None,
) -> np.ndarray:
    """Combine `[members, batch, classes]` logits into float32 probabilities `[batch, classes]`."""
    stacked = np.stack(list(logits)) if not isinstance(logits, np.ndarray) else logits
    if stacked.ndim != 3:
        raise ValueError(f"expected logits [members, batch, classes], got shape {stacked.shape}")
    try:
        fn = COMBINERS[rule]
    except KeyError:
        raise ValueError(f"unknown combiner '{rule}' (expected one of {', '.join(COMBINERS)})") from None
    return fn(stacked, weights).astype(np.float32)


def top_k(probabilities: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the k best classes per row; ties rank the lower index first."""
    k = min(k, probabilities.shape[-1])
    order = np.argsort(-probabilities, axis=-1, kind="stable")[..., :k]
    return order.astype(np.int64), np.take_along_axis(probabilities, order, axis=-1)


def agreement(logits: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """How many members' top-1 class equals the ensemble's top-1, per row."""
    ensemble_top = probabilities.argmax(axis=-1)
    return (logits.argmax(axis=-1) == ensemble_top[None, :]).sum(axis=0).astype(np.int32)


class RunningCombination:
    """One batch's combination, built up as members answer (in any order).

    Every rule folds one member at a time: (weighted) sums of probabilities, logits or
    log-probabilities, a running maximum, or vote counts. `result()` equals `combine` on
    all members' logits once every member was added; `member_top1` keeps what `agreement`
    needs, so the members' logits need not be held together.
    """

    def __init__(self, rule: CombinerName | str, weights: Sequence[float] | None,
                 members: int) -> None:
        if rule not in COMBINERS:
            raise ValueError(f"unknown combiner '{rule}' (expected one of {', '.join(COMBINERS)})")
        self.rule = rule
        self.members = members
        self.weights = (np.full(members, 1.0 / members) if rule in ("mean_prob", "max_prob")
                        else _normalized(weights, members))
        self.member_top1: dict[int, np.ndarray] = {}
        self._acc: np.ndarray | None = None

    def add(self, index: int, logits: np.ndarray) -> None:
        """Fold member `index`'s logits `[batch, classes]` into the combination."""
        if index in self.member_top1:
            raise ValueError(f"member {index} was added twice")
        x = logits.astype(np.float64)
        self.member_top1[index] = logits.argmax(axis=-1)
        w = float(self.weights[index])
        if self.rule in ("mean_prob", "weighted_mean_prob"):
            part = w * softmax(x)
        elif self.rule == "mean_logits":
            part = w * x
        elif self.rule == "geometric_mean":
            part = w * log_softmax(x)
        elif self.rule == "majority_vote":
            part = np.zeros_like(x)
            part[np.arange(x.shape[0]), self.member_top1[index]] = w
        else:  # max_prob
            part = softmax(x)
            self._acc = part if self._acc is None else np.maximum(self._acc, part)
            return
        self._acc = part if self._acc is None else self._acc + part

    @property
    def complete(self) -> bool:
        return len(self.member_top1) == self.members

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """Float32 probabilities `[batch, classes]` and the members' agreement `[batch]`."""
        if not self.complete or self._acc is None:
            raise ValueError(f"{len(self.member_top1)} of {self.members} members added")
        return self._finish(self._acc)

    def partial(self) -> tuple[np.ndarray, np.ndarray]:
        """The combination of the members added so far, as if they were the whole ensemble
        (their weights renormalized): equals `combine` on their logits with their weights."""
        if self._acc is None:
            raise ValueError("no member added yet")
        acc = self._acc
        if self.rule != "max_prob":
            acc = acc / float(sum(self.weights[i] for i in self.member_top1))
        return self._finish(acc)

    def _finish(self, acc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.rule in ("mean_logits", "geometric_mean"):
            probs = softmax(acc)
        elif self.rule == "max_prob":
            probs = acc / acc.sum(axis=-1, keepdims=True)
        else:
            probs = acc
        probs32 = probs.astype(np.float32)
        top = probs32.argmax(axis=-1)
        agree = sum((t == top).astype(np.int32) for t in self.member_top1.values())
        return probs32, np.asarray(agree, dtype=np.int32)
