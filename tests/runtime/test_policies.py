"""The engine with member subsets, cascades and deadline answers, against the reference."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from enserve.errors import EnserveError, InferenceError
from enserve.members.slowed import SLOW_ENV
from enserve.policies.cascade import NEVER, Cascade, Stage, combine_members, run_cascade
from enserve.reference import ReferenceExecutor
from enserve.runtime import Engine
from tests.helpers.runtime import make_spec

RNG = np.random.default_rng(11)


def _x(rows: int) -> np.ndarray:
    return RNG.standard_normal((rows, 3, 2, 2)).astype(np.float32)


def test_member_subsets_are_batched_apart_and_match_the_reference(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, ["net_a", "net_b", "net_c"], "weighted_mean_prob",
                     weights=[1.0, 2.0, 0.5])
    reference = ReferenceExecutor(spec)
    subsets = [("net_a_0",), ("net_b_1", "net_c_2"), None, ("net_a_0", "net_c_2")] * 3
    requests = [_x(n) for n in (1, 2, 3) * 4]
    with Engine(spec, max_batch=16) as engine:
        futures = [engine.submit(x, members=s) for x, s in zip(requests, subsets, strict=True)]
        for x, s, f in zip(requests, subsets, futures, strict=True):
            result = f.result(timeout=30)
            logits = reference.member_logits({"x": x})
            expected, agree = combine_members(spec, logits, s)
            np.testing.assert_allclose(result.probabilities, expected, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(result.agreement, agree)
            assert set(result.member_logits) == set(s or logits)
            assert result.members == (s if s else None)


def test_unknown_member_is_refused(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, ["net_a", "net_b"])
    with Engine(spec, max_batch=4) as engine, pytest.raises(InferenceError, match="unknown"):
        engine.submit(_x(1), members=("net_a_0", "zz"))


def test_cascade_on_the_engine_equals_the_reference(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, ["net_a", "net_b", "net_c"])
    reference = ReferenceExecutor(spec)
    x = _x(12)

    def through_engine(engine: Engine):
        def run_stage(members, inputs):
            return engine.submit(inputs, members=tuple(members)).result(timeout=30).member_logits
        return run_stage

    never = Cascade((Stage(("net_b_1",), NEVER), Stage(("net_a_0", "net_c_2"))))
    median = Cascade((Stage(("net_b_1",), 0.35), Stage(("net_a_0", "net_c_2"))))
    with Engine(spec, max_batch=16) as engine:
        full = run_cascade(spec, never, {"x": x}, through_engine(engine))
        np.testing.assert_allclose(full.result.probabilities, reference.infer(x).probabilities,
                                   rtol=1e-5, atol=1e-6)
        early = run_cascade(spec, median, {"x": x}, through_engine(engine))
    expected = run_cascade(spec, median, {"x": x},
                           lambda ms, inp: {m: reference.members[m](inp["x"]) for m in ms})
    np.testing.assert_allclose(early.result.probabilities, expected.result.probabilities,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(early.exit_stage, expected.exit_stage)


def test_deadline_answer_without_the_slowed_member(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SLOW_ENV, "net_c_2=1.5")
    spec = make_spec(tmp_path, ["net_a", "net_b", "net_c"])
    reference = ReferenceExecutor(spec)
    with Engine(spec, max_batch=8, inflight_batches=4) as engine:
        x = _x(3)
        started = time.monotonic()
        result = engine.submit(x, answer_by=time.monotonic() + 0.5, min_members=2).result(
            timeout=30)
        assert time.monotonic() - started < 1.5  # before the slowed member could answer
        assert result.members == ("net_a_0", "net_b_1")
        expected, _ = combine_members(spec, reference.member_logits({"x": x}),
                                      ["net_a_0", "net_b_1"])
        np.testing.assert_allclose(result.probabilities, expected, rtol=1e-5, atol=1e-6)
        # too few members by the deadline: a timeout error
        late = engine.submit(_x(1), answer_by=time.monotonic() + 0.3, min_members=3)
        with pytest.raises(EnserveError, match="min_members"):
            late.result(timeout=30)
        # without a deadline every member answers (the slowed one too), as the reference
        whole = engine.submit(x).result(timeout=30)
        np.testing.assert_allclose(whole.probabilities, reference.infer(x).probabilities,
                                   rtol=1e-5, atol=1e-6)
        stats = engine.stats()
    assert stats["partial_answers"] >= 1 and stats["deadline_failures"] >= 1


def test_late_work_is_dropped_not_queued_behind_the_straggler(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests one after another, each answered at its deadline while the slowed member is
    still on the first one: the later requests' work for it waits in the engine and is
    dropped at their deadlines (freeing their slots), so none of them waits for it."""
    monkeypatch.setenv(SLOW_ENV, "net_c_2=3.0")
    spec = make_spec(tmp_path, ["net_a", "net_b", "net_c"])
    with Engine(spec, max_batch=8, inflight_batches=2) as engine:
        for _ in range(4):  # two slots: one held by the straggler's running chunk
            result = engine.submit(_x(2), answer_by=time.monotonic() + 0.4,
                                   min_members=2).result(timeout=30)
            assert result.members == ("net_a_0", "net_b_1")
        stats = engine.stats()
    assert stats["partial_answers"] == 4 and stats["deadline_failures"] == 0
    assert stats["skipped_tasks"].get("net_c_2", 0) >= 3  # never sent to the busy worker
