"""The dashboard's JSON: one snapshot of what the server is doing, assembled from `/metrics`.

Every number comes from the text `/metrics` serves (parsed back by `promtext`), windowed
against earlier scrapes (`history`), plus what metrics cannot say: the repository's states,
the running instances (for the allocation matrix) and residency under the memory budget.
A metric family added to the server shows in `metrics` without any change here; the panels
pick up known names (e.g. `enserve_member_lateness_seconds` when a policy exports it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import enserve
from enserve.runtime.memory import Sampled
from enserve.server.dashboard.history import History, Scrape, Window
from enserve.server.dashboard.promtext import Samples, parse

if TYPE_CHECKING:
    from enserve.server.dataplane import DataPlane

STATES = {"READY": "loaded", "LOADING": "loading", "UNLOADING": "unloading"}


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


class DashboardState:
    """Snapshots for `GET /dashboard/state`; keeps the recent scrapes it needs for rates."""

    def __init__(self, plane: DataPlane, window_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.plane = plane
        self.clock = clock
        self.history = History(window_s)
        self.started = clock()
        self._seen_resident: set[str] = set()
        self._memory: dict[str, tuple[object, Sampled[int]]] = {}  # name -> (backend, its reading)
        self.history.add(self._scrape())  # the server's start: the base of `window=0`
        for entry in plane.repository.loaded():  # first memory readings now, not in a refresh
            self._backend_memory(entry.name, entry.backend)

    def _scrape(self) -> Scrape:
        return Scrape(self.clock(), parse(self.plane.metrics.render().decode()))

    def snapshot(self, window_s: float | None = None) -> dict[str, Any]:
        """The whole page's data; `window_s` overrides the default window (0: since start)."""
        now = self._scrape()
        window = self.history.window(now, window_s)
        self.history.add(now)
        samples = now.samples
        loaded = {e.name: e for e in self.plane.repository.loaded()}
        for gone in self._memory.keys() - loaded.keys():
            del self._memory[gone]
        backend_stats = {name: self.plane.backend_stats.of(e.backend) for name, e in loaded.items()}
        index = self.plane.repository.index()
        ensembles = [
            self._ensemble(row, loaded.get(row["name"]), backend_stats.get(row["name"], {}), window)
            for row in index
        ]
        return {
            "server": self._server(samples, window),
            "ensembles": ensembles,
            "residency": self._residency(samples, loaded, index),
            "metrics": _families(samples),
        }

    # --- sections ----------------------------------------------------------------------
    def _server(self, samples: Samples, window: Window) -> dict[str, Any]:
        plane = self.plane
        return {
            "name": "enserve",
            "version": enserve.__version__,
            "backend": plane.backend_name,
            "ready": plane.ready(),
            "time": time.time(),
            "uptime_s": self.clock() - self.started,
            "window_s": window.span_s,
            "pending": plane.admission.pending,
            "cpu_utilization": samples.total("nv_cpu_utilization"),
            "memory_used_bytes": samples.total("nv_cpu_memory_used_bytes"),
            "memory_total_bytes": samples.total("nv_cpu_memory_total_bytes"),
        }

    def _ensemble(self, row: dict[str, str], loaded: Any, stats: dict[str, Any],
                  window: Window) -> dict[str, Any]:
        name = row["name"]
        s = window.now.samples
        success = window.increase("nv_inference_request_success", model=name)
        failure = window.increase("nv_inference_request_failure", model=name)
        executions = window.increase("nv_inference_exec_count", model=name)
        rows = window.increase("nv_inference_count", model=name)
        span = window.span_s

        def per_s(value: float) -> float | None:
            return value / span if span > 0 else None

        def per_request(sample: str) -> float | None:
            return _ratio(window.increase(sample, model=name), executions)

        members = [m.name for m in loaded.spec.members] if loaded is not None else []
        instances = self._instances(name, stats, window)
        engine_batches = window.increase("enserve_engine_batches", model=name)
        return {
            "name": name,
            "version": row.get("version", ""),
            "state": row["state"],
            "reason": row.get("reason", ""),
            "requests": {
                "success": s.total("nv_inference_request_success", model=name),
                "failure": s.total("nv_inference_request_failure", model=name),
                "inferences": s.total("nv_inference_count", model=name),
                "executions": s.total("nv_inference_exec_count", model=name),
                "pending": s.total("nv_inference_pending_request_count", model=name),
                "per_s": per_s(success + failure),
                "success_per_s": per_s(success),
                "failure_per_s": per_s(failure),
                "rows_per_s": per_s(rows),
            },
            "latency": window.quantiles("enserve_request_latency_seconds", model=name),
            "errors": [
                {"reason": labels.get("reason", ""), "total": value,
                 "per_s": per_s(window.increase("enserve_request_failures_total", model=name,
                                                reason=labels.get("reason", "")))}
                for labels, value in sorted(s.series("enserve_request_failures_total", model=name),
                                            key=lambda lv: -lv[1])
            ],
            "batches": {
                "request_rows": self._request_batches(name),
                "mean_request_rows": _ratio(rows, executions),
                "engine_batches_per_s": per_s(engine_batches) if s.has("enserve_engine_batches") else None,
                "mean_engine_rows": _ratio(rows, engine_batches),
            },
            "time_per_request_s": {
                key: (v / 1e6 if (v := per_request(f"nv_inference_{key}_duration_us")) is not None else None)
                for key in ("queue", "compute_input", "compute_infer", "compute_output", "request")
            },
            "members": self._members(name, members, instances, window),
            "policies": _policies(name, window),
            "instances": instances,
            "plan": _plan(instances, stats, per_s(rows)),
        }

    def _request_batches(self, name: str) -> dict[str, int]:
        """Requests per batch size (rows per request), from the statistics extension's book."""
        stats = self.plane.stats.models.get(name)
        if stats is None:
            return {}
        return {str(size): b.compute_infer.count for size, b in sorted(stats.batches.items())}

    def _instances(self, name: str, stats: dict[str, Any], window: Window) -> list[dict[str, Any]]:
        out = []
        for inst in stats.get("instances", []) if isinstance(stats.get("instances"), list) else []:
            ids = {"model": name, "worker": str(inst.get("label", ""))}
            compute = inst.get("compute") or {}
            out.append({
                "worker": ids["worker"],
                "member": inst.get("member"),
                "device": inst.get("device"),
                "variant": inst.get("variant") or "default",
                "batch_size": inst.get("batch_size"),
                "share": inst.get("share", inst.get("threads")),
                "state": inst.get("state"),
                "pid": inst.get("pid"),
                "utilization": window.rate("enserve_instance_busy_seconds", **ids),
                "rows_per_s": window.rate("enserve_instance_rows", **ids),
                "rows": inst.get("rows", 0),
                "restarts": inst.get("restarts", 0),
                "failures": inst.get("failures", 0),
                "compute_p50_s": compute.get("p50_s"),
                "compute_p99_s": compute.get("p99_s"),
                "mean_chunk_rows": inst.get("mean_chunk_rows"),
            })
        return out

    def _members(self, name: str, members: list[str], instances: list[dict[str, Any]],
                 window: Window) -> list[dict[str, Any]]:
        s = window.now.samples
        units = list(members) + sorted({str(i["member"]) for i in instances} - set(members))
        rows = []
        for unit in units:
            mine = [i for i in instances if i["member"] == unit]
            latency = window.quantiles("enserve_member_latency_seconds", model=name, member=unit)
            source = "metric"
            if latency["count"] == 0 and mine:  # the engine's own per-instance compute times
                p50s = [i["compute_p50_s"] for i in mine if i["compute_p50_s"]]
                p99s = [i["compute_p99_s"] for i in mine if i["compute_p99_s"]]
                latency = {"p50_s": max(p50s) if p50s else None, "p99_s": max(p99s) if p99s else None,
                           "mean_s": None, "count": 0}
                source = "engine"
            utils = [i["utilization"] for i in mine if i["utilization"] is not None]
            if mine:
                utilization = sum(utils) / len(utils) if utils else None
            else:  # in-process members: busy seconds per second of one thread
                utilization = window.rate("enserve_member_latency_seconds_sum", model=name, member=unit)
            rows.append({
                "name": unit,
                "fused": unit not in members,
                "instances": len(mine),
                "ready_instances": sum(1 for i in mine if i["state"] == "ready"),
                "latency": latency,
                "latency_source": source,
                "utilization": utilization,
                "restarts": sum(int(i["restarts"]) for i in mine),
                "failures": sum(int(i["failures"]) for i in mine),
                "inferences": s.total("nv_inference_count", model=f"{name}.{unit}"),
                "missed_deadlines": (s.total("enserve_member_late_total", model=name, member=unit)
                                     if s.series("enserve_member_late_total", model=name) else None),
            })
        _lateness(rows, name, window)
        return rows

    def _residency(self, samples: Samples, loaded: dict[str, Any],
                   index: list[dict[str, str]]) -> dict[str, Any]:
        residency = getattr(self.plane.repository, "residency", None)
        swap = residency.stats() if residency is not None else None
        disabled: set[str] = getattr(self.plane.repository, "disabled", set())
        models = []
        for row in index:
            name = row["name"]
            entry = swap.models.get(name) if swap is not None else None
            if name in loaded:
                self._seen_resident.add(name)
            if entry is not None:
                state = "loaded" if entry["state"] == "ready" else "loading"
                size = float(sum(entry["bytes"].values()))
            elif name in loaded:
                state = STATES.get(row["state"], "loaded")
                size = float(self._backend_memory(name, loaded[name].backend))
            else:
                state = STATES.get(row["state"], "unloaded" if name in disabled else (
                    "evicted" if name in self._seen_resident else "not loaded"))
                if row.get("reason", "").startswith("load failed") or (
                        swap is not None and name in swap.last_errors):
                    state = "failed"
                size = 0.0
            models.append({"name": name, "state": state, "bytes": size,
                           "users": entry["users"] if entry else None,
                           "idle_s": entry["idle_seconds"] if entry else None,
                           "reason": row.get("reason", "")})
        counters = {key: samples.total(f"enserve_swap_{key}") for key in (
            "loads", "load_failures", "load_seconds", "cold_starts", "evictions", "idle_unloads")}
        return {
            "budgeted": swap is not None,
            "budget_bytes": dict(swap.budget_bytes) if swap is not None else {},
            "resident_bytes": (dict(swap.resident_bytes) if swap is not None
                               else {"cpu": sum(m["bytes"] for m in models)}),
            "counters": counters if swap is not None else {},
            "models": models,
        }


    def _backend_memory(self, name: str, backend: Any) -> int:
        """The backend's resident bytes, read in the background (a worker tree's PSS costs
        ~100 ms of smaps reading: far too slow for a refresh every second)."""
        known = self._memory.get(name)
        if known is None or known[0] is not backend:
            known = (backend, Sampled(lambda: _memory(backend), every_s=5.0))
            self._memory[name] = known
        return known[1].get()


