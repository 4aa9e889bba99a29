"""Properties over random scenarios: no plan breaks a device limit; hopeless ensembles fail
with a message naming members and bytes."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from enserve.errors import PlanError
from enserve.formats.profile import Profile
from enserve.plan import Constraints, Plan, evaluate, plan
from enserve.plan.scenarios import random_profile

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

constraints = st.builds(
    Constraints,
    max_latency_s=st.sampled_from([None, None, 0.05, 0.5]),
    memory_headroom=st.sampled_from([0.0, 0.1, 0.3]),
    time_sharing=st.booleans(),
)


def check_limits(profile: Profile, result: Plan, limits: Constraints) -> None:
    report = evaluate(profile, result)
    assert report.throughput == pytest.approx(result.predicted.throughput, rel=1e-6)
    assert report.latency_s == pytest.approx(result.predicted.latency_s, rel=1e-9)
    assert {i.member for i in result.instances} == set(profile.member_names())
    for device in result.devices:
        assert report.device_memory_bytes[device.id] <= (
            device.memory_bytes * (1 - limits.memory_headroom) + 1)
        assert report.device_compute_used[device.id] <= device.compute_units * (1 + 1e-6)
        if not limits.time_sharing or result.algorithm == "shares":
            assert report.device_share[device.id] <= device.compute_units * (1 + 1e-9)
        for inst in result.instances_on(device.id):
            assert 0 < inst.share <= device.compute_units
    if limits.max_latency_s is not None:
        assert result.predicted.latency_s <= limits.max_latency_s * (1 + 1e-9)


@SETTINGS
@given(seed=st.integers(0, 10**6), limits=constraints,
       algorithm=st.sampled_from(["greedy", "shares", "batch-only", "sequential"]),
       objective=st.sampled_from(["throughput", "latency"]))
def test_heuristic_plans_respect_every_limit(seed: int, limits: Constraints, algorithm: str,
                                             objective: str) -> None:
    profile = random_profile(seed, max_members=4, max_devices=3)
    try:
        result = plan(profile, algorithm, objective, limits)
    except PlanError as exc:  # allowed: constraints can be impossible; the reason is given
        assert str(exc)
        event("no plan")
        return
    event(f"planned {algorithm} {objective}")
    check_limits(profile, result, limits)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10**6), limits=constraints)
def test_exact_plans_respect_every_limit(seed: int, limits: Constraints) -> None:
    profile = random_profile(seed, max_members=3, max_devices=2)
    try:
        result = plan(profile, "exact", "throughput", limits)
    except PlanError as exc:
        assert str(exc)
        return
    check_limits(profile, result, limits)


def shrink_memory(profile: Profile, factor: float) -> Profile:
    devices = [d.model_copy(update={"memory_bytes": max(1, int(d.memory_bytes * factor))})
               for d in profile.devices]
    return profile.model_copy(update={"devices": devices})


@SETTINGS
@given(seed=st.integers(0, 10**6), factor=st.floats(0.01, 0.3),
       algorithm=st.sampled_from(["greedy", "shares", "exact", "batch-only", "sequential"]))
def test_infeasible_ensembles_name_members_and_missing_bytes(seed: int, factor: float,
                                                             algorithm: str) -> None:
    profile = random_profile(seed, max_members=4, max_devices=2)
    # memory so small that the members' smallest footprints cannot all fit
    smallest = {m: min(e.memory_bytes for e in profile.entries if e.member == m)
                for m in profile.member_names()}
    total = sum(d.memory_bytes for d in profile.devices)
    tiny = shrink_memory(profile, min(factor, 0.9 * sum(smallest.values()) / total))
    with pytest.raises(PlanError) as err:
        plan(tiny, algorithm)
    message = str(err.value)
    named = [m for m in smallest if f"'{m}'" in message]
    assert named, message
    missing = [int(b) for b in re.findall(r"\((\d+) bytes\) missing", message)]
    assert missing and all(b > 0 for b in missing), message


def test_limits_hold_on_many_seeds_quickly() -> None:
    """A plain sweep (no shrinking) over more seeds for the fast heuristics."""
    for seed in range(40):
        profile = random_profile(seed)
        for algorithm in ("batch-only", "shares"):
            limits = Constraints(memory_headroom=float(np.random.default_rng(seed).choice([0, 0.2])))
            try:
                result = plan(profile, algorithm, constraints=limits)
            except PlanError:
                continue
            check_limits(profile, result, limits)
