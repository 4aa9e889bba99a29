"""The engine's seam: typed plans only, the outputs asked for, deadlines, per-member
times, inputs validated once."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from enserve.errors import DeadlineError
from enserve.reference import ReferenceExecutor
from enserve.result import validate_inputs
from enserve.runtime import Engine
from tests.helpers.runtime import make_spec

RNG = np.random.default_rng(5)


def _x(rows: int) -> np.ndarray:
    return RNG.standard_normal((rows, 3, 2, 2)).astype(np.float32)


def test_outputs_pick_the_logits_copied_and_every_member_is_timed(tmp_path: Path):
    spec = make_spec(tmp_path, ["net_a", "net_b"])
    reference = ReferenceExecutor(spec)
    x = _x(3)
    with Engine(spec, max_batch=8) as engine:
        assert engine.output_shape == (-1, 5)
        lean = engine.infer_sync(x, outputs=["probabilities"], timeout=30)
        one = engine.infer_sync(x, outputs=["probabilities", "logits_net_b_1"], timeout=30)
        every = engine.infer_sync(x, timeout=30)
    want = reference.infer(x)
    assert lean.member_logits == {}
    assert set(one.member_logits) == {"net_b_1"}
    np.testing.assert_allclose(one.member_logits["net_b_1"], want.member_logits["net_b_1"],
                               rtol=1e-5, atol=1e-5)
    assert set(every.member_logits) == {"net_a_0", "net_b_1"}
    for result in (lean, one, every):
        np.testing.assert_allclose(result.probabilities, want.probabilities, rtol=1e-5, atol=1e-6)
        assert set(result.member_s) == {"net_a_0", "net_b_1"}
        assert all(s > 0 for s in result.member_s.values())
        assert result.queue_s >= 0


def test_a_request_whose_deadline_passed_is_not_run(tmp_path: Path):
    spec = make_spec(tmp_path, ["net_a"])
    with Engine(spec, max_batch=4) as engine:
        late = engine.submit(_x(1), deadline=time.monotonic() - 1.0)
        with pytest.raises(DeadlineError, match="timed out"):
            late.result(timeout=30)
        on_time = engine.submit(_x(1), deadline=time.monotonic() + 60.0)
        assert on_time.result(timeout=30).probabilities.shape == (1, 5)
        stats = engine.stats()
    assert stats["requests"]["failed"] == 1 and stats["requests"]["completed"] == 1


def test_validated_inputs_are_taken_as_they_are(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    spec = make_spec(tmp_path, ["net_a"])
    checked = validate_inputs(spec, _x(2).astype(np.float64))  # cast once, here
    assert checked.rows == 2 and checked["x"].dtype == np.float32
    with Engine(spec, max_batch=4) as engine:
        import enserve.runtime.engine as engine_module

        def fail(*args: object, **kwargs: object) -> None:
            raise AssertionError("validated twice")

        monkeypatch.setattr(engine_module, "validate_inputs", fail)
        result = engine.infer_sync(checked, timeout=30)
    np.testing.assert_allclose(result.probabilities,
                               ReferenceExecutor(spec).infer(checked["x"]).probabilities,
                               rtol=1e-5, atol=1e-6)


def test_unknown_outputs_are_refused(tmp_path: Path):
    from enserve.errors import InferenceError

    spec = make_spec(tmp_path, ["net_a"])
    with Engine(spec, max_batch=4) as engine, pytest.raises(InferenceError, match="nope"):
        engine.submit(_x(1), outputs=["nope"])