# --- helpers ---------------------------------------------------------------------------
def _memory(backend: Any) -> int:
    try:
        return int(backend.memory_bytes())
    except Exception:
        return 0


def _lateness(rows: list[dict[str, Any]], name: str, window: Window) -> None:
    """Each member's lateness relative to the ensemble: its p50 over the fastest member's, or
    the p50 of `enserve_member_lateness_seconds` where the server exports it."""
    exported = window.now.samples.has("enserve_member_lateness_seconds_bucket")
    p50s = [r["latency"]["p50_s"] for r in rows if r["latency"]["p50_s"] is not None and not r["fused"]]
    fastest = min(p50s) if p50s else None
    for r in rows:
        if exported:
            r["lateness_s"] = window.quantiles("enserve_member_lateness_seconds", model=name,
                                               member=r["name"])["p50_s"]
            r["lateness_source"] = "metric"
        else:
            p50 = r["latency"]["p50_s"]
            r["lateness_s"] = p50 - fastest if p50 is not None and fastest is not None else None
            r["lateness_source"] = "p50 over the fastest member's"


def _policies(name: str, window: Window) -> dict[str, Any] | None:
    """What the ensemble's policies did (cascade stages, deadline answers), where the
    server counts them; None when it exports none of these counters."""
    s = window.now.samples
    names = ("enserve_cascade_answers_total", "enserve_partial_answers_total",
             "enserve_deadline_exceeded_total")
    if not any(s.series(n, model=name) for n in names):
        return None

    def counted(sample: str, **match: str) -> dict[str, float | None]:
        return {"total": s.total(sample, model=name, **match),
                "per_s": window.rate(sample, model=name, **match)}

    stages = sorted({labels.get("stage", "") for labels, _ in s.series(names[0], model=name)},
                    key=lambda x: (len(x), x))
    return {
        "stage_answers": [{"stage": stage, **counted(names[0], stage=stage)} for stage in stages],
        "partial_answers": counted(names[1]),
        "deadline_exceeded": counted(names[2]),
    }


