"""Prometheus text for `/metrics`: Triton's `nv_*` families plus ensemble-specific ones.

The `nv_inference_*` counters are rendered from the same `StatsBook` the statistics
endpoints read (one source of truth) with Triton's exact names (no `_total` suffix).
Ensemble metrics are prometheus-client histograms: per-member latency, skew (the wait
for the slowest member) and combine time.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable
from typing import Any

import psutil
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from enserve.runtime.memory import Sampled, TreeMemory, tree_memory
from enserve.server.backend import Timing
from enserve.server.stats import ModelStats, StatsBook

BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

_COUNTERS: list[tuple[str, str, str]] = [
    ("nv_inference_request_success", "Number of successful inference requests", "success.count"),
    ("nv_inference_request_failure", "Number of failed inference requests", "fail.count"),
    ("nv_inference_count", "Number of inferences performed (batch size summed)", "inference_count"),
    ("nv_inference_exec_count", "Number of model executions (batches)", "execution_count"),
    ("nv_inference_request_duration_us", "Cumulative request duration in microseconds", "success.us"),
    ("nv_inference_queue_duration_us", "Cumulative queue duration in microseconds", "queue.us"),
    ("nv_inference_compute_input_duration_us", "Cumulative compute input duration in microseconds",
     "compute_input.us"),
    ("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds",
     "compute_infer.us"),
    ("nv_inference_compute_output_duration_us", "Cumulative compute output duration in microseconds",
     "compute_output.us"),
]


def _value(stats: ModelStats, path: str) -> float:
    if "." not in path:
        return float(getattr(stats, path))
    attr, unit = path.split(".")
    duration = getattr(stats, attr)
    return float(duration.count) if unit == "count" else duration.ns / 1000.0


def _labels(**labels: str) -> str:
    escaped = (v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for v in labels.values())
    return ",".join(f'{k}="{v}"' for k, v in zip(labels, escaped, strict=True))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _family(name: str, help_text: str, kind: str, samples: Iterable[tuple[str, float]]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{{{labels}}} {_number(value)}" if labels else f"{name} {_number(value)}"
              for labels, value in samples]
    return lines


class Metrics:
    """Collects ensemble histograms and renders everything as Prometheus text."""

    def __init__(self, stats: StatsBook, swap_stats: Callable[[], Any] | None = None,
                 health: Callable[[], list[tuple[str, str, bool, int]]] | None = None) -> None:
        self.stats = stats
        self.swap_stats = swap_stats  # `enserve.server.residency.SwapStats` source under a memory budget
        self.sources: list[Callable[[], list[str]]] = []
        """More exposition lines rendered at scrape time (e.g. `instance_metrics.instance_lines`)."""
        self.health = health  # (ensemble, member, up, restarts) rows from the DataPlane
        self.registry = CollectorRegistry()
        self.member_latency = Histogram(
            "enserve_member_latency_seconds", "Time one member took on one batch",
            ["model", "member"], buckets=BUCKETS, registry=self.registry,
        )
        self.member_skew = Histogram(
            "enserve_member_skew_seconds",
            "Wait for the slowest member beyond the fastest one, per batch",
            ["model"], buckets=BUCKETS, registry=self.registry,
        )
        self.combine = Histogram(
            "enserve_combine_seconds", "Time spent combining member outputs, per batch",
            ["model"], buckets=BUCKETS, registry=self.registry,
        )
        self.request_latency = Histogram(
            "enserve_request_latency_seconds", "End-to-end server time of successful requests",
            ["model"], buckets=BUCKETS, registry=self.registry,
        )
        self.stage_answers = Counter(
            "enserve_cascade_answers", "Rows a cascade answered, per stage (0 = first)",
            ["model", "stage"], registry=self.registry,
        )
        self.partial_answers = Counter(
            "enserve_partial_answers", "Requests answered at their deadline by only some members",
            ["model"], registry=self.registry,
        )
        self.deadline_exceeded = Counter(
            "enserve_deadline_exceeded",
            "Requests with a deadline that failed with a timeout (too few members in time)",
            ["model"], registry=self.registry,
        )
        self.member_late = Counter(
            "enserve_member_late",
            "Deadline answers a member missed (it was left out of the combination)",
            ["model", "member"], registry=self.registry,
        )
        self.member_lateness = Histogram(
            "enserve_member_lateness_seconds",
            "How long after the ensemble's fastest member each member was done, per request "
            "(a member left out of a deadline answer: the time to the answer, a lower bound)",
            ["model", "member"], buckets=BUCKETS, registry=self.registry,
        )
        self.request_failures = Counter(
            "enserve_request_failures", "Failed inference requests by reason (the error's kind)",
            ["model", "reason"], registry=self.registry,
        )
        psutil.cpu_percent(None)  # prime the utilization counter

    def observe_policy(self, model: str, ran: Any) -> None:
        """Count a policy answer (`enserve.server.policy.PolicyOutcome`)."""
        for stage, rows in enumerate(ran.stage_rows or ()):
            if rows:
                self.stage_answers.labels(model, str(stage)).inc(rows)
        if ran.late:
            self.partial_answers.labels(model).inc()
        timing = ran.outcome.timing
        fastest = min(timing.member_s.values(), default=0.0)
        for member in ran.late:
            self.member_late.labels(model, member).inc()
            self.member_lateness.labels(model, member).observe(
                max(0.0, timing.compute_s - fastest))

    def observe_deadline_exceeded(self, model: str) -> None:
        self.deadline_exceeded.labels(model).inc()

    def observe(self, model: str, timing: Timing, total_s: float) -> None:
        for member, seconds in timing.member_s.items():
            self.member_latency.labels(model, member).observe(seconds)
        if timing.member_s:
            self.member_skew.labels(model).observe(timing.skew_s)
            fastest = min(timing.member_s.values())
            for member, seconds in timing.member_s.items():
                self.member_lateness.labels(model, member).observe(seconds - fastest)
        self.combine.labels(model).observe(timing.combine_s)
        self.request_latency.labels(model).observe(total_s)

    def triton_text(self) -> str:
        models = list(self.stats.models.values())
        lines: list[str] = []
        for name, help_text, path in _COUNTERS:
            lines += _family(name, help_text, "counter", (
                (_labels(model=s.name, version=s.version), _value(s, path)) for s in models
            ))
        pending = ((_labels(model=s.name, version=s.version), float(s.pending)) for s in models)
        lines += _family("nv_inference_pending_request_count",
                         "Instantaneous number of pending requests", "gauge", pending)
        memory = psutil.virtual_memory()
        lines += _family("nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]", "gauge",
                         [("", psutil.cpu_percent(None) / 100.0)])
        lines += _family("nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes", "gauge",
                         [("", float(memory.total))])
        lines += _family("nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes", "gauge",
                         [("", float(memory.total - memory.available))])
        lines += _tree_lines()
        lines += _gpu_lines()
        if self.swap_stats is not None:
            lines += _swap_lines(self.swap_stats())
        for source in self.sources:
            lines += source()
        if self.health is not None:
            rows = self.health()
            lines += _family("enserve_member_up",
                             "1 when the member has a running worker, 0 while it is down or backing off",
                             "gauge", ((_labels(model=m, member=u), float(up)) for m, u, up, _ in rows))
            lines += _family("enserve_worker_restarts", "Worker restarts of the member since load",
                             "counter", ((_labels(model=m, member=u), float(n)) for m, u, _, n in rows))
        return "\n".join(lines) + "\n"

    def render(self) -> bytes:
        return self.triton_text().encode() + generate_latest(self.registry)


_SWAP_COUNTERS = (
    ("enserve_swap_loads", "Ensemble loads under the memory budget", "loads"),
    ("enserve_swap_load_failures", "Ensemble loads that failed", "load_failures"),
    ("enserve_swap_load_seconds", "Cumulative seconds spent loading ensembles", "load_seconds_total"),
    ("enserve_swap_cold_starts",
     "Uses (requests or loads) that found their ensemble absent and waited for its load",
     "cold_starts"),
    ("enserve_swap_evictions", "Ensembles evicted to make room for another", "evictions"),
    ("enserve_swap_idle_unloads", "Ensembles unloaded after being idle", "idle_unloads"),
)


def _swap_lines(swap: Any) -> list[str]:
    """Residency counters and per-device bytes from `enserve.server.residency.SwapStats`."""
    lines: list[str] = []
    for name, help_text, attr in _SWAP_COUNTERS:
        lines += _family(name, help_text, "counter", [("", float(getattr(swap, attr)))])
    lines += _family("enserve_swap_resident_bytes", "Bytes held by resident ensembles", "gauge",
                     [(_labels(device=d), float(v)) for d, v in swap.resident_bytes.items()])
    lines += _family("enserve_swap_budget_bytes", "Memory budget for ensembles", "gauge",
                     [(_labels(device=d), float(v)) for d, v in swap.budget_bytes.items()])
    return lines


# PSS comes from every process's smaps (~100-150 ms for a digits server): read in the
# background at most every 5 s, never on the event loop's request path.
_TREE_MEMORY: Sampled[TreeMemory] = Sampled(tree_memory, every_s=5.0)


def _tree_lines() -> list[str]:
    """Memory of the server's whole process tree (server, fork servers, workers)."""
    tree = _TREE_MEMORY.get()
    lines = _family("enserve_process_tree_processes", "Processes in the server's process tree",
                    "gauge", [("", float(tree.processes))])
    for kind, text in (("rss", "resident set size (shared pages counted once per process)"),
                       ("pss", "proportional set size (shared pages divided among sharers)"),
                       ("uss", "unique set size (pages held by one process only)")):
        lines += _family(f"enserve_process_tree_{kind}_bytes",
                         f"Server process tree memory: {text}", "gauge",
                         [("", float(getattr(tree, kind)))])
    return lines


def _gpu_lines() -> list[str]:
    torch = sys.modules.get("torch")  # a server whose members run elsewhere never imports it
    if torch is None:
        return []
    try:
        if not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return []  # never create a CUDA context just to report on it
        count = torch.cuda.device_count()
        totals, used, util = [], [], []
        for i in range(count):
            free, total = torch.cuda.mem_get_info(i)
            label = _labels(gpu_uuid=str(torch.cuda.get_device_properties(i).uuid))
            totals.append((label, float(total)))
            used.append((label, float(total - free)))
            with contextlib.suppress(Exception):  # needs pynvml; optional
                util.append((label, torch.cuda.utilization(i) / 100.0))
    except Exception:
        return []
    lines = _family("nv_gpu_memory_total_bytes", "GPU total memory, in bytes", "gauge", totals)
    lines += _family("nv_gpu_memory_used_bytes", "GPU used memory, in bytes", "gauge", used)
    if util:
        lines += _family("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0]", "gauge", util)
    return lines
