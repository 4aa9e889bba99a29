"""Ensemble-level admission of precision mixes, on hand-made logits."""

from __future__ import annotations

import numpy as np
import pytest

from enserve.combine import combine
from enserve.precision.admission import (
    Tolerance,
    admitted_assignments,
    assess,
    ensemble_top1,
    lookup,
)

ROWS, CLASSES = 400, 10


def _logits(seed: int, scale: float = 3.0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((ROWS, CLASSES)) * scale


def _noisy(x: np.ndarray, noise: float, seed: int) -> np.ndarray:
    return x + np.random.default_rng(seed).standard_normal(x.shape) * noise


@pytest.mark.parametrize("rule", ["mean_prob", "weighted_mean_prob", "mean_logits",
                                  "majority_vote", "max_prob", "geometric_mean"])
def test_top1_matches_the_combiner(rule: str) -> None:
    logits = [_logits(s) for s in range(3)]
    weights = [1.0, 2.0, 0.5]
    expected = combine(np.stack(logits), rule, weights).argmax(axis=1)
    np.testing.assert_array_equal(ensemble_top1(rule, weights, logits), expected)


def test_a_member_with_large_int8_error_is_refused_and_a_small_one_admitted() -> None:
    members = ["good", "bad", "third"]
    ref = {m: _logits(i) for i, m in enumerate(members)}
    reduced = {"good": {"int8": _noisy(ref["good"], 0.01, 10)},
               "bad": {"int8": _noisy(ref["bad"], 30.0, 11)}}  # int8 destroyed this member
    section = assess(members, "mean_prob", None, ref, reduced, Tolerance(0.99))
    assert section["search"] == "every assignment (4)"
    good = lookup(section, {"good": "int8"})
    bad = lookup(section, {"bad": "int8"})
    assert good is not None and good["admitted"] and good["top1_agreement"] >= 0.99
    assert bad is not None and not bad["admitted"] and bad["top1_agreement"] < 0.99
    assert admitted_assignments(section) == [{}, {"good": "int8"}]
    assert section["members"]["bad"]["int8"]["top1_agreement"] < 0.9


def test_a_tiny_tolerance_refuses_even_a_small_error() -> None:
    members = ["a", "b"]
    ref = {m: _logits(i) for i, m in enumerate(members)}
    reduced = {"a": {"bf16": _noisy(ref["a"], 0.3, 5)}}
    loose = assess(members, "mean_prob", None, ref, reduced, Tolerance(0.9))
    strict = assess(members, "mean_prob", None, ref, reduced, Tolerance(1.0))
    row = lookup(loose, {"a": "bf16"})
    assert row is not None and 0.9 <= row["top1_agreement"] < 1.0 and row["admitted"]
    strict_row = lookup(strict, {"a": "bf16"})
    assert strict_row is not None and not strict_row["admitted"]


def test_mixed_precision_others_absorb_one_members_error() -> None:
    """A low-weight member's error is absorbed by the ensemble; both together are not."""
    members = ["big1", "big2", "small"]
    ref = {"big1": _logits(1, 6.0), "big2": _logits(1, 6.0) + 0.01, "small": _logits(3, 1.0)}
    reduced = {"small": {"int8": _noisy(ref["small"], 5.0, 7)},
               "big1": {"int8": _noisy(ref["big1"], 8.0, 8)}}
    section = assess(members, "weighted_mean_prob", [1.0, 1.0, 0.2], ref, reduced,
                     Tolerance(0.99))
    small = lookup(section, {"small": "int8"})
    assert small is not None and small["admitted"]
    assert section["members"]["small"]["int8"]["top1_agreement"] < 0.9  # bad on its own
    both = lookup(section, {"small": "int8", "big1": "int8"})
    assert both is not None and not both["admitted"]


def test_labels_bound_the_accuracy_drop() -> None:
    members = ["a", "b"]
    labels = np.random.default_rng(0).integers(0, CLASSES, ROWS)
    ref = {m: _logits(i) for i, m in enumerate(members)}
    for m in members:  # make the fp32 ensemble mostly right
        ref[m][np.arange(ROWS), labels] += 20.0
    worse = ref["a"].copy()
    worse[:20, :] = 0.0
    worse[np.arange(20), (labels[:20] + 1) % CLASSES] = 100.0  # 20 rows now wrong
    section = assess(members, "mean_prob", None, ref, {"a": {"int8": worse}},
                     Tolerance(0.9, max_accuracy_drop=0.01), labels)
    row = lookup(section, {"a": "int8"})
    assert section["fp32_accuracy"] == 1.0
    assert row is not None and row["accuracy_drop"] == pytest.approx(20 / ROWS)
    assert row["top1_agreement"] >= 0.9 and not row["admitted"]  # agreement fine, drop not


def test_greedy_search_beyond_the_combination_limit() -> None:
    members = [f"m{i}" for i in range(6)]
    ref = {m: _logits(i) for i, m in enumerate(members)}
    reduced = {m: {"int8": _noisy(ref[m], 0.01, 20 + i), "bf16": _noisy(ref[m], 0.005, 40 + i)}
               for i, m in enumerate(members)}
    section = assess(members, "mean_prob", None, ref, reduced, Tolerance(0.99),
                     max_combinations=50)
    assert section["search"].startswith("greedy")
    widest = max(admitted_assignments(section), key=len)
    assert len(widest) == 6
