"""`profile_spec`: check variants, measure what the cache lacks, assemble the profile."""

from __future__ import annotations

import os
import queue
import statistics
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enserve.devices import Device
from enserve.errors import ProfileError
from enserve.formats.groups import KIND_VARIANTS, group_fingerprint, is_fused_variant, parse_group_name
from enserve.formats.profile import Profile, profile_from_dict
from enserve.fusion.candidates import FusionGroup, fusion_candidates
from enserve.hardware import Hardware, current_hardware
from enserve.plan.fusion import FUSION_MODES
from enserve.profiler import accuracy as precision_step
from enserve.profiler.cache import ResultCache, cpu_model, device_identity
from enserve.profiler.child import (
    MAX_SECONDS_PER_BATCH,
    Checked,
    ChildError,
    ChildMessage,
    Measured,
    Task,
    load_average,
    run_task,
)
from enserve.profiler.settings import (
    DEFAULT_BATCH_SIZES,
    check_arguments,
    select_devices,
    shares_for,
    variants_for,
)
from enserve.spec import EnsembleSpec, load_spec
from enserve.variants.fingerprint import default_cache_dir, library_versions, member_fingerprint
from enserve.variants.names import REDUCED_PRECISION, available_variants, default_variant

PARALLEL_CHECKS = 4  # admission checks run at once (at most one per usable core)


def _usable_cores() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


@dataclass
class RunStats:
    """What a profiling run did: how many entries came from the cache and how many were measured."""

    cached_entries: int = 0
    measured_entries: int = 0
    cached_checks: int = 0
    run_checks: int = 0
    errors: list[str] = field(default_factory=list)
    check_s: float = 0.0  # wall seconds in admission checks (exports included)
    measure_s: float = 0.0  # wall seconds in measurements


def _progress(enabled: bool) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    # Fixed-width columns first and the (long, changing) setting last, so the bar stays put.
    return Progress(BarColumn(bar_width=28), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("left"), TimeRemainingColumn(), TextColumn("{task.description}"),
                    disable=not enabled, transient=False)


def profile_spec(
    spec_path: str | Path,
    devices: Sequence[Device | str] | None = None,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    shares: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
    variants: Sequence[str] | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
    repeats: int = 10,
    warmup: int = 2,
    max_seconds: float = MAX_SECONDS_PER_BATCH,
    refresh: bool = False,
    fusion: str = "auto",
    *,
    precision: str = "auto",
    hardware: Hardware | None = None,
) -> Profile:
    """Profile every member of the spec; returns a `Profile` (see `enserve.formats.profile`).

    `devices`: ids or `Device`s among those detected here (default: all detected).
    `shares`: CPU core counts (a sequence), or a mapping from device id or kind to shares
    (default: see `default_cpu_shares`; GPUs 25/50/100 with MPS, else 100).
    `variants`: names to try per member (default: each member's default variant); names a
    member can't run are skipped; `bf16` is admitted only because it was asked for.
    Entries come from the cache where possible (`refresh=True` measures them again and
    overwrites the cache); `profile.meta.notes` lists what was skipped or rejected.
    `fusion` "auto"/"on" also profiles every fusion candidate (`fusion_candidates`) as a
    member named after the group, with `covers` listing its members ("on" fails when the
    spec has none); "off" profiles the members only.
    `precision` "auto" adds the reduced-precision variants (bf16, int8, fp16) this machine
    runs fast when the spec has an accuracy section, admitted by the ensemble's answers
    on its calibration set (`profile.accuracy`); "fp32" profiles none. `hardware`
    (default: this machine's fingerprint) is stored in the profile and keys the cache.
    """
    data, _ = profile_spec_dict(spec_path, devices, batch_sizes, shares, variants, cache_dir,
                                progress, repeats, warmup, max_seconds, refresh, fusion,
                                precision=precision, hardware=hardware)
    return profile_from_dict(data)


