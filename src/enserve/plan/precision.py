"""Mixed precision: plan every admitted mix of member precisions and keep the fastest.

A profile made with reduced-precision variants carries an `accuracy` section (see
`enserve.precision.admission`): which assignments {member: precision} keep the ensemble's
answers within the spec's tolerance. An assignment is a permission: a member it names
may run as fp32 or in that precision. The largest admitted assignments (none contained in
another) are each planned (with `choose_fusion`), the chosen plan's actual mix must be
admitted too (every way its instances can combine), and the best plan by the objective
wins; ties keep fewer reduced-precision members. `precision="fp32"` plans fp32 only.
Pure: touches no hardware.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from enserve.errors import PlanError
from enserve.formats.plan import Plan
from enserve.formats.profile import Profile
from enserve.precision.admission import admitted_assignments, lookup
from enserve.variants.names import precision_of

PRECISION_MODES = ("auto", "fp32")
MAX_CANDIDATES = 16


@dataclass(frozen=True)
class PrecisionDecision:
    plan: Plan
    fusion: Any  # enserve.plan.fusion.FusionDecision of the chosen plan
    assignment: dict[str, str]
    measured: dict[str, Any] | None
    options: tuple[dict[str, Any], ...] = field(default=())


def accuracy_section(profile: Profile) -> dict[str, Any] | None:
    section = (profile.model_extra or {}).get("accuracy")
    return section if isinstance(section, dict) else None


def restrict_precision(profile: Profile, allowed: Mapping[str, str]) -> Profile:
    """Entries a plan may use under `allowed`: fp32 everywhere, plus each named member's
    entries in its allowed precision."""
    entries = [e for e in profile.entries
               if precision_of(e.variant) == "fp32"
               or allowed.get(e.member) == precision_of(e.variant)]
    return profile.model_copy(update={"entries": entries})


def maximal(assignments: list[dict[str, str]]) -> list[dict[str, str]]:
    """Assignments not contained in another (largest first)."""
    def within(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
        return a != b and all(b.get(m) == p for m, p in a.items())

    kept = [a for a in assignments if not any(within(a, b) for b in assignments)]
    return sorted(kept, key=lambda a: (-len(a), sorted(a.items())))


def plan_mixes(plan: Plan) -> list[dict[str, str]]:
    """Every mix of precisions the plan's answers can come from (one per way of picking an
    instance of each member)."""
    per_member: dict[str, set[str]] = {}
    for inst in plan.instances:
        per_member.setdefault(inst.member, set()).add(precision_of(inst.variant))
    names = sorted(per_member)
    mixes = []
    for combo in itertools.product(*(sorted(per_member[m]) for m in names)):
        mixes.append({m: p for m, p in zip(names, combo, strict=True) if p != "fp32"})
    return mixes


def _better(objective: str, a: Plan, b: Plan) -> bool:
    if objective == "latency":
        return a.prediction.latency_s < b.prediction.latency_s * (1 - 1e-9)
    return a.prediction.throughput > b.prediction.throughput * (1 + 1e-9)


def choose_precision(
    profile: Profile,
    precision: str = "auto",
    fusion: str = "auto",
    algorithm: str = "greedy",
    objective: str = "throughput",
    constraints: Any = None,
    devices: Any = None,
) -> PrecisionDecision:
    """The best plan over the admitted precision mixes (see the module docstring)."""
    from enserve.plan.fusion import choose_fusion

    if precision not in PRECISION_MODES:
        raise PlanError(f"--precision: '{precision}' is not one of {', '.join(PRECISION_MODES)}")
    section = accuracy_section(profile)
    candidates: list[dict[str, str]] = [{}]
    if precision == "auto" and section is not None:
        wider = maximal([a for a in admitted_assignments(section) if a])[:MAX_CANDIDATES]
        candidates = [*wider, {}]
    best: PrecisionDecision | None = None
    options: list[dict[str, Any]] = []
    first_error: PlanError | None = None
    for allowed in candidates:
        try:
            decision = choose_fusion(restrict_precision(profile, allowed), fusion, algorithm,
                                     objective, constraints, devices)
        except PlanError as exc:
            first_error = first_error or exc
            options.append({"allowed": allowed, "error": str(exc)})
            continue
        mixes = plan_mixes(decision.plan)
        rows = [lookup(section, m) for m in mixes]
        refused = [m for m, r in zip(mixes, rows, strict=True) if not (r and r["admitted"])]
        used = max(mixes, key=len)
        option = {"allowed": allowed, "uses": used,
                  "throughput": decision.predicted.throughput,
                  "latency_s": decision.predicted.latency_s}
        if refused:
            options.append({**option, "error": f"mix {refused[0]} was not admitted"})
            continue
        options.append(option)
        if best is None or _better(objective, decision.plan, best.plan):
            worst = min((r for r in rows if r), key=lambda r: r["top1_agreement"], default=None)
            best = PrecisionDecision(decision.plan, decision, used, worst)
    if best is None:
        assert first_error is not None
        raise first_error
    info = precision_info(precision, section, best.assignment, best.measured, len(candidates))
    plan = replace(best.plan, precision=info)
    return replace(best, plan=plan, options=tuple(options))


def precision_info(mode: str, section: Mapping[str, Any] | None, assignment: Mapping[str, str],
                   measured: Mapping[str, Any] | None, planned: int) -> dict[str, Any]:
    """What a plan records about its precision: the mode, the mix, what was measured."""
    info: dict[str, Any] = {"mode": mode, "members": dict(assignment)}
    if section is None:
        info["note"] = ("fp32 only" if mode == "fp32"
                        else "the profile has no accuracy section: fp32 only")
        return info
    info["calibration_rows"] = section.get("rows")
    info["tolerance"] = section.get("tolerance")
    info["mixes_planned"] = planned
    if measured is not None:
        for key in ("top1_agreement", "accuracy", "accuracy_drop"):
            if measured.get(key) is not None:
                info[key] = measured[key]
    if section.get("fp32_accuracy") is not None:
        info["fp32_accuracy"] = section["fp32_accuracy"]
    return info
