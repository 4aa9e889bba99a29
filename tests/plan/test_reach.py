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