def profile_spec_dict(
    spec_path: str | Path,
    devices: Sequence[Device | str] | None = None,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    shares: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
    variants: Sequence[str] | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
    repeats: int = 10,
    warmup: int = 2,
    max_seconds: float = MAX_SECONDS_PER_BATCH,
    refresh: bool = False,
    fusion: str = "auto",
    *,
    precision: str = "auto",
    hardware: Hardware | None = None,
) -> tuple[dict[str, Any], RunStats]:
    """`profile_spec` as a plain JSON-ready dict, plus statistics about the run."""
    check_arguments(variants, batch_sizes, repeats, warmup)
    if precision not in ("auto", "fp32"):
        raise ProfileError(f"--precision: '{precision}' is not one of auto, fp32")
    hardware = hardware or current_hardware()
    spec_path = Path(spec_path)
    spec = load_spec(spec_path)
    spec_file = str(spec_path / "ensemble.yaml" if spec_path.is_dir() else spec_path)
    chosen_devices = select_devices(devices)
    cache = ResultCache(Path(cache_dir) if cache_dir is not None else default_cache_dir())
    notes: list[str] = []
    stats = RunStats()
    batches = sorted({int(b) for b in batch_sizes})
    shares_by_device = {d.id: shares_for(d, shares, notes) for d in chosen_devices}
    plan = _RunPlan(spec, spec_file, cache, batches, repeats, warmup, max_seconds, stats, notes,
                    refresh, hardware)

    member_variants = {m.name: variants_for(m, variants) for m in spec.members}
    for m in spec.members:
        skipped = sorted(set(variants or ()) - set(member_variants[m.name]))
        if skipped:
            notes.append(f"{m.name}: cannot run as {', '.join(skipped)} (source {m.kind})")
        if not member_variants[m.name]:
            raise ProfileError(f"--variants: member '{m.name}' can run none of "
                               f"{', '.join(variants or ())}; it can run "
                               f"{', '.join(available_variants(m, include_opt_in=True))}")
    precision_step.choose_reduced_variants(spec, member_variants, variants, precision, hardware,
                                           [d.id for d in chosen_devices], notes)
    groups = _fusion_groups(spec, fusion, notes)
    for g in groups:
        member_variants[g.name] = list(KIND_VARIANTS[g.kind])
    load_before = load_average()
    with _progress(progress) as bar:
        checks = plan.run_checks(member_variants, bar)
        accuracy = plan.run_accuracy(member_variants, checks, bar)
        entries = plan.run_measurements(member_variants, checks, chosen_devices,
                                        shares_by_device, bar)
    notes.extend(_contention_notes(entries))
    members_out = []
    for m in spec.members:
        admitted = [v for v in member_variants[m.name] if checks[(m.name, v)]["admitted"]]
        members_out.append({
            "name": m.name,
            "default_variant": default_variant(m),
            "variants": admitted,
            "fingerprint": member_fingerprint(spec, m),
            "param_bytes": next((checks[(m.name, v)].get("weights_bytes") for v in admitted),
                                None),
            "checks": [checks[(m.name, v)] for v in member_variants[m.name]],
        })
    members_out += _group_members(spec, groups, member_variants, checks, entries)
    data: dict[str, Any] = {
        "version": 1,
        "ensemble": spec.name,
        "devices": [d.to_dict() for d in chosen_devices],
        "members": members_out,
        "entries": entries,
        "hardware": hardware.to_json_dict(),
        **({"accuracy": accuracy} if accuracy is not None else {}),
        "meta": {
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host_cpu": cpu_model(),
            "versions": library_versions(),
            "repeats": repeats, "warmup": warmup,
            "load_average_1min": {"start": load_before, "end": load_average()},
            "latency": "median seconds per batch of member(batch) incl. preprocessing",
            "memory": "peak RSS growth of the instance's process (CPU) / peak torch "
                      "allocation (GPU): weights + working memory",
            "notes": notes + stats.errors,
        },
    }
    return data, stats


