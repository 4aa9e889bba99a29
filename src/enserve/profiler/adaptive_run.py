"""`adaptive_profile_spec`: the adaptive profiler on this machine's devices.

Admission checks and measurements are the full profiler's (`enserve.profiler.run`): the
same child processes, cache and entry format; only which settings get measured differs
(`enserve.profiler.adaptive`). Fused groups are not profiled here (use `enserve profile
--fusion` for them).

Reduced precision (`precision` "auto", a spec with an accuracy section): the reduced
variants this machine runs fast are added as the full profiler adds them, deferred (unless
their check and screening point are cached): whenever a call admits some, the ensemble-level
accuracy step runs over every reduced variant checked so far (cached logits cost nothing)
and only those an admitted mix uses are screened. With an accuracy section in the profile
the loop plans with `choose_precision` (admitted mixes only).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from enserve.devices import Device
from enserve.errors import ProfileError
from enserve.formats.plan import Plan
from enserve.formats.profile import Profile
from enserve.hardware import Hardware, current_hardware
from enserve.plan import Constraints, plan
from enserve.plan.precision import PRECISION_MODES, accuracy_section, choose_precision
from enserve.profiler import accuracy as precision_step
from enserve.profiler.adaptive import AdaptiveProfiler, AdaptiveResult, Grid, Setting
from enserve.profiler.cache import ResultCache, cpu_model
from enserve.profiler.child import load_average
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
from enserve.variants.names import REDUCED_PRECISION, default_variant

DEFAULT_BUDGET_S = 60.0
# Share of the budget kept back from measuring for what follows the last measurement (the
# plan made again, the profile written, a measuring child slower than estimated): with the
# default 60 s, measuring stops by 52.2 s. Without it the first plan landed at 59.2-60.0 s.
BUDGET_RESERVE = 0.13
# Every exact variant but `export` (slow to build, never faster than the others here).
ADAPTIVE_VARIANTS = ("eager", "channels_last", "torchscript", "onnx")
# Screened for the first plan; the other variants asked for are admitted and screened
# after it (in the background, or in the foreground while the budget lasts). On the
# 2-core EPYC the ONNX Runtime variant was the fastest of the four for every imagenet6
# member at every setting. A member that cannot run it (or fails its check), and every
# member when a GPU is profiled, also gets its default variant first.
FIRST_VARIANTS = ("onnx",)
ADAPTIVE_REPEATS = 5
ADAPTIVE_WARMUP = 1
# Stop repeating a setting after this long (at least 3 timed runs): slow batches
# dominate a first profile's time and their medians are steady.
ADAPTIVE_MAX_SECONDS = 2.0
BACKGROUND_NICE = 10


class _NoBar:
    """Stands in for a rich progress bar where `_RunPlan` wants one."""

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        pass

    def advance(self, *args: Any, **kwargs: Any) -> None:
        pass


class AdaptiveSession:
    """The adaptive profiler on this machine, kept so that refinement can go on after the
    first plan (`enserve.profiler.background`). `first_plan()` admits and screens the
    first variants, then refines within the budget (counted from the start, admission
    checks included); `extend()` admits the variants put off. `precision` "auto" adds the
    reduced-precision variants `hardware` (default: this machine's) runs fast when the
    spec has an accuracy section, "fp32" none."""

    def __init__(self, spec_path: str | Path, devices: Sequence[Device | str] | None = None,
                 batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
                 shares: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
                 variants: Sequence[str] | None = None,
                 first_variants: Sequence[str] | None = FIRST_VARIANTS,
                 cache_dir: Path | None = None, repeats: int = ADAPTIVE_REPEATS,
                 warmup: int = ADAPTIVE_WARMUP, max_seconds: float = ADAPTIVE_MAX_SECONDS,
                 refresh: bool = False, algorithm: str = "greedy",
                 objective: str = "throughput", constraints: Constraints | None = None,
                 budget_s: float | None = DEFAULT_BUDGET_S, margin: float = 0.1,
                 precision: str = "auto", hardware: Hardware | None = None) -> None:
        if precision not in PRECISION_MODES:
            raise ProfileError(f"--precision: '{precision}' is not one of "
                               f"{', '.join(PRECISION_MODES)}")
        self.precision = precision
        self.variants = list(variants) if variants is not None else list(ADAPTIVE_VARIANTS)
        check_arguments(self.variants, batch_sizes, repeats, warmup)
        self.started = time.monotonic()
        spec_path = Path(spec_path)
        self.spec = load_spec(spec_path)
        spec_file = str(spec_path / "ensemble.yaml" if spec_path.is_dir() else spec_path)
        self.devices = select_devices(devices)
        self.cache = ResultCache(Path(cache_dir) if cache_dir is not None
                                 else default_cache_dir())
        self.notes: list[str] = []
        self.stats = RunStats()
        self.shares = {d.id: shares_for(d, shares, self.notes) for d in self.devices}
        self.hardware = hardware or current_hardware()  # keys the cache; in the profile
        self.runner = _RunPlan(self.spec, spec_file, self.cache,
                               sorted({int(b) for b in batch_sizes}), repeats, warmup,
                               max_seconds, self.stats, self.notes, refresh, self.hardware)
        self.algorithm, self.objective, self.constraints = algorithm, objective, constraints
        self.budget_s, self.margin, self.refresh = budget_s, margin, refresh
        wanted = {m.name: variants_for(m, self.variants) or [default_variant(m)]
                  for m in self.spec.members}
        precision_step.choose_reduced_variants(self.spec, wanted, variants, precision,
                                               self.hardware, [d.id for d in self.devices],
                                               self.notes)
        self.accuracy: dict[str, Any] | None = None  # the ensemble-level verdict so far
        self.wanted = wanted
        first = (set(first_variants) if first_variants is not None
                 else {v for vs in wanted.values() for v in vs})
        gpu = any(d.kind != "cpu" for d in self.devices)
        self.first_variants = {m.name: [v for v in wanted[m.name]
                                        if v in first or self._known(m.name, v)
                                        or (gpu and v == default_variant(m))]
                               or [_default_of(m, wanted[m.name])]
                               for m in self.spec.members}
        self.deferred = {m: [v for v in vs if v not in self.first_variants[m]]
                         for m, vs in wanted.items()}
        self.checks: dict[tuple[str, str], dict[str, Any]] = {}
        self.profiler: AdaptiveProfiler | None = None
        self.grid: Grid | None = None

    def _known(self, member: str, variant: str) -> bool:
        """Checked and screened before (a later start): free to include."""
        if self.refresh or self.cache.get("checks", self.runner._check_key(member, variant)) \
                is None:
            return False
        b = min(self.runner.batches)
        return all(self.cache.get("entries", self.runner._entry_key(
            member, variant, d, max(self.shares[d.id]), b)) is not None for d in self.devices)

    def remaining_s(self) -> float | None:
        """Seconds left for measuring: the budget less `BUDGET_RESERVE` of it, from the start."""
        if self.budget_s is None:
            return None
        return max(0.0, self.budget_s * (1 - BUDGET_RESERVE) - (time.monotonic() - self.started))

    def _admit(self, member_variants: Mapping[str, list[str]], bar: Any) -> dict[str, list[str]]:
        """Run the checks; reduced variants also need the ensemble's verdict (`_assess`)."""
        self.checks.update(self.runner.run_checks(member_variants, bar))
        if any(v in REDUCED_PRECISION for vs in member_variants.values() for v in vs):
            self._assess(bar)
        return {m: [v for v in vs if self.checks[(m, v)]["admitted"]]
                for m, vs in member_variants.items()}

    def _assess(self, bar: Any) -> None:
        """The ensemble-level accuracy step over every reduced variant checked so far (their
        calibration logits are cached, so only the new ones cost a run)."""
        reduced: dict[str, list[str]] = {m.name: [] for m in self.spec.members}
        for (m, v), check in self.checks.items():
            if v in REDUCED_PRECISION and check["admitted"]:
                reduced[m].append(v)
        section = self.runner.run_accuracy(reduced, self.checks, bar)
        self.accuracy = section or self.accuracy

    def skeleton(self) -> dict[str, Any]:
        # every variant asked for that was checked (deferred ones leave `deferred` when
        # they are admitted)
        every = {m: [v for v in vs if (m, v) in self.checks] for m, vs in self.wanted.items()}
        admitted = {m: [v for v in vs if self.checks[(m, v)]["admitted"]]
                    for m, vs in every.items()}
        out = _skeleton(self.spec, self.devices, every, admitted, self.checks)
        return {**out, "accuracy": self.accuracy} if self.accuracy is not None else out

    def first_plan(self, progress: bool = True,
                   on_plan: Callable[[Plan], None] | None = None) -> AdaptiveResult:
        """Admit, screen and seed the first variants, refine within the budget."""
        with _progress(progress) as bar:
            task = bar.add_task("admission checks", total=None)
            admitted = self._admit(self.first_variants, bar)
            fallback = {m.name: [_default_of(m, _exact(self.deferred[m.name]))]
                        for m in self.spec.members
                        if not admitted[m.name] and self.deferred[m.name]}
            if fallback:  # the first variants failed their check: the default, now
                for m, vs in fallback.items():
                    self.first_variants[m] += vs
                    self.deferred[m] = [v for v in self.deferred[m] if v not in vs]
                admitted.update({m: vs for m, vs in self._admit(fallback, bar).items()})
            empty = [m for m, vs in admitted.items() if not vs]
            if empty:
                raise ProfileError(f"no admitted variant for member(s) {', '.join(empty)}: "
                                   + "; ".join(self.notes))
            bar.update(task, description="measuring", total=0, completed=0)
            before = self.stats.measured_entries + self.stats.cached_entries

            def counted(settings: Sequence[Setting]) -> list[dict[str, Any]]:
                out = self.measure(settings)
                bar.update(task, completed=self.stats.measured_entries
                           + self.stats.cached_entries - before)
                return out

            def counted_again(settings: Sequence[Setting]) -> list[dict[str, Any]]:
                out = self.remeasure(settings)
                bar.update(task, completed=self.stats.measured_entries
                           + self.stats.cached_entries - before)
                return out

            def report(what: str, count: int) -> None:
                current = bar.tasks[0].total or 0
                bar.update(task, description=what, total=current + count)

            self.grid = Grid(batch_sizes=tuple(self.runner.batches),
                             shares={d: tuple(s) for d, s in self.shares.items()},
                             variants={m: tuple(vs) for m, vs in admitted.items()},
                             kinds={d.id: d.kind for d in self.devices})
            remaining = self.remaining_s()
            self.profiler = AdaptiveProfiler(
                self.skeleton(), self.grid, counted, self.planner, objective=self.objective,
                margin=self.margin, budget_s=remaining, remeasure=counted_again,
                progress=report, on_plan=on_plan)
            self._preload()
            result = self.profiler.run()
            # Half the budget or more left: the deferred variants now, member by member
            # while the budget lasts (the rest stay deferred).
            remaining = self.remaining_s()
            if any(self.deferred.values()) and (
                    remaining is None or (self.budget_s and remaining >= self.budget_s / 2)) \
                    and self.extend(bar, within_budget=True):
                result = self.profiler.refine()
        self.profiler.progress = None
        self.profiler.on_plan = None
        self.profiler._measure = self.measure
        self.profiler._remeasure = self.remeasure
        return result

    def extend(self, bar: Any = None, within_budget: bool = False,
               stop: Callable[[], bool] | None = None) -> list[Setting]:
        """Admit the deferred variants, screen and seed them, member by member, the
        reduced-precision ones of every member first (the largest gains where the machine
        runs them fast), stopping when the budget is spent if `within_budget`, or when
        `stop()` says so; returns what was measured."""
        assert self.profiler is not None
        done: list[Setting] = []
        for reduced in (True, False):
            for member in list(self.deferred):
                variants = [v for v in self.deferred[member]
                            if (v in REDUCED_PRECISION) == reduced]
                if not variants:
                    continue
                if (within_budget and self.profiler.over_budget()) or (stop and stop()):
                    return done
                admitted = self._admit({member: variants},
                                       bar if bar is not None else _NoBar())
                self.deferred[member] = [v for v in self.deferred[member]
                                         if v not in variants]
                self.profiler.skeleton = self.skeleton()
                if admitted[member]:
                    done += self.profiler.add_variants({member: admitted[member]})
        return done

    def _preload(self) -> None:
        """Settings of the grid already in the cache count as measured (a later start
        plans from everything an earlier refinement measured)."""
        assert self.profiler is not None and self.grid is not None
        if self.refresh:
            return
        by_id = {d.id: d for d in self.devices}
        for m, vs in self.grid.variants.items():
            for v in vs:
                for d, shares in self.grid.shares.items():
                    for s in shares:
                        for b in self.grid.batch_sizes:
                            hit = self.cache.get("entries", self.runner._entry_key(
                                m, v or "", by_id[d], s, b))
                            if hit is not None:
                                self.profiler.measured[(m, v, d, float(s), int(b))] = hit

    def measure(self, settings: Sequence[Setting]) -> list[dict[str, Any]]:
        return _measure(self.runner, self.checks, {d.id: d for d in self.devices}, settings)

    def remeasure(self, settings: Sequence[Setting]) -> list[dict[str, Any]]:
        """Measure `settings` again, past the cache (the cache keeps the newest)."""
        refresh, self.runner.refresh = self.runner.refresh, True
        try:
            return self.measure(settings)
        finally:
            self.runner.refresh = refresh

    def planner(self, profile: Profile) -> Plan:
        """The plan of `profile`; over the admitted precision mixes when it has an accuracy
        section (`choose_precision`, as `enserve plan` decides afterwards)."""
        if self.precision == "auto" and accuracy_section(profile) is not None:
            return choose_precision(profile, "auto", "off", self.algorithm, self.objective,
                                    self.constraints).plan
        return plan(profile, self.algorithm, self.objective, self.constraints)

    def data(self, result: AdaptiveResult) -> dict[str, Any]:
        """The profile of `result` as a JSON-ready dict with its `meta`."""
        assert self.grid is not None and self.profiler is not None
        data = result.profile.to_json_dict()
        data["hardware"] = self.hardware.to_json_dict()
        data["meta"] = {
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host_cpu": cpu_model(),
            "versions": library_versions(),
            "repeats": self.runner.repeats, "warmup": self.runner.warmup,
            "adaptive": {**result.summary(), "grid_settings": self.profiler.grid.size(),
                         "wall_s": round(time.monotonic() - self.started, 3),
                         "budget_s": self.budget_s, "margin": self.margin,
                         "precision": self.precision,
                         "deferred_variants": {m: vs for m, vs in self.deferred.items()
                                               if vs}},
            "load_average_1min": load_average(),
            "notes": self.notes + self.stats.errors,
        }
        return data


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
    max_seconds: float = ADAPTIVE_MAX_SECONDS,
    refresh: bool = False,
    algorithm: str = "greedy",
    objective: str = "throughput",
    constraints: Constraints | None = None,
    budget_s: float | None = DEFAULT_BUDGET_S,
    margin: float = 0.1,
    first_variants: Sequence[str] | None = FIRST_VARIANTS,
    *,
    precision: str = "auto",
    hardware: Hardware | None = None,
) -> tuple[dict[str, Any], AdaptiveResult, RunStats]:
    """Profile `spec_path` adaptively; returns (profile dict, result, run statistics).

    `variants` default: `ADAPTIVE_VARIANTS`; those outside `first_variants` (None: all)
    are admitted and screened after the first plan while `budget_s` (from the start,
    admission checks included) lasts. The plan in the result is the one the refinement
    converged to (or the last, when the budget ran out); the profile holds measured
    entries and `"modelled": true` ones. `precision` "auto" adds the reduced-precision
    variants `hardware` runs fast when the spec has an accuracy section (deferred like the
    other variants, admitted by the ensemble's answers on the held-out calibration rows;
    the profile then carries `accuracy`); "fp32" adds none.
    """
    session = AdaptiveSession(spec_path, devices, batch_sizes, shares, variants,
                              first_variants, cache_dir, repeats, warmup, max_seconds,
                              refresh, algorithm, objective, constraints, budget_s, margin,
                              precision=precision, hardware=hardware)
    result = session.first_plan(progress)
    return session.data(result), result, session.stats


def _exact(names: Sequence[str]) -> list[str]:
    """`names` without the reduced-precision ones (all of them if nothing else is left)."""
    return [v for v in names if v not in REDUCED_PRECISION] or list(names)


def _default_of(member: Any, names: Sequence[str]) -> str:
    """The member's default variant if among `names`, else the first of them."""
    return default_variant(member) if default_variant(member) in names else names[0]


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


__all__ = ["BUDGET_RESERVE", "DEFAULT_BUDGET_S", "AdaptiveSession", "adaptive_profile_spec"]
