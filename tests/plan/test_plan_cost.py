"""The cost model on cases small enough to check by hand."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enserve.errors import PlanError, ProfileError
from enserve.plan import Instance, evaluate
from enserve.plan.cost import latency, proportional_terms
from enserve.plan.problem import build_problem
from enserve.plan.scenarios import random_profile
from enserve.plan.search import aggregates, evaluate_moves
from tests.helpers.profiles import GB, cpu, entry, gpu, profile


def inst(member: str, device: str, batch: int, share: float, memory_gb: float) -> Instance:
    return Instance(member, None, device, batch, share, int(memory_gb * GB))


def test_partitioned_gpu() -> None:
    # a: 4 samples in 0.1 s at half the GPU = 40/s; b: 8 in 0.1 s = 80/s; shares sum to 100
    prof = profile([gpu(0)], [entry("a", "cuda:0", 4, 50, 0.1, 1),
                              entry("b", "cuda:0", 8, 50, 0.1, 2)], combine_s=0.01)
    report = evaluate(prof, [inst("a", "cuda:0", 4, 50, 1), inst("b", "cuda:0", 8, 50, 2)])
    assert report.throughput == pytest.approx(40)
    assert report.bottleneck == "a"
    assert report.latency_s == pytest.approx(0.11)  # slowest instance + combine
    assert report.device_memory_bytes["cuda:0"] == 3 * GB
    assert report.time_shared == ()
    assert report.device_compute_used["cuda:0"] == pytest.approx(100)


def test_time_sharing_conserves_work() -> None:
    # three one-core members on two cores: shares sum to 3 > 2, so they time-share.
    # X * (1/10 + 1/10 + 1/20) core-seconds per sample must fit in 2 cores: X = 8.
    # (If all three were busy all the time each would slow by 3/2 and a would give 6.7/s;
    # c is idle part of the time and leaves its core-time to the others.)
    prof = profile([cpu(2)], [entry("a", "cpu", 1, 1, 0.1, 0.1), entry("b", "cpu", 1, 1, 0.1, 0.1),
                              entry("c", "cpu", 1, 1, 0.05, 0.1)])
    plan = [inst("a", "cpu", 1, 1, 0.1), inst("b", "cpu", 1, 1, 0.1), inst("c", "cpu", 1, 1, 0.1)]
    report = evaluate(prof, plan)
    assert report.throughput == pytest.approx(8)
    assert report.bottleneck == "cpu" and report.time_shared == ("cpu",)
    assert report.device_compute_used["cpu"] == pytest.approx(2)
    # completion: 0.25 core-seconds of work on 2 cores = 0.125 s > slowest 0.1 s
    assert report.latency_s == pytest.approx(0.125)
    assert report.instance_load[("c", None, "cpu", 1, 1.0)] == pytest.approx(8 / 20)


def test_time_sharing_at_full_share_is_sequential() -> None:
    prof = profile([gpu(0)], [entry("a", "cuda:0", 1, 100, 0.02, 1),
                              entry("b", "cuda:0", 1, 100, 0.03, 1)])
    report = evaluate(prof, [inst("a", "cuda:0", 1, 100, 1), inst("b", "cuda:0", 1, 100, 1)])
    assert report.latency_s == pytest.approx(0.05)  # one after the other
    assert report.throughput == pytest.approx(1 / 0.05)


def test_load_goes_where_the_device_is_free() -> None:
    # a only runs on cpu; b runs on cpu and cpu:1. Sending all of b to cpu:1 leaves cpu to a,
    # so X = 10. Routing b in proportion to capacity would give only 20/3.
    devices = [cpu(1), cpu(1, name="cpu:1")]
    prof = profile(devices, [entry("a", "cpu", 1, 1, 0.1, 0.1), entry("b", "cpu", 1, 1, 0.1, 0.1),
                             entry("b", "cpu:1", 1, 1, 0.1, 0.1)])
    plan = [inst("a", "cpu", 1, 1, 0.1), inst("b", "cpu", 1, 1, 0.1), inst("b", "cpu:1", 1, 1, 0.1)]
    report = evaluate(prof, plan)
    assert report.throughput == pytest.approx(10)
    assert report.instance_load[("b", None, "cpu", 1, 1.0)] == pytest.approx(0, abs=1e-9)
    problem = build_problem(prof, prune=False)
    counts = np.ones(len(problem.options), dtype=np.int64)
    capacity, bound = proportional_terms(problem, counts)
    assert min(capacity.min(), bound.min()) == pytest.approx(20 / 3)  # the lower bound


def test_replicas_add_capacity() -> None:
    prof = profile([gpu(0), gpu(1)], [entry("a", d, 8, 50, 0.1, 1) for d in ("cuda:0", "cuda:1")])
    plan = [inst("a", d, 8, 50, 1) for d in ("cuda:0", "cuda:0", "cuda:1")]
    assert evaluate(prof, plan).throughput == pytest.approx(240)


def test_errors_for_unknown_configuration_and_missing_member() -> None:
    prof = profile([gpu(0)], [entry("a", "cuda:0", 8, 50, 0.1, 1), entry("b", "cuda:0", 8, 50, 0.1, 1)])
    with pytest.raises(ProfileError, match="batch size 4"):
        evaluate(prof, [inst("a", "cuda:0", 4, 50, 1), inst("b", "cuda:0", 8, 50, 1)])
    with pytest.raises(PlanError, match="member.* b"):
        evaluate(prof, [inst("a", "cuda:0", 8, 50, 1)])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), moves=st.integers(1, 30))
def test_vectorised_moves_agree_with_the_cost_model(seed: int, moves: int) -> None:
    problem = build_problem(random_profile(seed, max_members=4))
    rng = np.random.default_rng(seed)
    counts = problem.zero_counts()
    for i in range(problem.n_members):
        counts[rng.choice(problem.options_of(i), size=int(rng.integers(1, 3)))] += 1
    present = np.flatnonzero(counts)
    rem = np.full((moves, 2), -1)
    add = np.full((moves, 2), -1)
    for j in range(moves):
        for c in range(int(rng.integers(0, 3))):
            rem[j, c] = rng.choice(present)
        for c in range(int(rng.integers(0, 3))):
            add[j, c] = rng.integers(len(problem.options))
    scores = evaluate_moves(problem, aggregates(problem, counts), rem, add)
    for j in range(moves):
        after = counts.copy()
        np.add.at(after, rem[j][rem[j] >= 0], -1)
        np.add.at(after, add[j][add[j] >= 0], 1)
        if not scores.valid[j]:
            continue
        assert (after >= 0).all()
        memory = np.bincount(problem.opt_device, weights=after * problem.mem,
                             minlength=problem.n_devices)
        assert (memory <= problem.usable_mem + 0.5).all()
        capacity, bound = proportional_terms(problem, after)
        assert scores.throughput[j] == pytest.approx(min(capacity.min(), bound.min()), rel=1e-9)
        assert scores.latency[j] == pytest.approx(latency(problem, after), rel=1e-9)
