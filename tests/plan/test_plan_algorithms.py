"""Each algorithm on cases small enough to check by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from enserve.devices import parse_device_decl
from enserve.errors import PlanError
from enserve.formats.profile import Profile
from enserve.plan import ALGORITHMS, Constraints, Plan, evaluate, load_plan, plan, save_plan
from tests.helpers.profiles import GB, cpu, entry, gpu, profile, same_on_devices


def replicas() -> Profile:
    """One member, two 3 GB GPUs: b8 at full share 80/s, at half share 53.3/s (1 GB each)."""
    return profile([gpu(0, 3), gpu(1, 3)], same_on_devices(
        "a", ["cuda:0", "cuda:1"], [(8, 100, 0.1, 1), (8, 50, 0.15, 1)]))


def three_members() -> Profile:
    """Three members on two 8 GB GPUs; b1: 100/s (1 GB), b8: 200/s (2 GB), full share."""
    rows = [(1, 100, 0.01, 1), (8, 100, 0.04, 2)]
    entries = [e for m in ("m0", "m1", "m2") for e in same_on_devices(m, ["cuda:0", "cuda:1"], rows)]
    return profile([gpu(0, 8), gpu(1, 8)], entries)


def two_on_one_gpu() -> Profile:
    """Two members, batch 1, four MPS shares each (ESEN's setting)."""
    rows_a = [(1, 25, 0.04, 1), (1, 50, 0.025, 1), (1, 75, 0.02, 1), (1, 100, 0.018, 1)]
    rows_b = [(1, 25, 0.08, 1), (1, 50, 0.045, 1), (1, 75, 0.03, 1), (1, 100, 0.025, 1)]
    return profile([gpu(0)], same_on_devices("a", ["cuda:0"], rows_a)
                   + same_on_devices("b", ["cuda:0"], rows_b), combine_s=0.001)


def test_greedy_and_exact_replicate_one_member() -> None:
    # per GPU: two half-share instances give 106.7/s (a third only time-shares); two GPUs
    for algorithm in ("greedy", "exact"):
        result = plan(replicas(), algorithm)
        assert result.predicted.throughput == pytest.approx(2 * 8 / 0.15 * 2, rel=1e-6)
    baseline = plan(replicas(), "batch-only")
    assert baseline.predicted.throughput == pytest.approx(80)
    assert [(i.device, i.share) for i in baseline.instances] == [("cuda:0", 100)]


def test_batch_only_round_robin_and_batch_tuning() -> None:
    result = plan(three_members(), "batch-only")
    where = {i.member: i.device for i in result.instances}
    assert where == {"m0": "cuda:0", "m1": "cuda:1", "m2": "cuda:0"}
    assert len(result.instances) == 3
    # m0 and m2 time-share cuda:0 at b8: each sample costs each of them half a GPU-ms ...
    assert result.predicted.throughput == pytest.approx(100)
    batch = {i.member: i.batch_size for i in result.instances}
    assert batch["m0"] == batch["m2"] == 8


def test_sequential_puts_everything_on_one_device() -> None:
    result = plan(three_members(), "sequential")
    assert {i.device for i in result.instances} == {"cuda:0"}
    assert result.predicted.throughput == pytest.approx(200 / 3)


def test_greedy_spreads_work_over_both_gpus() -> None:
    exact = plan(three_members(), "exact").predicted.throughput
    assert exact == pytest.approx(400 / 3)  # 200 GPU-units/s at 2 samples per unit, 3 members
    assert plan(three_members(), "greedy").predicted.throughput == pytest.approx(exact, rel=1e-6)


def test_shares_minimises_the_slowest_member() -> None:
    # partitions: (a 25, b 75) -> 0.04 s; (50, 50) -> 0.045; (75, 25) -> 0.08
    result = plan(two_on_one_gpu(), "shares", objective="latency")
    assert sorted((i.member, i.share) for i in result.instances) == [("a", 25), ("b", 75)]
    assert result.predicted.latency_s == pytest.approx(0.041)
    partitions_only = Constraints(time_sharing=False)
    exact = plan(two_on_one_gpu(), "exact", objective="latency", constraints=partitions_only)
    assert exact.predicted.latency_s == pytest.approx(0.041)
    # with time-sharing allowed, a at 50 and b at 75 share the GPU: 3.5 unit-s / 100 units
    shared = plan(two_on_one_gpu(), "exact", objective="latency")
    assert shared.predicted.latency_s == pytest.approx(0.036)
    assert plan(two_on_one_gpu(), "greedy", objective="latency").predicted.latency_s == (
        pytest.approx(0.036))


def test_latency_bound_is_respected() -> None:
    bound = Constraints(max_latency_s=0.02)
    for algorithm in ("greedy", "exact", "batch-only"):
        result = plan(three_members(), algorithm, constraints=bound)
        assert result.predicted.latency_s <= 0.02 + 1e-12
        assert all(i.batch_size == 1 for i in result.instances)
    with pytest.raises(PlanError, match="latency"):
        plan(three_members(), "greedy", constraints=Constraints(max_latency_s=0.001))


def test_min_throughput_with_latency_objective() -> None:
    result = plan(three_members(), "greedy", objective="latency",
                  constraints=Constraints(min_throughput=120))
    assert result.predicted.throughput >= 120
    exact = plan(three_members(), "exact", objective="latency",
                 constraints=Constraints(min_throughput=120))
    assert result.predicted.latency_s == pytest.approx(exact.predicted.latency_s)


def test_headroom_and_partitions() -> None:
    tight = Constraints(memory_headroom=0.5, time_sharing=False)
    for algorithm in ("greedy", "exact"):
        result = plan(replicas(), algorithm, constraints=tight)
        report = evaluate(replicas(), result)
        assert all(used <= 1.5 * GB for used in report.device_memory_bytes.values())
        assert all(share <= 100 for share in report.device_share.values())
        assert result.predicted.throughput == pytest.approx(80 * 2)  # one b8 s100 per GPU


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_too_big_member_is_named_with_bytes(algorithm: str) -> None:
    prof = profile([gpu(0, 1)], [entry("small", "cuda:0", 1, 100, 0.01, 0.5),
                                 entry("huge", "cuda:0", 1, 100, 0.01, 2)])
    with pytest.raises(PlanError) as err:
        plan(prof, algorithm)
    message = str(err.value)
    assert "huge" in message and "small" not in message
    assert f"({GB} bytes) missing" in message  # needs 2 GiB, the device has 1 GiB


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_ensemble_that_does_not_fit_names_members_and_bytes(algorithm: str) -> None:
    # each member fits alone, not together: 3 x 0.4 GB on 1 GB
    prof = profile([gpu(0, 1)], [entry(m, "cuda:0", 1, 30, 0.01, 0.4) for m in "abc"])
    with pytest.raises(PlanError) as err:
        plan(prof, algorithm)
    message = str(err.value)
    assert "does not fit" in message and "bytes" in message
    assert any(f"'{m}'" in message for m in "abc")


def test_declared_devices_borrow_profiled_entries() -> None:
    result = plan(replicas(), "greedy", devices=parse_device_decl("4xcuda:3GB"))
    assert {i.device for i in result.instances} == {f"cuda:{i}" for i in range(4)}
    assert result.predicted.throughput == pytest.approx(4 * 2 * 8 / 0.15)


def test_unknown_algorithm_and_objective() -> None:
    with pytest.raises(PlanError, match="unknown algorithm"):
        plan(replicas(), "magic")
    with pytest.raises(PlanError, match="unknown objective"):
        plan(replicas(), "greedy", objective="cost")


def test_plan_json_round_trip(tmp_path: Path) -> None:
    result = plan(three_members(), "greedy")
    data = json.loads(result.to_json())
    assert set(data) == {"algorithm", "objective", "devices", "instances", "predicted",
                         "planning_time_s"}
    assert set(data["instances"][0]) == {"member", "variant", "device", "batch_size", "share",
                                         "memory_bytes"}
    assert set(data["predicted"]) == {"throughput", "latency_s"}
    path = tmp_path / "plan.json"
    save_plan(result, path)
    again = load_plan(path)
    assert again == result
    assert evaluate(three_members(), again).throughput == pytest.approx(
        result.predicted.throughput)


def test_plan_file_errors_name_the_field(tmp_path: Path) -> None:
    data = json.loads(plan(three_members(), "greedy").to_json())
    data["instances"][0]["device"] = "cuda:7"
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PlanError, match=r"instances\.0\.device"):
        load_plan(path)
    del data["predicted"]
    path.write_text(json.dumps(data))
    with pytest.raises(PlanError, match="predicted"):
        load_plan(path)
    assert isinstance(Plan.from_dict(json.loads(plan(replicas(), "exact").to_json())), Plan)


def test_cpu_ensemble_time_shares_two_cores() -> None:
    # six one-thread members on two cores: the best plan keeps both cores busy
    lat = {"m0": 0.05, "m1": 0.1, "m2": 0.02, "m3": 0.08, "m4": 0.03, "m5": 0.04}
    entries = [entry(m, "cpu", 1, 1, t, 0.1) for m, t in lat.items()]
    entries += [entry(m, "cpu", 1, 2, t * 0.6, 0.1) for m, t in lat.items()]
    prof = profile([cpu(2)], entries)
    best = 2 / sum(lat.values())  # all core-time used at one core per member
    for algorithm in ("greedy", "exact"):
        assert plan(prof, algorithm).predicted.throughput == pytest.approx(best, rel=1e-6)


def test_exact_may_fill_memory_to_the_byte() -> None:
    # three quarter-GPU instances of 1 GiB each fill a 3 GiB GPU exactly and all help
    prof = profile([gpu(0, 3)], [entry("a", "cuda:0", 4, 25, 0.1, 1)])
    for algorithm in ("exact", "greedy"):
        result = plan(prof, algorithm)
        assert len(result.instances) == 3
        assert result.predicted.throughput == pytest.approx(120)
