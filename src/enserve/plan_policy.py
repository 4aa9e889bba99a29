"""A plan made on other hardware: say so, then reuse it, re-plan for this machine, or fail.

`fit_plan` compares the plan's hardware fingerprint (`Plan.hardware`) with this
machine's. A plan without one (hand-written, or older than fingerprints) is reused under
`replan` with a message, and refused under `fail`. Under `replan` a foreign plan's spec is
profiled here (progress bar; every entry cached under this machine's fingerprint, so the
next start is instant) for the variants, precision mode and fusion the old plan used,
and planned again with its algorithm and objective.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from enserve.errors import PlanError
from enserve.hardware import Hardware, current_hardware, differences, hardware_from

PLAN_POLICIES = ("reuse", "replan", "fail")
REPLAN_BATCH_SIZES = (1, 8)


def _print(message: str) -> None:
    import sys

    print(message, file=sys.stderr, flush=True)


def mismatch(plan: Any, here: Hardware) -> str | None:
    """Why `plan` was not made for `here` (None when its fingerprint matches)."""
    made_on = hardware_from(getattr(plan, "hardware", None))
    if made_on is None:
        return "it records no hardware fingerprint"
    if made_on.id == here.id:
        return None
    return f"it was made on {made_on.describe()} ({'; '.join(differences(made_on, here))})"


def fit_plan(spec_path: str | Path, plan: Any, policy: str = "replan", *, where: str = "plan",
             progress: bool = True, hardware: Hardware | None = None,
             cache_dir: Path | None = None, say: Callable[[str], None] = _print,
             precision: str | None = None) -> Any:
    """`plan` if it fits this machine (or `policy` is reuse); else a new plan (replan) or
    PlanError (fail). Messages go through `say`. `precision` (auto, fp32) overrides the
    old plan's precision mode for a re-plan."""
    if policy not in PLAN_POLICIES:
        raise PlanError(f"--plan-policy: '{policy}' is not one of {', '.join(PLAN_POLICIES)}")
    here = hardware or current_hardware()
    why = mismatch(plan, here)
    if why is None:
        return plan
    message = f"{where}: {why}; this machine: {here.describe()}"
    if hardware_from(getattr(plan, "hardware", None)) is None and policy == "replan":
        # Hand-written plans and plans older than fingerprints: nothing says they are
        # foreign, so they are kept (fail still refuses them).
        say(f"{message}; reusing it (--plan-policy fail refuses plans without one)")
        return plan
    if policy == "reuse":
        say(f"{message}; reusing it as is (--plan-policy reuse)")
        return plan
    if policy == "fail":
        raise PlanError(f"{message}; refusing it (--plan-policy fail): re-plan with "
                        "--plan-policy replan or `enserve plan`")
    say(f"{message}; re-planning for this machine (--plan-policy replan; profiles are cached)")
    return replan(spec_path, plan, progress=progress, hardware=here, cache_dir=cache_dir,
                  precision=precision)


def replan(spec_path: str | Path, old: Any, *, progress: bool = True,
           hardware: Hardware | None = None, cache_dir: Path | None = None,
           precision: str | None = None) -> Any:
    """Profile `spec_path` here for what `old` used, and plan it again; in `precision`
    mode (auto, fp32) when given, else in the mode `old` was planned in."""
    from enserve.formats.groups import is_fused_variant
    from enserve.plan.precision import choose_precision
    from enserve.profiler import profile_spec
    from enserve.spec import load_spec
    from enserve.variants.names import REDUCED_PRECISION, default_variant

    spec = load_spec(spec_path)
    fused = any(is_fused_variant(i.variant or "") for i in old.instances)
    variants = {default_variant(m) for m in spec.members}
    variants |= {i.variant for i in old.instances
                 if i.variant and not is_fused_variant(i.variant)
                 and i.variant not in REDUCED_PRECISION}
    if precision not in (None, "auto", "fp32"):
        raise PlanError(f"--precision: '{precision}' is not one of auto, fp32")
    precision = precision or str((old.precision or {}).get("mode", "auto"))
    batch_sizes = sorted({*REPLAN_BATCH_SIZES, *(i.batch_size for i in old.instances)})
    profile = profile_spec(spec_path, batch_sizes=batch_sizes, variants=sorted(variants),
                           cache_dir=cache_dir, progress=progress,
                           fusion="auto" if fused else "off",
                           precision="fp32" if precision == "fp32" else "auto",
                           hardware=hardware)
    decision = choose_precision(profile, "fp32" if precision == "fp32" else "auto",
                                "auto" if fused else "off", old.algorithm, old.objective)
    return decision.plan
