"""Re-planning when devices come and go (a cluster node leaves or returns). Pure.

- `replan(plan, alive, profile=None)`: a plan on the devices still alive. With a profile,
  the planner plans again on them (same algorithm and objective); without one, the
  instances of lost devices are moved onto alive devices of the same kind (`relocate`).
- `diff_instances(current, target)`: which running instances to keep, start and stop to get
  from one plan to another with the fewest restarts (the runtime applies it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from enserve.devices import Device
from enserve.errors import PlanError
from enserve.formats.plan import Instance, Plan
from enserve.formats.profile import Profile


@dataclass(frozen=True)
class PlanDiff:
    """`keep`: (index in current, index in target) pairs running the same configuration;
    `start`: target indices that need a new instance; `stop`: current indices to stop."""

    keep: tuple[tuple[int, int], ...]
    start: tuple[int, ...]
    stop: tuple[int, ...]


def diff_instances(current: Sequence[Instance], target: Sequence[Instance]) -> PlanDiff:
    """Match instances with the same (member, variant, device, batch size, share)."""
    free: dict[tuple[object, ...], list[int]] = {}
    for i, inst in enumerate(current):
        free.setdefault(inst.config_key(), []).append(i)
    keep, start = [], []
    for j, inst in enumerate(target):
        matches = free.get(inst.config_key())
        if matches:
            keep.append((matches.pop(0), j))
        else:
            start.append(j)
    stop = sorted(i for left in free.values() for i in left)
    return PlanDiff(tuple(keep), tuple(start), tuple(stop))


def relocate(plan: Plan, alive: Sequence[Device]) -> Plan:
    """Move the instances whose device is not in `alive` onto alive devices of the same kind.

    Each lost instance (largest memory first) goes to the device of its kind where it fits
    in memory with the least compute already shared out (ties: most free memory); its share
    is capped at that device's units. A replica that fits nowhere is dropped while its member
    keeps another instance; a member left with none raises PlanError naming it.
    """
    alive_ids = {d.id for d in alive}
    kept = [i for i in plan.instances if i.device in alive_ids]
    lost = sorted((i for i in plan.instances if i.device not in alive_ids),
                  key=lambda i: -i.memory_bytes)
    memory = {d.id: 0 for d in alive}
    shares = {d.id: 0.0 for d in alive}
    for inst in kept:
        memory[inst.device] += inst.memory_bytes
        shares[inst.device] += inst.share
    kinds = {d.id: d.kind for d in plan.devices}
    moved: list[Instance] = []
    unplaced: list[Instance] = []
    for inst in lost:
        kind = kinds.get(inst.device)
        fits = [d for d in alive if d.kind == kind
                and memory[d.id] + inst.memory_bytes <= d.memory_bytes]
        if not fits:
            unplaced.append(inst)
            continue
        best = min(fits, key=lambda d: (shares[d.id] / d.compute_units,
                                        -(d.memory_bytes - memory[d.id]), d.id))
        new = replace(inst, device=best.id, share=min(inst.share, best.compute_units))
        memory[best.id] += new.memory_bytes
        shares[best.id] += new.share
        moved.append(new)
    placed_members = {i.member for i in (*kept, *moved)}
    missing = sorted({i.member for i in unplaced} - placed_members)
    if missing:
        raise PlanError(
            f"after losing {sorted({i.device for i in lost})}, no alive device has room for "
            f"member(s) {', '.join(missing)}")
    order = {d.id: k for k, d in enumerate(alive)}
    instances = sorted((*kept, *moved), key=lambda i: order[i.device])
    return Plan(f"{plan.algorithm}+relocated", plan.objective, tuple(alive), tuple(instances),
                plan.predicted, plan.planning_time_s, members=plan.members)


def replan(plan: Plan, alive: Sequence[Device], profile: Profile | None = None) -> Plan:
    """A plan for the alive devices: planned again from `profile` (same algorithm and
    objective) when given, else `relocate`. Raises PlanError when nothing fits."""
    if profile is None:
        return relocate(plan, alive)
    from enserve.plan import ALGORITHMS
    from enserve.plan import plan as make_plan

    algorithm = plan.algorithm.split("+")[0]
    return make_plan(profile, algorithm if algorithm in ALGORITHMS else "greedy",
                     plan.objective, devices=list(alive))
