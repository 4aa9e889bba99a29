"""The planner with exit rates: a member reached by r of the rows needs r of the capacity."""

from __future__ import annotations

import pytest

from enserve.errors import PlanError
from enserve.formats.profile import profile_from_dict
from enserve.plan import plan
from enserve.plan.cost import evaluate
from enserve.plan.reach import profile_with_reach


def _profile():
    entries = []
    for member, latency in (("cheap", 0.01), ("heavy", 0.4)):
        for batch in (8, 16):
            entries.append({"member": member, "device": "cpu", "batch_size": batch, "share": 1,
                            "latency_s": latency * batch / 8, "memory_bytes": 1000})
    return profile_from_dict({
        "devices": [{"id": "cpu", "kind": "cpu", "memory_bytes": 10**9, "compute_units": 2}],
        "members": [{"name": "cheap"}, {"name": "heavy"}], "entries": entries})


def test_reach_scales_the_needed_capacity() -> None:
    profile = _profile()
    full = plan(profile)
    scaled = profile_with_reach(profile, {"heavy": 0.25})
    cascade = plan(scaled)
    # same instances: the heavy member now serves 4x the ensemble rows per second
    same = evaluate(scaled, full)
    assert same.member_capacity["heavy"] == pytest.approx(
        4 * evaluate(profile, full).member_capacity["heavy"])
    assert cascade.predicted.throughput > 2 * full.predicted.throughput
    assert profile.entries[2].latency_s == 0.4  # the original is untouched


@pytest.mark.parametrize("reach, message", [({"nobody": 0.5}, "does not have"),
                                            ({"heavy": -0.1}, "not in"),
                                            ({"heavy": 1.5}, "not in")])
def test_bad_reach(reach, message) -> None:
    with pytest.raises(PlanError, match=message):
        profile_with_reach(_profile(), reach)


def test_requests_per_row_counts_a_request_once_per_stage_it_reaches() -> None:
    from enserve.plan.reach import requests_per_row

    assert requests_per_row([1.0], 4) == pytest.approx(0.25)  # the full ensemble
    assert requests_per_row([1.0, 0.0], 4) == pytest.approx(0.25)  # a stage nobody reaches
    # one row per request: a stage's requests are its rows
    assert requests_per_row([1.0, 0.5, 0.1], 1) == pytest.approx(1.6)
    # four rows: stage 2 gets a request unless all four rows left before it
    assert requests_per_row([1.0, 0.5], 4) == pytest.approx((1 + (1 - 0.5 ** 4)) / 4)


def test_dispatch_time_lowers_the_prediction() -> None:
    from enserve.plan.reach import with_dispatch

    assert with_dispatch(1000.0, 0.25, 0.0, 2) == 1000.0
    # the serving process bounds it: 1 / (0.5 requests/row x 1 ms) = 2000 rows/s
    assert with_dispatch(1e9, 0.5, 0.001, 2) == pytest.approx(2000.0)
    # compute-bound: the serving process takes 0.25 ms of 2 cores per row
    slowed = with_dispatch(1000.0, 0.25, 0.001, 2)
    assert slowed == pytest.approx(1000.0 / (1 + 1000.0 * 0.00025 / 2))
    assert slowed < 1000.0
