"""Cascades on the reference executor: re-batching, exit bookkeeping, equality."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from enserve.errors import SpecError
from enserve.policies.cascade import (
    NEVER,
    Cascade,
    Stage,
    combine_members,
    confidence,
    run_cascade,
)
from enserve.reference import ReferenceExecutor
from tests.helpers.policies import Recorder, make_spec, random_inputs


@pytest.mark.parametrize("combiner", ["mean_prob", "weighted_mean_prob", "mean_logits",
                                      "majority_vote", "max_prob", "geometric_mean"])
def test_never_exiting_cascade_equals_reference(tmp_path: Path, combiner: str) -> None:
    spec = make_spec(tmp_path, combiner, weights=[1.0, 2.0, 0.5, 1.5])
    executor = ReferenceExecutor(spec)
    x = random_inputs(17)
    cascade = Cascade((Stage(("c",)), Stage(("a", "d")), Stage(("b",)))).validate(spec)
    out = run_cascade(spec, cascade, {"x": x}, Recorder(executor))
    ref = executor.infer(x)
    np.testing.assert_array_equal(out.result.probabilities, ref.probabilities)
    np.testing.assert_array_equal(out.result.agreement, ref.agreement)
    for name in "abcd":
        np.testing.assert_array_equal(out.result.member_logits[name], ref.member_logits[name])
    assert out.exits(3) == [0, 0, 17]
    assert out.stage_rows == [17, 17, 17]


def test_confident_rows_exit_and_the_rest_is_rebatched(quad, executor) -> None:
    x = random_inputs(64, seed=1)
    first = combine_members(quad, {"a": executor.members["a"](x)})[0]
    conf = confidence(first, "max_prob")
    threshold = float(np.median(conf))
    cascade = Cascade((Stage(("a",), threshold), Stage(("b", "c", "d")))).validate(quad)
    recorder = Recorder(executor)
    out = run_cascade(quad, cascade, {"x": x}, recorder)
    exits = conf >= threshold
    # stage 2 saw exactly the rows that did not exit, in order, as one smaller batch
    assert [c[0] for c in recorder.calls] == [("a",), ("b", "c", "d")]
    np.testing.assert_array_equal(recorder.calls[1][1], x[~exits])
    assert out.exits(2) == [int(exits.sum()), int((~exits).sum())]
    assert out.stage_rows == [64, int((~exits).sum())]
    assert out.member_rows == {"a": 64, "b": int((~exits).sum()), "c": int((~exits).sum()),
                               "d": int((~exits).sum())}
    np.testing.assert_array_equal(out.exit_stage, np.where(exits, 0, 1))
    # exited rows carry member a's answer alone, the others the full ensemble's
    ref = executor.infer(x)
    np.testing.assert_allclose(out.result.probabilities[exits], first[exits], rtol=1e-6)
    np.testing.assert_array_equal(out.result.probabilities[~exits], ref.probabilities[~exits])
    assert (out.result.agreement[exits] == 1).all()
    # rows that never reached a member have zero logits for it
    assert (out.result.member_logits["d"][exits] == 0).all()


def test_every_row_exits_early_skips_later_stages(quad, executor) -> None:
    recorder = Recorder(executor)
    cascade = Cascade((Stage(("b",), 0.0), Stage(("a", "c", "d")))).validate(quad)
    out = run_cascade(quad, cascade, {"x": random_inputs(5)}, recorder)
    assert len(recorder.calls) == 1
    assert out.exits(2) == [5, 0]
    assert out.stage_rows == [5]


def test_margin_confidence() -> None:
    probs = np.array([[0.5, 0.3, 0.2], [0.9, 0.05, 0.05]])
    np.testing.assert_allclose(confidence(probs, "margin"), [0.2, 0.85])
    np.testing.assert_allclose(confidence(probs, "max_prob"), [0.5, 0.9])


@pytest.mark.parametrize("stages, message", [
    ((Stage(("a", "b")), Stage(("c",))), "in no stage"),
    ((Stage(("a", "b")), Stage(("c", "d", "a"))), "more than one stage"),
    ((Stage(("a", "b", "c", "d", "zz")),), "unknown member"),
    ((Stage(("a", "b")), Stage(()), Stage(("c", "d"))), "no members"),
    ((Stage(("a", "b"), -1.0), Stage(("c", "d"))), "threshold"),
])
def test_bad_cascades_are_refused(quad, stages, message) -> None:
    with pytest.raises(SpecError, match=message):
        Cascade(stages).validate(quad)


def test_never_constant_is_above_every_confidence() -> None:
    assert NEVER > 1.0
