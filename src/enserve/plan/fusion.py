"""Fused groups as planner options: profile members, plans with and without them.

A fused group appears in a profile as one more member, named after the group
(`fx:cnn+dwcnn+mlp+cnn5`), with the extra keys `covers` (the members it runs) and
`fusion_kind`; its entries are measured like any member's (variant `fused-fx`,
`fused-fx-frozen`, `fused-horizontal`, `fused-onnx`). A plan that uses the group has
instances whose `member` is the group name; the runtime runs them with `load_fused` and
writes every covered member's logits where that member's own instance would.

This module imports no torch: the planner side and the command line use it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from enserve.devices import Device
from enserve.errors import PlanError
from enserve.formats.groups import GROUP_KINDS, KIND_VARIANTS, GroupRef
from enserve.formats.plan import Instance, Plan, Predicted
from enserve.formats.profile import Profile
from enserve.plan.problem import Constraints
from enserve.plan.restrict import disjoint_combinations, profile_groups, restrict_profile
from enserve.plan.solve import plan as make_plan

FusionMode = Literal["auto", "on", "off"]
FUSION_MODES: tuple[str, ...] = ("auto", "on", "off")


# ----------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class FusionOption:
    """One way of planning that was tried: the groups used and what the plan predicts."""

    groups: tuple[str, ...]
    throughput: float | None = None
    latency_s: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class FusionDecision:
    """The chosen plan, the groups it uses, and every alternative that was planned."""

    plan: Plan
    groups: tuple[str, ...]
    options: tuple[FusionOption, ...] = field(default=())
    profile: Profile | None = None  # the restricted profile the plan was made from

    @property
    def predicted(self) -> Predicted:
        assert self.plan.predicted is not None  # a decision is made among planned plans
        return self.plan.predicted

    def to_dict(self) -> dict[str, Any]:
        return {"groups": list(self.groups),
                "options": [{"groups": list(o.groups), "throughput": o.throughput,
                             "latency_s": o.latency_s, "error": o.error} for o in self.options]}


def _better(objective: str, a: Predicted, b: Predicted) -> bool:
    """Whether prediction `a` is better for the objective than prediction `b`."""
    if objective == "latency":
        return bool(a.latency_s < b.latency_s * (1 - 1e-9))
    return bool(a.throughput > b.throughput * (1 + 1e-9))


def choose_fusion(
    profile: Profile,
    fusion: str = "auto",
    algorithm: str = "greedy",
    objective: str = "throughput",
    constraints: Constraints | None = None,
    devices: Sequence[Device] | None = None,
) -> FusionDecision:
    """Plan with `fusion` "off" (real members only), "on" (the best plan among those that
    use at least one fused group, each replacing the members it covers) or "auto" (the best
    of both). Ties keep the plan with fewer fused groups (the unfused one under auto)."""
    if fusion not in FUSION_MODES:
        raise PlanError(f"--fusion: '{fusion}' is not one of {', '.join(FUSION_MODES)}")
    groups = list(profile_groups(profile).values())
    candidates: list[tuple[str, ...]] = []
    if fusion in ("auto", "off"):
        candidates.append(())
    if fusion in ("auto", "on"):
        combos = disjoint_combinations(groups)
        if fusion == "on" and not combos:
            raise PlanError("--fusion on: the profile has no fused groups (profile with "
                            "`enserve profile --fusion auto` first)")
        candidates += sorted(combos, key=len)
    best: FusionDecision | None = None
    options: list[FusionOption] = []
    first_error: Exception | None = None
    for combo in candidates:
        restricted = restrict_profile(profile, combo)
        try:
            result = make_plan(restricted, algorithm, objective, constraints, devices)
        except PlanError as exc:
            first_error = first_error or exc
            options.append(FusionOption(combo, error=str(exc)))
            continue
        predicted = result.predicted
        assert predicted is not None  # the planner always predicts
        options.append(FusionOption(combo, predicted.throughput, predicted.latency_s))
        if best is None or _better(objective, predicted, best.predicted):
            best = FusionDecision(result, combo, profile=restricted)
    if best is None:
        assert first_error is not None
        raise first_error
    return FusionDecision(best.plan, best.groups, tuple(options), best.profile)


def plan_with_fusion(
    profile: Profile,
    fusion: str = "auto",
    algorithm: str = "greedy",
    objective: str = "throughput",
    constraints: Constraints | None = None,
    devices: Sequence[Device] | None = None,
) -> Plan:
    """`choose_fusion(...).plan`: a plan whose fused instances name their group as `member`
    and a `fused-*` variant."""
    return choose_fusion(profile, fusion, algorithm, objective, constraints, devices).plan


def profile_for_plan(profile: Profile, plan: Plan) -> Profile:
    """The restricted profile matching the fused groups `plan` uses (for `evaluate`)."""
    known = profile_groups(profile)
    used = list(dict.fromkeys(i.member for i in plan.instances if i.member in known))
    return restrict_profile(profile, used)


# ----------------------------------------------------------------------------- plans
def plan_groups(plan: Plan) -> list[str]:
    """Names of the fused groups a plan's instances run."""
    return [g.name for g in plan.groups()]


def unfuse_plan(plan: Plan, default_variants: Mapping[str, str | None] | None = None) -> Plan:
    """The same plan without fusion: every fused instance becomes one instance per member it
    covers, on the same device with the same batch size, in the member's default variant,
    and the group's share split evenly among them (so the unfused plan uses the same
    compute: on a CPU each gets max(1, round(share / members)) threads). No prediction: it
    was not planned."""
    instances: list[Instance] = []
    for inst in plan.instances:
        ref = inst.group
        if ref is None:
            instances.append(inst)
            continue
        for m in ref.covers:
            instances.append(dataclasses.replace(
                inst, member=m, variant=(default_variants or {}).get(m),
                share=float(inst.share or 1) / len(ref.covers), memory_bytes=0))
    return Plan(f"unfused({plan.algorithm})", plan.objective, plan.devices, tuple(instances),
                None, members=(), unfused_from=tuple(plan_groups(plan)))


def default_fused_plan(member_names: Sequence[str], groups: Sequence[GroupRef], cores: int,
                       batch_size: int = 8) -> Plan:
    """A plan without a profile: the largest disjoint fused groups (fx before others on a
    tie), the remaining members on their own; one-thread instances, each unit replicated
    `cores // units` times (at least once). One thread per instance keeps an instance from
    waiting on a descheduled sibling thread when other processes share the cores. Raises
    PlanError when there is no group to use."""
    rank = {k: i for i, k in enumerate(GROUP_KINDS)}
    chosen: list[GroupRef] = []
    taken: set[str] = set()
    for g in sorted(groups, key=lambda g: (-len(g.covers), rank.get(g.kind, 9))):
        if not taken & set(g.covers):
            chosen.append(g)
            taken |= set(g.covers)
    if not chosen:
        raise PlanError("--fusion on: this ensemble has no members that can be fused")
    units: list[tuple[str, str | None]] = [(g.name, KIND_VARIANTS[g.kind][0]) for g in chosen]
    units += [(m, None) for m in member_names if m not in taken]
    replicas = max(1, cores // len(units))
    return Plan.of([{"member": name, "variant": variant, "device": "cpu",
                     "batch_size": batch_size, "share": 1, "memory_bytes": 0}
                    for name, variant in units for _ in range(replicas)],
                   algorithm="default-fused")