def _plan(instances: list[dict[str, Any]], stats: dict[str, Any], rows_per_s: float | None) -> dict[str, Any]:
    """The allocation matrix of the running instances: units × devices, instance indices per cell."""
    devices: list[str] = []
    units: list[str] = []
    cells: dict[str, list[int]] = {}
    for index, inst in enumerate(instances):
        device, unit = str(inst["device"]), str(inst["member"])
        if device not in devices:
            devices.append(device)
        if unit not in units:
            units.append(unit)
        cells.setdefault(f"{unit}|{device}", []).append(index)
    predicted = stats.get("predicted_throughput")
    return {
        "devices": devices,
        "units": units,
        "cells": cells,
        "predicted_throughput": float(predicted) if isinstance(predicted, int | float) else None,
        "measured_rows_per_s": rows_per_s,
    }


def _families(samples: Samples) -> list[dict[str, Any]]:
    """Every family of `/metrics` (histograms as their count and sum; no buckets)."""
    out = []
    for family in samples.families.values():
        if family.name.endswith("_created"):  # prometheus-client's creation times: noise here
            continue
        names = ([f"{family.name}_count", f"{family.name}_sum"] if family.kind == "histogram"
                 else [family.name, f"{family.name}_total"])
        series = [{"name": n, "labels": dict(labels), "value": value if math.isfinite(value) else None}
                  for n in names for labels, value in samples.values.get(n, {}).items()]
        if series:
            out.append({"name": family.name, "type": family.kind, "help": family.help, "series": series})
    return out
