"""Combiners against hand-computed results, plus properties over random logits."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from enserve.combine import COMBINERS, agreement, combine, top_k

# Two members, one row, two classes. Member A: logits (0, ln 3) -> probs (1/4, 3/4).
# Member B: logits (0, 0) -> probs (1/2, 1/2).
LOGITS = np.array([[[0.0, math.log(3.0)]], [[0.0, 0.0]]], dtype=np.float32)


def test_mean_prob_by_hand() -> None:
    np.testing.assert_allclose(combine(LOGITS, "mean_prob"), [[3 / 8, 5 / 8]], rtol=1e-6)


def test_weighted_mean_prob_by_hand() -> None:
    # weights 3:1 -> 0.75 * (1/4, 3/4) + 0.25 * (1/2, 1/2) = (5/16, 11/16)
    np.testing.assert_allclose(combine(LOGITS, "weighted_mean_prob", [3, 1]), [[5 / 16, 11 / 16]], rtol=1e-6)


def test_mean_logits_by_hand() -> None:
    # mean logits (0, ln3 / 2) -> softmax = (1, sqrt 3) / (1 + sqrt 3)
    s3 = math.sqrt(3.0)
    np.testing.assert_allclose(combine(LOGITS, "mean_logits"), [[1 / (1 + s3), s3 / (1 + s3)]], rtol=1e-6)


def test_geometric_mean_by_hand() -> None:
    # sqrt(1/4 * 1/2) : sqrt(3/4 * 1/2) = 1 : sqrt 3
    s3 = math.sqrt(3.0)
    np.testing.assert_allclose(combine(LOGITS, "geometric_mean"), [[1 / (1 + s3), s3 / (1 + s3)]], rtol=1e-6)


def test_max_prob_by_hand() -> None:
    # per class max: (1/2, 3/4) -> normalized (2/5, 3/5)
    np.testing.assert_allclose(combine(LOGITS, "max_prob"), [[0.4, 0.6]], rtol=1e-6)


def test_majority_vote_by_hand_and_weighted() -> None:
    logits = np.array([[[1, 0, 0]], [[0, 1, 0]], [[0, 1, 0]]], dtype=np.float32)
    np.testing.assert_allclose(combine(logits, "majority_vote"), [[1 / 3, 2 / 3, 0]], rtol=1e-6)
    np.testing.assert_allclose(combine(logits, "majority_vote", [4, 1, 1]), [[2 / 3, 1 / 3, 0]], rtol=1e-6)


def test_vote_tie_goes_to_the_lowest_class_index() -> None:
    # members vote 2 and 1: a tie; the rule ranks class 1 first
    logits = np.array([[[0, 0, 5]], [[0, 5, 0]]], dtype=np.float32)
    probs = combine(logits, "majority_vote")
    np.testing.assert_allclose(probs, [[0, 0.5, 0.5]])
    indices, _ = top_k(probs, 2)
    assert indices.tolist() == [[1, 2]]
    assert probs.argmax(-1).tolist() == [1]


def test_agreement_counts_members_matching_the_ensemble() -> None:
    logits = np.array([[[1, 0, 0]], [[0, 1, 0]], [[0, 1, 0]]], dtype=np.float32)
    assert agreement(logits, combine(logits, "mean_prob")).tolist() == [2]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown combiner"):
        combine(LOGITS, "median")
    with pytest.raises(ValueError, match="3 weights for 2 members"):
        combine(LOGITS, "weighted_mean_prob", [1, 2, 3])
    with pytest.raises(ValueError, match=r"\[members, batch, classes\]"):
        combine(LOGITS[0], "mean_prob")


logit_stacks = st.integers(1, 5).flatmap(
    lambda m: st.integers(1, 4).flatmap(
        lambda b: st.integers(2, 6).flatmap(
            lambda c: arrays(np.float32, (m, b, c), elements=st.floats(-30, 30, width=32))
        )
    )
)


@settings(max_examples=60, deadline=None)
@given(logit_stacks, st.sampled_from(sorted(COMBINERS)), st.randoms(use_true_random=False))
def test_properties_sum_to_one_and_member_order_does_not_matter(
    logits: np.ndarray, rule: str, rnd: object
) -> None:
    weights = [1.0 + i for i in range(logits.shape[0])]
    probs = combine(logits, rule, weights)
    assert probs.shape == logits.shape[1:]
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-5)
    order = list(range(logits.shape[0]))
    rnd.shuffle(order)  # type: ignore[attr-defined]
    shuffled = combine(logits[order], rule, [weights[i] for i in order])
    np.testing.assert_allclose(shuffled, probs, rtol=1e-5, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 6), st.integers(2, 5))
def test_vote_ties_follow_the_rule(members: int, classes: int) -> None:
    # members vote round-robin over classes; every tie must resolve to the lowest index
    logits = np.zeros((members, 1, classes), dtype=np.float32)
    for m in range(members):
        logits[m, 0, (classes - 1 - m) % classes] = 1.0
    probs = combine(logits, "majority_vote")
    best = probs.max()
    assert int(probs.argmax()) == int(np.flatnonzero(np.isclose(probs[0], best))[0])
    assert int(top_k(probs, 1)[0][0, 0]) == int(probs.argmax())


@settings(max_examples=60, deadline=None)
@given(logit_stacks, st.sampled_from(sorted(COMBINERS)), st.randoms(use_true_random=False))
def test_running_combination_equals_combine_in_any_order(
    logits: np.ndarray, rule: str, rnd: object
) -> None:
    from enserve.combine import RunningCombination

    weights = [1.0 + i for i in range(logits.shape[0])]
    order = list(range(logits.shape[0]))
    rnd.shuffle(order)  # type: ignore[attr-defined]
    running = RunningCombination(rule, weights, logits.shape[0])
    for i in order:
        assert not running.complete
        running.add(i, logits[i])
    probs, agree = running.result()
    expected = combine(logits, rule, weights)
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    top2 = np.sort(expected, axis=-1)[:, -2:] if expected.shape[-1] > 1 else None
    clear = top2[:, 1] - top2[:, 0] > 1e-5 if top2 is not None else np.ones(len(expected), bool)
    # rows whose top-1 is a near-tie may resolve either way after float rounding
    np.testing.assert_array_equal(agree[clear], agreement(logits, expected)[clear])


def test_running_combination_refuses_early_result_and_duplicates() -> None:
    from enserve.combine import RunningCombination

    running = RunningCombination("mean_prob", None, 2)
    running.add(0, LOGITS[0])
    with pytest.raises(ValueError, match="1 of 2 members added"):
        running.result()
    with pytest.raises(ValueError, match="added twice"):
        running.add(0, LOGITS[0])
