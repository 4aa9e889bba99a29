"""Planning for members that see only part of the rows (a cascade's later stages).

A member reached by a fraction r of the rows needs only r of the capacity: an instance
that processes c member-rows per second serves c / r ensemble rows per second. Scaling
each profile entry's latency by r (per ensemble row, once re-batching keeps batches full)
lets every planner and the cost model work unchanged; throughput predictions are then in
ensemble rows per second. Completion-time predictions of such a profile are not a batch's
latency (a row that goes through every stage takes the unscaled latencies in sequence).
"""

from __future__ import annotations

from collections.abc import Mapping

from enserve.errors import PlanError
from enserve.formats.profile import Profile

MIN_REACH = 0.01  # a member no calibration row reached is still planned for a few


def profile_with_reach(profile: Profile, reach: Mapping[str, float]) -> Profile:
    """A copy of `profile` whose entries of member m take reach[m] of their latency
    (members not named: 1; at least `MIN_REACH`)."""
    names = set(profile.member_names())
    unknown = sorted(set(reach) - names)
    if unknown:
        raise PlanError(f"reach names member(s) {unknown} the profile does not have")
    for member, r in reach.items():
        if not 0 <= r <= 1:
            raise PlanError(f"reach of member '{member}' is {r}, not in [0, 1]")
    scaled = profile.model_copy(deep=True)
    for entry in scaled.entries:
        entry.latency_s = entry.latency_s * max(MIN_REACH, float(reach.get(entry.member, 1.0)))
    return scaled
