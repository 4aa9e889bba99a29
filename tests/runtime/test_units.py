"""Pure parts of the runtime: chunking, gathering, placement, shared-memory arenas."""

from __future__ import annotations

import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest

from enserve.errors import OverloadedError, PlanError
from enserve.formats.plan import Plan
from enserve.runtime.batcher import (
    Gatherer,
    PendingRequest,
    RequestQueue,
    chunk_rows,
    may_launch_alone,
)
from enserve.runtime.placement import WorkerConfig, balance_cores, configs_from_plan
from enserve.runtime.shm import Arena, ArrayField, leaked_segments
from tests.helpers.runtime import make_spec


def _req(rows: int) -> PendingRequest:
    return PendingRequest({"x": np.zeros((rows, 1), np.float32)}, rows, Future())


@pytest.mark.parametrize(("rows", "size", "replicas", "expected"), [
    (8, 8, 1, [(0, 8)]),
    (8, 3, 1, [(0, 3), (3, 6), (6, 8)]),
    (8, 8, 2, [(0, 4), (4, 8)]),
    (1, 8, 3, [(0, 1)]),
    (5, 2, 2, [(0, 2), (2, 4), (4, 5)]),
])
def test_chunk_rows_covers_batch_in_planned_sizes(rows, size, replicas, expected):
    chunks = chunk_rows(rows, size, replicas)
    assert chunks == expected
    assert all(b - a <= size for a, b in chunks)


def test_full_queue_rejects():
    q = RequestQueue(2)
    q.put(_req(1))
    q.put(_req(1))
    with pytest.raises(OverloadedError, match="overloaded"):
        q.put(_req(1))


def test_gatherer_fills_to_max_rows_and_carries_the_overflow():
    q = RequestQueue(10)
    for rows in (2, 3, 4, 1):
        q.put(_req(rows))
    g = Gatherer(q, max_rows=6, max_delay_s=0.0, busy=lambda: False)
    first = g.first()
    assert first is not None
    assert [r.rows for r in g.fill([first])] == [2, 3]
    second = g.first()
    assert second is not None and second.rows == 4
    assert [r.rows for r in g.fill([second])] == [4, 1]


def test_gatherer_waits_only_when_busy():
    q = RequestQueue(10)
    q.put(_req(1))
    idle = Gatherer(q, max_rows=8, max_delay_s=10.0, busy=lambda: False)
    first = idle.first()
    assert first is not None
    t = time.perf_counter()
    idle.fill([first])
    assert time.perf_counter() - t < 5.0  # did not wait out the 10 s delay
    q.put(_req(1))
    busy = Gatherer(q, max_rows=8, max_delay_s=0.2, busy=lambda: True)
    first = busy.first()
    assert first is not None
    t = time.perf_counter()
    busy.fill([first])
    assert time.perf_counter() - t >= 0.1


@pytest.mark.parametrize(("running", "inflight", "queued", "last", "expected"), [
    (True, 0, 0, 0, True),  # idle, nothing answered yet
    (True, 0, 0, 1, True),  # one caller at a time
    (True, 0, 0, 2, False),  # the last batch answered a burst: its next requests gather
    (True, 1, 0, 1, False),  # a batch in flight
    (True, 0, 1, 1, False),  # requests queued ahead
    (False, 0, 0, 0, False),  # not running
])
def test_a_lone_request_launches_alone_only_on_an_idle_engine(running, inflight, queued,
                                                              last, expected):
    assert may_launch_alone(running, inflight, queued, last) is expected


def test_balance_cores_is_lpt():
    cfgs = [WorkerConfig(i, f"m{i}") for i in range(4)]
    out = balance_cores(cfgs, {0: 5.0, 1: 3.0, 2: 2.0, 3: 1.0}, cores=[0, 1])
    load = {0: 0.0, 1: 0.0}
    for cfg, cost in zip(out, (5.0, 3.0, 2.0, 1.0), strict=True):
        assert cfg.cores is not None and len(cfg.cores) == 1
        load[cfg.cores[0]] += cost
    assert sorted(load.values()) == [5.0, 6.0]
    wide = balance_cores([WorkerConfig(0, "a", share=2)], {}, cores=[0, 1])
    assert wide[0].cores == (0, 1)


def test_configs_from_plan_checks_members(tmp_path: Path):
    spec = make_spec(tmp_path, ["net_a", "net_b"])
    instances: list[dict[str, object]] = [{"member": "net_a_0", "variant": None, "device": "cpu",
                                           "batch_size": 4, "share": 1, "memory_bytes": 0}]
    with pytest.raises(PlanError, match="net_b_1"):
        configs_from_plan(spec, Plan.of(instances))
    instances.append({"member": "nope", "batch_size": 1, "share": 1})
    with pytest.raises(PlanError, match="nope"):
        configs_from_plan(spec, Plan.of(instances))


def test_arena_write_once_read_elsewhere():
    field = ArrayField("x", "<f4", (4, 3))
    owner = Arena.create((field,), slots=2)
    try:
        other = Arena.attach(owner.layout)
        owner.view("x", 1)[...] = np.arange(12, dtype=np.float32).reshape(4, 3)
        np.testing.assert_array_equal(other.view("x", 1), np.arange(12).reshape(4, 3))
        assert not other.view("x", 0).any()
        other.close()
    finally:
        owner.unlink()
        owner.close()
    assert owner.layout.segment not in leaked_segments()


def test_kernel_bound_charges_busy_time_to_pinned_cores():
    from enserve.runtime.stats import kernel_bound_throughput

    def inst(member, util, rows, cores):
        return {"member": member, "utilization": util, "rows": rows, "cores": cores,
                "device": "cpu"}

    # 10 s run, 100 samples: a busy 6 s on core 0, b 3 s + c 1 s on core 1
    stats = {"uptime_s": 10.0, "instances": [inst("a", 0.6, 100, [0]), inst("b", 0.3, 100, [1]),
                                             inst("c", 0.1, 100, [1])]}
    assert kernel_bound_throughput(stats, 2) == pytest.approx(100 / 6.0)
    for i in stats["instances"]:
        i["cores"] = None
    assert kernel_bound_throughput(stats, 2) == pytest.approx(2 * 100 / 10.0)
