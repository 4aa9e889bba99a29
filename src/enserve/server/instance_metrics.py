"""Prometheus lines for what a backend runs: its instances (workers), batches and plan.

Rendered at scrape time from each loaded ensemble's `backend.stats()`; backends without
instances (the reference backend) add nothing. Series carry `model` (the ensemble),
`member` (a member, or a fused group such as `fx:a+b`) and `worker` (the instance's label,
`member#index`; not `instance`, which Prometheus sets to the scraped target).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from enserve.server.metrics import _family, _labels

_INSTANCE_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("enserve_instance_rows", "Rows (samples) the instance computed", "rows"),
    ("enserve_instance_tasks", "Batches (chunks) the instance computed", "tasks"),
    ("enserve_instance_failures", "Tasks that failed on the instance", "failures"),
    ("enserve_instance_restarts", "Times the instance's worker process was restarted", "restarts"),
)


def _share(instance: dict[str, Any]) -> str:
    share = instance.get("share", instance.get("threads"))
    return "" if share is None else f"{float(share):g}"


class BackendStats:
    """`backend.stats()` at most once per `max_age_s` for each backend, so a `/metrics`
    scrape and the dashboard's snapshot built from it share one call (the engine's takes
    its lock and sorts its latency samples)."""

    def __init__(self, max_age_s: float = 0.25, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age_s = max_age_s
        self.clock = clock
        self._memo: dict[int, tuple[float, Any, dict[str, Any]]] = {}

    def of(self, backend: Any) -> dict[str, Any]:
        """The backend's stats ({} when it has none or is shutting down)."""
        now = self.clock()
        memo = self._memo.get(id(backend))
        if memo is not None and memo[1] is backend and now - memo[0] <= self.max_age_s:
            return memo[2]
        try:
            found = backend.stats()
        except Exception:  # a backend shutting down: nothing to report for it now
            found = {}
        stats = found if isinstance(found, dict) else {}
        self._memo = {k: v for k, v in self._memo.items() if now - v[0] <= self.max_age_s}
        self._memo[id(backend)] = (now, backend, stats)
        return stats


def instance_lines(backends: Iterable[tuple[str, Any]], source: BackendStats | None = None) -> list[str]:
    """Lines for every `(ensemble name, backend)` whose stats list instances."""
    source = source or BackendStats(max_age_s=0.0)
    stats: list[tuple[str, dict[str, Any]]] = []
    for name, backend in backends:
        found = source.of(backend)
        if isinstance(found.get("instances"), list):
            stats.append((name, found))
    if not stats:
        return []

    def ids(model: str, inst: dict[str, Any]) -> dict[str, str]:
        return {"model": model, "member": str(inst.get("member", "")), "worker": str(inst.get("label", ""))}

    lines = _family("enserve_instance_info", "A planned instance (value 1): its device, batch and share",
                    "gauge", [
                        (_labels(**ids(m, i), device=str(i.get("device", "")),
                                 variant=str(i.get("variant") or "default"),
                                 batch_size=str(i.get("batch_size", "")), share=_share(i)), 1.0)
                        for m, s in stats for i in s["instances"]
                    ])
    lines += _family("enserve_instance_up", "1 while the instance's worker is ready, else 0", "gauge", [
        (_labels(**ids(m, i)), 1.0 if i.get("state") == "ready" else 0.0)
        for m, s in stats for i in s["instances"]
    ])
    lines += _family("enserve_instance_busy_seconds",
                     "Seconds the instance spent computing (its rate is the utilization)", "counter", [
                         (_labels(**ids(m, i)),
                          float(i.get("utilization", 0.0)) * float(s.get("uptime_s", 0.0)))
                         for m, s in stats for i in s["instances"]
                     ])
    for name, help_text, key in _INSTANCE_COUNTERS:
        lines += _family(name, help_text, "counter", [
            (_labels(**ids(m, i)), float(i.get(key, 0))) for m, s in stats for i in s["instances"]
        ])
    lines += _family("enserve_engine_batches", "Ensemble-level batches the engine formed", "counter",
                     [(_labels(model=m), float(s.get("batches", 0))) for m, s in stats])
    lines += _family("enserve_engine_queue_depth", "Requests waiting in the engine's queue", "gauge",
                     [(_labels(model=m), float(s.get("queue_depth", 0))) for m, s in stats])
    predicted = [(_labels(model=m), float(s["predicted_throughput"])) for m, s in stats
                 if isinstance(s.get("predicted_throughput"), int | float)]
    if predicted:
        lines += _family("enserve_plan_predicted_throughput",
                         "Samples/s the plan's cost model predicts for the ensemble", "gauge", predicted)
    refining = [(m, s["refinement"]) for m, s in stats if isinstance(s.get("refinement"), dict)]
    for key, help_text in _REFINEMENT_GAUGES:
        if refining:
            lines += _family(f"enserve_profile_refinement_{key}", help_text, "gauge",
                             [(_labels(model=m), float(r.get(key, 0))) for m, r in refining])
    return lines


_REFINEMENT_GAUGES = (
    ("measured", "Profile settings measured so far by the background refinement"),
    ("modelled", "Profile settings still modelled (not measured)"),
    ("rounds", "Refinement rounds run"),
    ("switches", "Times the served plan was switched to a refined one"),
)