@dataclass
class _RunPlan:
    """Works out which checks and entries are missing from the cache and runs them."""

    spec: EnsembleSpec
    spec_file: str
    cache: ResultCache
    batches: list[int]
    repeats: int
    warmup: int
    max_seconds: float
    stats: RunStats
    notes: list[str]
    refresh: bool = False
    hardware: Hardware | None = None
    nice: int = 0  # children's added niceness (background refinement)
    _int8_key: str | None = field(default=None, init=False, repr=False)

    def _variant_key(self, variant: str) -> str:
        """`variant` as it keys cached checks and entries: int8 with the digest of the rows
        it is calibrated on (another calibration subset is another model)."""
        if variant != "int8" or self.spec.accuracy is None:
            return variant
        if self._int8_key is None:
            from enserve.errors import SpecError
            from enserve.precision.calibration import load_calibration, quantization_set

            try:
                digest = quantization_set(self.spec, load_calibration(self.spec)).digest
                self._int8_key = f"int8@{digest}"
            except SpecError:  # the check reports it
                self._int8_key = variant
        return self._int8_key

    def _fingerprint(self, member: str) -> str:
        """A member's fingerprint, or a fused group's (kind + its members')."""
        group = parse_group_name(member)
        if group is None:
            return member_fingerprint(self.spec, member)
        return group_fingerprint([member_fingerprint(self.spec, m) for m in group.covers],
                                 group.kind, "")

    def _check_key(self, member: str, variant: str) -> str:
        return self.cache.key(kind="check", fp=self._fingerprint(member),
                              variant=self._variant_key(variant),
                              opt_in=variant in REDUCED_PRECISION)

    def run_checks(self, member_variants: Mapping[str, list[str]],
                   bar: Any) -> dict[tuple[str, str], dict[str, Any]]:
        results: dict[tuple[str, str], dict[str, Any]] = {}
        todo: list[tuple[str, str]] = []
        for name, names in member_variants.items():
            for v in names:
                hit = self.cache.get("checks", self._check_key(name, v))
                if hit is not None:
                    results[(name, v)] = hit
                    self.stats.cached_checks += 1
                else:
                    todo.append((name, v))
        if not todo:
            return results
        task_id = bar.add_task("admission checks", total=len(todo))
        # Checks are not timed: run them side by side, one per core (each child is pinned
        # to its own core, single-threaded), at most PARALLEL_CHECKS at once.
        cores = _usable_cores()[:PARALLEL_CHECKS]
        free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for core in cores:
            free.put(core)
        lock = threading.Lock()

        def check(name: str, v: str) -> None:
            got: dict[str, Any] = {}
            errors: list[str] = []

            def on_message(msg: ChildMessage) -> None:
                if isinstance(msg, Checked):
                    got.update(msg.result)
                elif isinstance(msg, ChildError):
                    errors.append(msg.message)

            core = free.get()
            try:
                bar.update(task_id, description=f"admission check: {name} as {v}")
                run_task(Task("check", self.spec_file, name, v,
                              cache_dir=str(self.cache.root.parent),
                              allow_reduced_precision=v in REDUCED_PRECISION, nice=self.nice,
                              cores=(core,)), on_message)
            finally:
                free.put(core)
            if not got:
                got = {"member": name, "variant": v, "admitted": False, "rel_error": None,
                       "reason": "; ".join(errors) or "no result"}
            else:
                self.cache.put("checks", self._check_key(name, v), got)
            with lock:
                self.stats.run_checks += 1
                results[(name, v)] = got
                bar.advance(task_id)

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=max(1, len(cores))) as pool:
            for future in [pool.submit(check, name, v) for name, v in todo]:
                future.result()
        self.stats.check_s += time.monotonic() - started
        for name, v in todo:  # in a stable order, whatever order the checks finished in
            if not results[(name, v)]["admitted"]:
                self.notes.append(f"{name}: variant '{v}' not admitted: "
                                  f"{results[(name, v)].get('reason')}")
        bar.update(task_id, description=f"admission checks done ({len(todo)} run)")
        return results

    def run_accuracy(self, member_variants: Mapping[str, list[str]],
                     checks: dict[tuple[str, str], dict[str, Any]],
                     bar: Any) -> dict[str, Any] | None:
        """Ensemble-level admission of the reduced variants that passed their own check."""
        precision_step.without_accuracy_section(self.spec, checks, self.notes)
        reduced = {m: [v for v in names if v in REDUCED_PRECISION and checks[(m, v)]["admitted"]]
                   for m, names in member_variants.items() if parse_group_name(m) is None}
        if not any(reduced.values()):
            return None
        from enserve.precision.calibration import held_out, load_calibration

        digest = held_out(self.spec, load_calibration(self.spec)).digest  # rows measured on
        todo = [(m.name, precision_step.REFERENCE) for m in self.spec.members]
        todo += [(m, v) for m, names in reduced.items() for v in names]
        task_id = bar.add_task("calibration set", total=len(todo))
        hardware_id = self.hardware.id if self.hardware else ""
        cores = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                    else (os.cpu_count() or 1))

        def logits_for(member: str, variant: str) -> Any:
            import numpy as np

            key = self.cache.key(kind="calibration", fp=self._fingerprint(member),
                                 variant=variant, calibration=digest, hardware=hardware_id)
            path = self.cache.root / "calibration" / f"{key}.npy"
            if self.refresh or not path.is_file():
                bar.update(task_id, description=f"calibration set: {member} as {variant}")
                path.parent.mkdir(parents=True, exist_ok=True)
                errors: list[str] = []
                run_task(Task("calibrate", self.spec_file, member, variant, share=float(cores),
                              cache_dir=str(self.cache.root.parent), out=str(path)),
                         lambda msg: errors.append(msg.message)
                         if isinstance(msg, ChildError) else None)
                if errors:
                    self.notes.append(f"{member} as {variant}: calibration run failed: "
                                      f"{'; '.join(errors)}")
            bar.advance(task_id)
            try:
                return np.load(path, allow_pickle=False)
            except (OSError, ValueError):
                return None

        section = precision_step.assess_precisions(self.spec, reduced, logits_for)
        precision_step.apply_verdict(section, checks, self.notes)
        return section

    def _entry_key(self, member: str, variant: str, device: Device, share: float,
                   batch: int) -> str:
        return self.cache.key(kind="entry", fp=self._fingerprint(member),
                              device=device_identity(device),
                              variant=self._variant_key(variant), share=share,
                              batch=batch, repeats=self.repeats, warmup=self.warmup,
                              hardware=self.hardware.id if self.hardware else None)

    def run_measurements(self, member_variants: Mapping[str, list[str]],
                         checks: Mapping[tuple[str, str], Mapping[str, Any]],
                         devices: Sequence[Device], shares_by_device: Mapping[str, list[float]],
                         bar: Any) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        tasks: list[tuple[Task, Device, int | None]] = []
        for name, names in member_variants.items():
            for v in names:
                check = checks[(name, v)]
                if not check["admitted"]:
                    continue
                weights = check.get("weights_bytes")
                for device in devices:
                    if is_fused_variant(v) and device.kind != "cpu":
                        continue  # fused groups run on the CPU only
                    if self.hardware is not None and not self.hardware.runs_fast(v, device.id):
                        continue  # reduced precision this device does not run fast
                    for share in shares_by_device[device.id]:
                        missing = []
                        for b in self.batches:
                            hit = None if self.refresh else self.cache.get(
                                "entries", self._entry_key(name, v, device, share, b))
                            if hit is not None:
                                entries.append(hit)
                                self.stats.cached_entries += 1
                            else:
                                missing.append(b)
                        if missing:
                            task = Task("measure", self.spec_file, name, v, device.id, share,
                                         tuple(missing), self.repeats, self.warmup,
                                         str(self.cache.root.parent),
                                         use_mps=device.kind == "cuda" and share < 100,
                                         max_seconds=self.max_seconds, nice=self.nice)
                            tasks.append((task, device, weights))
        if not tasks:
            return _sorted_entries(entries)
        task_id = bar.add_task("measuring", total=sum(len(t.batch_sizes) for t, _, _ in tasks))
        for task, device, weights in tasks:
            bar.update(task_id, description=f"measuring {task.member} as {task.variant} on "
                                            f"{device.id}, share {task.share:g}")

            def on_message(msg: ChildMessage, device: Device = device,
                           weights: int | None = weights, task: Task = task) -> None:
                if isinstance(msg, Measured):
                    entry = dict(msg.entry)
                    entry["share"] = _number(entry["share"])
                    if weights is not None:
                        entry["weights_bytes"] = weights
                        entry["memory_bytes"] = max(entry["memory_bytes"], weights)
                    key = self._entry_key(entry["member"], entry["variant"], device,
                                          float(entry["share"]), entry["batch_size"])
                    self.cache.put("entries", key, entry)
                    entries.append(entry)
                    self.stats.measured_entries += 1
                    bar.advance(task_id)
                elif isinstance(msg, ChildError):
                    self.stats.errors.append(
                        f"{task.member} as {task.variant} on {device.id} share "
                        f"{task.share:g}: {msg.message}")

            started = time.monotonic()
            run_task(task, on_message)
            self.stats.measure_s += time.monotonic() - started
        bar.update(task_id, description=f"measured {len(tasks)} settings")
        return _sorted_entries(entries)


