"""Placement calibration is remembered: an engine that starts the same instances again
pins them without timing batches, and answers as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import enserve.runtime.engine as engine_module
from enserve.reference import ReferenceExecutor
from enserve.runtime import Engine
from tests.helpers.runtime import make_spec


def test_second_start_pins_from_remembered_timings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_spec(tmp_path, ["net_a", "net_b", "net_c"], "mean_prob")
    timed: list[int] = []
    real = engine_module.remembered_costs

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        costs, n = real(*args, **kwargs)
        timed.append(n)
        return costs, n

    monkeypatch.setattr(engine_module, "remembered_costs", counting)
    monkeypatch.delenv("ENSERVE_RECALIBRATE", raising=False)
    x = np.random.default_rng(1).standard_normal((3, 3, 2, 2)).astype(np.float32)
    expected = ReferenceExecutor(spec).infer(x)
    cache = tmp_path / "cache"
    for _ in range(2):
        with Engine(spec, max_batch=8, cache_dir=cache) as engine:
            got = engine.infer_sync(x, timeout=30)
            pinned = [i["cores"] for i in engine.stats()["instances"]]
        np.testing.assert_allclose(got.probabilities, expected.probabilities, rtol=1e-5, atol=1e-6)
        assert all(pinned)
    assert timed == [3, 0]
    assert len(list((cache / "calibration").glob("*.json"))) == 3

    monkeypatch.setenv("ENSERVE_RECALIBRATE", "1")
    with Engine(spec, max_batch=8, cache_dir=cache):
        pass
    assert timed[-1] == 3
