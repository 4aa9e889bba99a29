"""A running combination answered part-way equals the combiner over the members added."""

from __future__ import annotations

import numpy as np
import pytest

from enserve.combine import COMBINERS, RunningCombination, agreement, combine


@pytest.mark.parametrize("rule", sorted(COMBINERS))
def test_partial_equals_combine_over_the_added_members(rule: str) -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 6, 5)).astype(np.float32) * 3
    weights = [1.0, 2.0, 0.5, 1.5]
    running = RunningCombination(rule, weights, 4)
    for i in (2, 0):
        running.add(i, logits[i])
    probs, agree = running.partial()
    subset = logits[[0, 2]]
    expected = combine(subset, rule, [weights[0], weights[2]])
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(agree, agreement(subset, expected))
    for i in (1, 3):
        running.add(i, logits[i])
    np.testing.assert_allclose(running.partial()[0], running.result()[0], rtol=1e-6)


def test_partial_needs_a_member() -> None:
    with pytest.raises(ValueError, match="no member"):
        RunningCombination("mean_prob", None, 2).partial()