def _fusion_groups(spec: EnsembleSpec, fusion: str, notes: list[str]) -> list[FusionGroup]:
    """The fusion candidates to profile under `fusion` ("auto", "on", "off")."""
    if fusion not in FUSION_MODES:
        raise ProfileError(f"--fusion: '{fusion}' is not one of {', '.join(FUSION_MODES)}")
    if fusion == "off":
        return []
    groups = []
    for g in fusion_candidates(spec):
        if len({spec.input_for(spec.member(m)).name for m in g.members}) != 1:
            notes.append(f"{g.name}: members read different inputs; not profiled")
            continue
        groups.append(g)
    if fusion == "on" and not groups:
        raise ProfileError(f"--fusion on: no members of '{spec.name}' can be fused (fx needs "
                           "two PyTorch members, horizontal two of one architecture, onnx "
                           "two ONNX members)")
    return groups


def _group_members(spec: EnsembleSpec, groups: Sequence[FusionGroup],
                   member_variants: Mapping[str, list[str]],
                   checks: Mapping[tuple[str, str], Mapping[str, Any]],
                   entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Profile members for the fused groups that got entries (admitted and measured)."""
    measured = {e["member"] for e in entries}
    out = []
    for g in groups:
        if g.name not in measured:
            continue
        admitted = [v for v in member_variants[g.name] if checks[(g.name, v)]["admitted"]]
        out.append({
            "name": g.name,
            "covers": list(g.members),
            "fusion_kind": g.kind,
            "default_variant": admitted[0],
            "variants": admitted,
            "fingerprint": group_fingerprint([member_fingerprint(spec, m) for m in g.members],
                                             g.kind, ""),
            "param_bytes": checks[(g.name, admitted[0])].get("weights_bytes"),
            "checks": [dict(checks[(g.name, v)]) for v in member_variants[g.name]],
        })
    return out


def _contention_notes(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """A warning when other processes kept the cores busy while entries were measured."""
    loads = [float(e["load_average_1min"]) for e in entries
             if e.get("load_average_1min") is not None]
    cores = os.cpu_count() or 1
    if not loads or max(loads) <= cores:
        return []
    return [f"1-min load average up to {max(loads):.1f} on {cores} cores while measuring "
            f"(median {statistics.median(loads):.1f}): latencies include contention from "
            "other processes; re-measure on a quiet machine with --refresh"]


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def _sorted_entries(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(entries, key=lambda e: (e["member"], e.get("variant") or "", e["device"],
                                          e["share"], e["batch_size"]))
