"""Planning for members that see only part of the rows (a cascade's later stages).

A member reached by a fraction r of the rows needs only r of the capacity: an instance
that processes c member-rows per second serves c / r ensemble rows per second. Scaling
each profile entry's latency by r (per ensemble row, once re-batching keeps batches full)
lets every planner and the cost model work unchanged; throughput predictions are then in
ensemble rows per second. Completion-time predictions of such a profile are not a batch's
latency (a row that goes through every stage takes the unscaled latencies in sequence).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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


def requests_per_row(stage_reach: Sequence[float], request_rows: int) -> float:
    """Engine requests per ensemble row when a request of `request_rows` independent rows
    goes through stages whose k-th is reached by a share `stage_reach[k]` of the rows: a
    request sends a sub-request to stage k when any of its rows gets there."""
    rows = max(1, request_rows)
    return sum(1.0 - (1.0 - min(1.0, max(0.0, r))) ** rows for r in stage_reach) / rows


def with_dispatch(throughput: float, per_row: float, dispatch_s: float, units: float) -> float:
    """A plan's predicted throughput (rows/s, member compute only) once every engine
    request also costs `dispatch_s` seconds of the serving process (submitting, batching,
    pipes, answering: one thread at a time, on the same `units` cores as the workers);
    `per_row` engine requests per row. The serving process sustains at most
    1 / (per_row x dispatch_s) rows/s, and the cores left to the workers shrink by its use."""
    host = per_row * dispatch_s  # seconds of the serving process per row
    if host <= 0 or throughput <= 0:
        return throughput
    return min(1.0 / host, throughput / (1.0 + throughput * host / units))
