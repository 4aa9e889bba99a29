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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from enserve.errors import PlanError
from enserve.formats.groups import GROUP_KINDS, KIND_VARIANTS, GroupRef, parse_group_name
from enserve.formats.profile import Profile
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

    plan: Any  # enserve.plan.Plan
    groups: tuple[str, ...]
    options: tuple[FusionOption, ...] = field(default=())
    profile: Profile | None = None  # the restricted profile the plan was made from

    def to_dict(self) -> dict[str, Any]:
        return {"groups": list(self.groups),
                "options": [{"groups": list(o.groups), "throughput": o.throughput,
                             "latency_s": o.latency_s, "error": o.error} for o in self.options]}


def _better(objective: str, a: Any, b: Any) -> bool:
    """Whether plan `a` predicts a better objective than plan `b`."""
    if objective == "latency":
        return bool(a.predicted.latency_s < b.predicted.latency_s * (1 - 1e-9))
    return bool(a.predicted.throughput > b.predicted.throughput * (1 + 1e-9))


def choose_fusion(
    profile: Profile,
    fusion: str = "auto",
    algorithm: str = "greedy",
    objective: str = "throughput",
    constraints: Any = None,
    devices: Any = None,
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
        options.append(FusionOption(combo, result.predicted.throughput,
                                    result.predicted.latency_s))
        if best is None or _better(objective, result, best.plan):
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
    constraints: Any = None,
    devices: Any = None,
) -> Any:
    """`choose_fusion(...).plan`: an `enserve.plan.Plan` whose fused instances name their
    group as `member` and a `fused-*` variant."""
    return choose_fusion(profile, fusion, algorithm, objective, constraints, devices).plan


def profile_for_plan(profile: Profile, plan: Any) -> Profile:
    """The restricted profile matching the fused groups `plan` uses (for `evaluate`)."""
    known = profile_groups(profile)
    used = list(dict.fromkeys(_get(i, "member") for i in _instances(plan)
                              if _get(i, "member") in known))
    return restrict_profile(profile, used)


# ----------------------------------------------------------------------------- plans
def _instances(plan: Any) -> list[Any]:
    items = plan.get("instances", []) if isinstance(plan, Mapping) else getattr(
        plan, "instances", [])
    return list(items)


def _get(item: Any, name: str, default: Any = None) -> Any:
    if isinstance(item, Mapping):
        return item.get(name, default)
    return getattr(item, name, default)


def _as_dict(inst: Any) -> dict[str, Any]:
    if isinstance(inst, Mapping):
        return dict(inst)
    if hasattr(inst, "to_dict"):
        return dict(inst.to_dict())
    keys = ("member", "variant", "device", "batch_size", "share", "memory_bytes")
    return {k: _get(inst, k) for k in keys}


def plan_groups(plan: Any) -> list[str]:
    """Names of the fused groups a plan's instances run."""
    return list(dict.fromkeys(str(_get(i, "member")) for i in _instances(plan)
                              if parse_group_name(str(_get(i, "member"))) is not None))


def unfuse_plan(plan: Any, default_variants: Mapping[str, str | None] | None = None
                ) -> dict[str, Any]:
    """The same plan without fusion: every fused instance becomes one instance per member it
    covers, on the same device with the same batch size, in the member's default variant,
    and the group's share split evenly among them (so the unfused plan uses the same
    compute: on a CPU each gets max(1, round(share / members)) threads). Returns a plan dict
    (no prediction: it was not planned)."""
    instances: list[dict[str, Any]] = []
    for inst in _instances(plan):
        data = _as_dict(inst)
        ref = parse_group_name(str(data.get("member")))
        if ref is None:
            instances.append(data)
            continue
        for m in ref.covers:
            instances.append({**data, "member": m,
                              "variant": (default_variants or {}).get(m),
                              "share": float(data.get("share") or 1) / len(ref.covers),
                              "memory_bytes": 0})
    return {"algorithm": f"unfused({_get(plan, 'algorithm', 'plan')})",
            "instances": instances, "unfused_from": plan_groups(plan)}


def default_fused_plan(member_names: Sequence[str], groups: Sequence[GroupRef], cores: int,
                       batch_size: int = 8) -> dict[str, Any]:
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
    return {"algorithm": "default-fused",
            "instances": [{"member": name, "variant": variant, "device": "cpu",
                           "batch_size": batch_size, "share": 1, "memory_bytes": 0}
                          for name, variant in units for _ in range(replicas)]}
