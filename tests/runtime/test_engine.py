"""The engine against the reference executor, and under faults and load."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from enserve.combine import COMBINERS
from enserve.errors import InferenceError, ModelLoadError, OverloadedError
from enserve.formats.plan import Plan
from enserve.reference import ReferenceExecutor
from enserve.runtime import Engine
from tests.helpers.runtime import make_spec, worker_children

RNG = np.random.default_rng(7)


def _x(rows: int) -> np.ndarray:
    return RNG.standard_normal((rows, 3, 2, 2)).astype(np.float32)


def _assert_same(result, expected) -> None:
    np.testing.assert_allclose(result.probabilities, expected.probabilities, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(result.agreement, expected.agreement)
    for name, logits in expected.member_logits.items():
        np.testing.assert_allclose(result.member_logits[name], logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("combiner", sorted(COMBINERS))
def test_every_combiner_matches_reference(tmp_path: Path, combiner: str):
    spec = make_spec(tmp_path, ["net_a", "net_b", "net_c"], combiner, weights=[1.0, 2.0, 0.5])
    reference = ReferenceExecutor(spec)
    requests = [_x(n) for n in (1, 3, 2, 5)]
    with Engine(spec, max_batch=8) as engine:
        futures = [engine.submit(x) for x in requests]  # concurrent: they get batched
        for x, f in zip(requests, futures, strict=True):
            _assert_same(f.result(timeout=30), reference.infer(x))


PLANS = {
    "replicas": [("net_a_0", 2, 1), ("net_a_0", 2, 1), ("net_b_1", 3, 1), ("net_c_2", 8, 1)],
    "batch-1": [("net_a_0", 1, 1), ("net_b_1", 1, 1), ("net_c_2", 1, 2)],
    "three-of-one": [("net_a_0", 4, 1)] * 3 + [("net_b_1", 4, 2), ("net_c_2", 4, 1)],
}


@pytest.mark.parametrize("name", sorted(PLANS))
def test_plans_match_reference_and_respect_batch_sizes(tmp_path: Path, name: str):
    spec = make_spec(tmp_path, ["net_a", "net_b", "net_c"], "weighted_mean_prob",
                     weights=[3.0, 1.0, 1.0])
    plan = Plan.of([{"member": m, "variant": None, "device": "cpu", "batch_size": b,
                     "share": s, "memory_bytes": 0} for m, b, s in PLANS[name]])
    reference = ReferenceExecutor(spec)
    requests = [_x(n) for n in (4, 1, 7, 2, 3, 6)]
    with Engine(spec, plan, max_batch=16) as engine:
        futures = [engine.submit(x) for x in requests]
        for x, f in zip(requests, futures, strict=True):
            _assert_same(f.result(timeout=30), reference.infer(x))
        stats = engine.stats()
    for inst, (_, batch, _) in zip(stats["instances"], PLANS[name], strict=True):
        assert inst["rows"] > 0 or name == "three-of-one"
        assert inst["mean_chunk_rows"] <= batch
    served = sum(i["rows"] for i in stats["instances"] if i["member"] == "net_a_0")
    assert served == sum(len(x) for x in requests)
    if name != "batch-1":
        assert sum(1 for i in stats["instances"]
                   if i["member"] == "net_a_0" and i["rows"] > 0) >= 2  # replicas share work


def test_async_infer_batches_concurrent_requests(tmp_path: Path):
    spec = make_spec(tmp_path, ["net_a", "controlled"])
    reference = ReferenceExecutor(spec)
    (tmp_path / "slow").write_text("0.05")
    requests = [_x(1) for _ in range(12)]

    async def run(engine: Engine):
        return await asyncio.gather(*(engine.infer(x) for x in requests))

    with Engine(spec, max_batch=8, pin=False) as engine:  # OS placement, no core locks
        assert all(c.cores is None for c in engine.configs)
        results = asyncio.run(run(engine))
        stats = engine.stats()
    for x, r in zip(requests, results, strict=True):
        _assert_same(r, reference.infer(x))
    assert stats["batches"] < len(requests)  # requests were gathered into shared batches
    assert stats["mean_batch_rows"] > 1


def test_bad_input_is_rejected_and_engine_keeps_serving(tmp_path: Path):
    spec = make_spec(tmp_path, ["net_a", "net_b"])
    with Engine(spec, max_batch=4) as engine:
        with pytest.raises(InferenceError, match="axis"):
            engine.infer_sync(np.zeros((1, 3, 3, 2), np.float32))
        with pytest.raises(InferenceError, match="exceeds"):
            engine.infer_sync(_x(5))
        with pytest.raises(InferenceError, match="unknown output"):
            engine.infer_sync(_x(1), outputs=["nope"])
        assert engine.infer_sync(_x(2)).probabilities.shape == (2, 5)


def test_overload_rejects_with_clear_error(tmp_path: Path):
    spec = make_spec(tmp_path, ["controlled"])
    with Engine(spec, max_batch=1, max_queue=2, inflight_batches=1) as engine:
        (tmp_path / "slow").write_text("0.3")
        accepted, rejected = [], 0
        for _ in range(8):
            try:
                accepted.append(engine.submit(_x(1)))
            except OverloadedError as exc:
                assert "overloaded" in str(exc)
                rejected += 1
        assert rejected >= 4
        (tmp_path / "slow").unlink()
        for f in accepted:
            assert f.result(timeout=30).probabilities.shape == (1, 5)
        assert engine.stats()["requests"]["rejected"] == rejected


def test_killed_worker_is_restarted_and_its_work_retried(tmp_path: Path):
    spec = make_spec(tmp_path, ["net_a", "controlled"])
    reference = ReferenceExecutor(spec)
    with Engine(spec, max_batch=4) as engine:
        (tmp_path / "slow").write_text("1.0")
        x = _x(2)
        future = engine.submit(x)
        time.sleep(0.3)  # the controlled member is now inside its forward
        victim = engine.worker_pids()["controlled_1#1"]
        os.kill(victim, signal.SIGKILL)
        (tmp_path / "slow").unlink()
        _assert_same(future.result(timeout=60), reference.infer(x))
        stats = engine.stats()
        assert stats["restarts"] == 1
        assert engine.worker_pids()["controlled_1#1"] != victim
        _assert_same(engine.infer_sync(x, timeout=30), reference.infer(x))


def test_hung_worker_is_killed_restarted_and_its_work_retried(tmp_path: Path):
    spec = make_spec(tmp_path, ["net_a", "controlled"])
    reference = ReferenceExecutor(spec)
    with Engine(spec, max_batch=4, task_timeout_s=1.0) as engine:
        victim = engine.worker_pids()["controlled_1#1"]
        (tmp_path / "slow").write_text("60")
        x = _x(2)
        future = engine.submit(x)
        time.sleep(0.3)  # the controlled member is now asleep inside its forward
        (tmp_path / "slow").unlink()  # the retry will not sleep
        # answered by the retry: waiting out the 60 s the hung forward wanted would time out
        _assert_same(future.result(timeout=45), reference.infer(x))
        assert engine.stats()["restarts"] == 1
        assert engine.worker_pids()["controlled_1#1"] != victim


def test_restart_that_hangs_is_killed_and_tried_again(tmp_path: Path):
    spec = make_spec(tmp_path, ["net_a", "controlled"])
    reference = ReferenceExecutor(spec)
    with Engine(spec, max_batch=4, task_timeout_s=1.0, start_timeout_s=8.0) as engine:
        (tmp_path / "slow").write_text("60")  # the forward, and a restart's warm-up, hang
        x = _x(1)
        future = engine.submit(x)
        deadline = time.monotonic() + 30
        while engine.stats()["restarts"] < 2 and time.monotonic() < deadline:
            time.sleep(0.1)  # killed once as hung, then once more in its restart
        (tmp_path / "slow").unlink()
        assert engine.stats()["restarts"] == 2
        _assert_same(future.result(timeout=45), reference.infer(x))


def test_worker_dying_twice_fails_the_request_without_hanging(tmp_path: Path):
    spec = make_spec(tmp_path, ["net_a", "controlled"])
    with Engine(spec, max_batch=4, max_restarts=3) as engine:
        (tmp_path / "crash").write_text("3")  # not 1: a restarted worker warms up on 1 row
        with pytest.raises(InferenceError, match="controlled_1.*retried once"):
            engine.infer_sync(_x(3), timeout=60)  # fails (a hang would be a TimeoutError)
        (tmp_path / "crash").unlink()
        deadline = time.monotonic() + 60
        while engine.stats()["instances"][1]["state"] != "ready" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.infer_sync(_x(1), timeout=30).probabilities.shape == (1, 5)
        assert engine.stats()["restarts"] == 2


def test_stop_drains_and_leaves_no_processes_or_shared_memory(tmp_path: Path):
    spec = make_spec(tmp_path, ["net_a", "controlled"])
    engine = Engine(spec, max_batch=2).start()
    pids = set(engine.worker_pids().values())
    assert {p.pid for p in worker_children()} >= pids
    (tmp_path / "slow").write_text("0.1")
    futures = [engine.submit(_x(1)) for _ in range(6)]
    engine.stop()
    assert all(f.result(timeout=0).probabilities.shape == (1, 5) for f in futures)
    assert not ({p.pid for p in worker_children()} & pids)
    with pytest.raises(InferenceError, match="not accepting"):
        engine.infer_sync(_x(1))
    engine.stop()  # twice is fine


def test_startup_failure_names_the_member_and_cleans_up(tmp_path: Path):
    spec = make_spec(tmp_path, ["net_a", "broken"])
    with pytest.raises(ModelLoadError, match="broken_1.*always fails"):
        Engine(spec).start()
    assert worker_children() == []


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_gpu_instances_match_reference(tmp_path: Path):
    spec = make_spec(tmp_path, ["net_a", "net_b"])
    plan = Plan.of([{"member": m, "variant": "eager", "device": "cuda:0", "batch_size": 4,
                     "share": 50, "memory_bytes": 0} for m in ("net_a_0", "net_b_1")])
    x = _x(3)
    with Engine(spec, plan, max_batch=4) as engine:
        _assert_same(engine.infer_sync(x, timeout=60), ReferenceExecutor(spec).infer(x))


def test_stop_after_drain_timeout_fails_the_rest_and_cleans_up(tmp_path: Path):
    spec = make_spec(tmp_path, ["net_a", "controlled"])
    engine = Engine(spec, max_batch=1, inflight_batches=1, max_restarts=0).start()
    (tmp_path / "slow").write_text("5")
    futures = [engine.submit(_x(1)) for _ in range(3)]
    time.sleep(0.2)
    engine.stop(timeout_s=0.5)
    for f in futures:
        with pytest.raises(InferenceError):
            f.result(timeout=10)
    assert worker_children() == []
