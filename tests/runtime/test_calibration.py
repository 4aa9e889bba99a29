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


def test_remembered_costs_equal_the_timed_ones(tmp_path: Path) -> None:
    """What a second start reads back is what the first one timed, for batches of any
    size (a batch-8 instance was once remembered 8x too cheap: divided by its rows once
    per attempt, so every later start pinned it as if it cost a single row)."""
    from enserve.formats.plan import Plan
    from enserve.runtime.calibration import remembered_costs
    from enserve.runtime.placement import configs_from_plan

    spec = make_spec(tmp_path, ["net_a", "net_b", "net_c"], "mean_prob")
    plan = Plan.of([{"member": m, "variant": None, "device": "cpu", "batch_size": b,
                     "share": 1, "memory_bytes": 0}
                    for m, b in (("net_a_0", 8), ("net_b_1", 1), ("net_c_2", 4))])
    configs = configs_from_plan(spec, plan)
    per_row = {"net_a_0": 0.010, "net_b_1": 0.050, "net_c_2": 0.020}
    attempts = iter([1.5, 1.0, 1.2, 1.0, 1.1, 1.0])  # the second attempt is the fastest

    def time_rows(cfg, rows: int) -> float:  # type: ignore[no-untyped-def]
        return per_row[cfg.member] * rows * next(attempts)

    cache = tmp_path / "cache"
    first, timed = remembered_costs(spec, configs, time_rows, 8, cache)
    again, timed_again = remembered_costs(spec, configs, lambda cfg, rows: None, 8, cache)
    assert (timed, timed_again) == (3, 0)
    assert again == pytest.approx(first)
    assert again == pytest.approx({c.index: per_row[c.member] for c in configs})
