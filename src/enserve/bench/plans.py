"""Which plan a bench runs, under `--fusion auto|on|off`, and its unfused twin.

- a plan given: `off` splits its fused groups into their members (`unfuse_plan`), `on`
  requires it to use a fused group, `auto` runs it as it is;
- a profile given: planned by the greedy planner through `choose_fusion` (auto keeps the
  better predicted plan of with and without fused groups);
- neither: `on` fuses the largest disjoint groups of the spec (`default_fused_plan`);
  `auto` and `off` run the engine's default plan (without a profile nothing tells
  whether fusion pays).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from enserve.errors import EnserveError
from enserve.formats.plan import Plan
from enserve.formats.profile import Profile
from enserve.fusion.candidates import fusion_candidates
from enserve.plan.fusion import FUSION_MODES, choose_fusion, default_fused_plan, plan_groups, unfuse_plan
from enserve.spec import EnsembleSpec


@dataclass
class ResolvedPlan:
    plan: Plan | None
    fusion: dict[str, Any] = field(default_factory=dict)  # what the report says about it


def resolve_plan(spec: EnsembleSpec, plan: Plan | None, profile: Profile | None, fusion: str,
                 cores: int, batch_size: int = 8) -> ResolvedPlan:
    """The plan to bench under `fusion` (see the module docstring)."""
    if fusion not in FUSION_MODES:
        raise EnserveError(f"--fusion: '{fusion}' is not one of {', '.join(FUSION_MODES)}")
    info: dict[str, Any] = {"mode": fusion}
    if plan is not None:
        if fusion == "off":
            plan = unfuse_plan(plan) if plan_groups(plan) else plan
        elif fusion == "on" and not plan_groups(plan):
            raise EnserveError("--fusion on: the plan uses no fused group (plan with "
                               "`--fusion on`, or give a --profile with fused groups)")
        info["source"] = "plan"
    elif profile is not None:
        decision = choose_fusion(profile, fusion, algorithm="greedy")
        plan = decision.plan
        info.update(source="profile", **decision.to_dict())
    elif fusion == "on":
        groups = [g.ref() for g in fusion_candidates(spec)
                  if len({spec.input_for(spec.member(m)).name for m in g.members}) == 1]
        plan = default_fused_plan([m.name for m in spec.members], groups, cores, batch_size)
        info["source"] = "default-fused"
    else:
        info["source"] = "default"
    info["groups"] = plan_groups(plan) if plan is not None else []
    return ResolvedPlan(plan, info)
