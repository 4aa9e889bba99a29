"""`adaptive_profile_spec`: the adaptive profiler on this machine's devices.

Admission checks and measurements are the full profiler's (`enserve.profiler.run`): the
same child processes, cache and entry format; only which settings get measured differs
(`enserve.profiler.adaptive`). Fused groups are not profiled here (use `enserve profile
--fusion` for them).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from enserve.devices import Device
from enserve.errors import ProfileError
from enserve.formats.plan import Plan
from enserve.formats.profile import Profile
from enserve.hardware import current_hardware
from enserve.plan import Constraints, plan
from enserve.profiler.adaptive import AdaptiveProfiler, AdaptiveResult, Grid, Setting
from enserve.profiler.cache import ResultCache, cpu_model
from enserve.profiler.child import MAX_SECONDS_PER_BATCH, load_average
from enserve.profiler.run import RunStats, _progress, _RunPlan
from enserve.profiler.settings import (
    DEFAULT_BATCH_SIZES,
    check_arguments,
    select_devices,
    shares_for,
    variants_for,
)
from enserve.spec import load_spec
from enserve.variants.fingerprint import default_cache_dir, library_versions, member_fingerprint
from enserve.variants.names import default_variant

DEFAULT_BUDGET_S = 60.0
# Every exact variant but `export` (slow to build, never faster than the others here):
# admission checks (exports included) are most of a first profile's time.
ADAPTIVE_VARIANTS = ("eager", "channels_last", "torchscript", "onnx")
ADAPTIVE_REPEATS = 5
ADAPTIVE_WARMUP = 1


class _NoBar:
    """Stands in for a rich progress bar where `_RunPlan` wants one."""

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        pass

    def advance(self, *args: Any, **kwargs: Any) -> None:
        pass


def adaptive_profile_spec(
    spec_path: str | Path,
    devices: Sequence[Device | str] | None = None,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    shares: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
    variants: Sequence[str] | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
    repeats: int = ADAPTIVE_REPEATS,
    warmup: int = ADAPTIVE_WARMUP,
    max_seconds: float = MAX_SECONDS_PER_BATCH,
    refresh: bool = False,
    algorithm: str = "greedy",
    objective: str = "throughput",
    constraints: Constraints | None = None,
    budget_s: float | None = DEFAULT_BUDGET_S,
    margin: float = 0.1,
) -> tuple[dict[str, Any], AdaptiveResult, RunStats]:
    """Profile `spec_path` adaptively; returns (profile dict, result, run statistics).

    `variants` default: `ADAPTIVE_VARIANTS` (each screened at one setting). The plan in
    the result is the one the refinement converged to (or the last, when `budget_s` ran
    out); the profile holds measured entries and `"modelled": true` ones.
    """
    variants = list(variants) if variants is not None else list(ADAPTIVE_VARIANTS)
    check_arguments(variants, batch_sizes, repeats, warmup)
    spec_path = Path(spec_path)
    spec = load_spec(spec_path)
    spec_file = str(spec_path / "ensemble.yaml" if spec_path.is_dir() else spec_path)
    chosen = select_devices(devices)
    cache = ResultCache(Path(cache_dir) if cache_dir is not None else default_cache_dir())
    notes: list[str] = []
    stats = RunStats()
    shares_by_device = {d.id: shares_for(d, shares, notes) for d in chosen}
    hardware = current_hardware()  # keys the cache; stored in the profile
    runner = _RunPlan(spec, spec_file, cache, sorted({int(b) for b in batch_sizes}), repeats,
                      warmup, max_seconds, stats, notes, refresh, hardware)
    member_variants = {m.name: variants_for(m, variants) or [default_variant(m)]
                       for m in spec.members}
    started = time.monotonic()
    with _progress(progress) as bar:
        task = bar.add_task("admission checks", total=None)
        checks = runner.run_checks(member_variants, bar)
        admitted = {m: [v for v in vs if checks[(m, v)]["admitted"]]
                    for m, vs in member_variants.items()}
        empty = [m for m, vs in admitted.items() if not vs]
        if empty:
            raise ProfileError(f"no admitted variant for member(s) {', '.join(empty)}: "
                               + "; ".join(notes))
        bar.update(task, description="measuring", total=0, completed=0)
        by_id = {d.id: d for d in chosen}

        def measure(settings: Sequence[Setting]) -> list[dict[str, Any]]:
            return _measure(runner, checks, by_id, settings)

        def report(what: str, count: int) -> None:
            current = bar.tasks[0].total or 0
            bar.update(task, description=what, total=current + count)

        def planner(profile: Profile) -> Plan:
            return plan(profile, algorithm, objective, constraints)

        skeleton = _skeleton(spec, chosen, member_variants, admitted, checks)
        grid = Grid(batch_sizes=tuple(runner.batches),
                    shares={d: tuple(s) for d, s in shares_by_device.items()},
                    variants={m: tuple(vs) for m, vs in admitted.items()},
                    kinds={d.id: d.kind for d in chosen})
        before = stats.measured_entries + stats.cached_entries

        def counted(settings: Sequence[Setting]) -> list[dict[str, Any]]:
            out = measure(settings)
            bar.update(task, completed=stats.measured_entries + stats.cached_entries - before)
            return out

        adaptive = AdaptiveProfiler(skeleton, grid, counted, planner, objective=objective,
                                    margin=margin, budget_s=budget_s, progress=report)
        result = adaptive.run()
    data = result.profile.to_json_dict()
    data["hardware"] = hardware.to_json_dict()
    data["meta"] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host_cpu": cpu_model(),
        "versions": library_versions(),
        "repeats": repeats, "warmup": warmup,
        "adaptive": {**result.summary(), "grid_settings": grid.size(),
                     "wall_s": round(time.monotonic() - started, 3),
                     "budget_s": budget_s, "margin": margin},
        "load_average_1min": load_average(),
        "notes": notes + stats.errors,
    }
    return data, result, stats


def _measure(runner: _RunPlan, checks: Mapping[tuple[str, str], Mapping[str, Any]],
             devices: Mapping[str, Device], settings: Sequence[Setting]) -> list[dict[str, Any]]:
    """Measure `settings`, one child per (member, variant, device, share) with its batches."""
    groups: dict[tuple[str, str, str, float], list[int]] = {}
    for member, variant, device, share, batch in settings:
        groups.setdefault((member, variant or "", device, share), []).append(batch)
    out: list[dict[str, Any]] = []
    for (member, variant, device, share), batches in groups.items():
        runner.batches = sorted(set(batches))
        out += runner.run_measurements({member: [variant]}, checks, [devices[device]],
                                       {device: [share]}, _NoBar())
    return out


def _skeleton(spec: Any, devices: Sequence[Device], member_variants: Mapping[str, list[str]],
              admitted: Mapping[str, list[str]],
              checks: Mapping[tuple[str, str], Mapping[str, Any]]) -> dict[str, Any]:
    members = []
    for m in spec.members:
        names = admitted[m.name]
        members.append({
            "name": m.name,
            "default_variant": default_variant(m) if default_variant(m) in names else names[0],
            "variants": names,
            "fingerprint": member_fingerprint(spec, m),
            "param_bytes": next((checks[(m.name, v)].get("weights_bytes") for v in names), None),
            "checks": [dict(checks[(m.name, v)]) for v in member_variants[m.name]],
        })
    return {"version": 1, "ensemble": spec.name, "devices": [d.to_dict() for d in devices],
            "members": members}


__all__ = ["DEFAULT_BUDGET_S", "adaptive_profile_spec"]
