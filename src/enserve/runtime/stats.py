"""Counters the engine keeps, and the summary `Engine.stats()` returns."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def percentiles(values: Iterable[float], qs: Sequence[float] = (50, 95, 99)) -> dict[str, float]:
    """`{"p50_s": …, "p95_s": …, "p99_s": …}` (NaN-free: 0.0 for no samples)."""
    arr = np.fromiter(values, dtype=np.float64)
    if arr.size == 0:
        return {f"p{q:g}_s": 0.0 for q in qs}
    found = np.percentile(arr, list(qs))  # one partition for all of them
    return {f"p{q:g}_s": float(v) for q, v in zip(qs, found, strict=True)}


@dataclass
class EngineCounters:
    started: float = field(default_factory=time.perf_counter)
    completed: int = 0
    failed: int = 0
    rejected: int = 0
    batches: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=20000))
    batch_rows: deque[int] = field(default_factory=lambda: deque(maxlen=20000))

    def reset(self) -> None:
        fresh = EngineCounters()
        self.__dict__.update(fresh.__dict__)


def instance_summary(handle: Any, uptime: float) -> dict[str, Any]:
    s = handle.stats
    cfg = handle.cfg
    return {
        "label": handle.label,
        "member": cfg.member,
        "variant": handle.ready.variant if handle.ready else cfg.variant,
        "framework": handle.ready.framework if handle.ready else None,
        "device": cfg.device,
        "batch_size": cfg.batch_size,
        "threads": cfg.threads,
        "share": cfg.share,
        "cores": list(cfg.cores) if cfg.cores else None,
        "pid": handle.ready.pid if handle.ready and handle.state == "ready" else None,
        "state": handle.state,
        "tasks": s.tasks,
        "rows": s.rows,
        "mean_chunk_rows": float(np.mean(s.chunk_rows)) if s.chunk_rows else 0.0,
        "compute": percentiles(s.compute_samples),
        "utilization": s.compute_s / uptime if uptime > 0 else 0.0,
        "failures": s.failures,
        "restarts": s.restarts,
    }


def member_summary(instances: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for inst in instances:
        m = out.setdefault(inst["member"], {
            "instances": 0, "tasks": 0, "rows": 0, "utilization": 0.0, "restarts": 0,
            "compute_p50_s": [], "chunk_rows": [],
        })
        m["instances"] += 1
        m["tasks"] += inst["tasks"]
        m["rows"] += inst["rows"]
        m["utilization"] += inst["utilization"]
        m["restarts"] += inst["restarts"]
        m["compute_p50_s"].append(inst["compute"]["p50_s"])
        m["chunk_rows"].append(inst["mean_chunk_rows"])
    for m in out.values():
        m["compute_p50_s"] = float(np.mean(m["compute_p50_s"]))
        m["mean_chunk_rows"] = float(np.mean(m.pop("chunk_rows")))
    return out


def kernel_bound_throughput(stats: dict[str, Any], cores: int) -> float | None:
    """Samples/s the cores could sustain at the member compute times measured in `stats`.

    Each instance's busy time per ensemble sample is charged to its pinned cores (spread
    evenly), unpinned instances to all cores; the busiest core bounds the throughput. The
    engine's measured throughput over this bound is its own efficiency (batching, IPC,
    idle gaps), independent of how fast the kernels ran on a shared machine.
    """
    instances = stats.get("instances", [])
    uptime = float(stats.get("uptime_s", 0.0))
    rows: dict[str, int] = {}
    for inst in instances:
        rows[inst["member"]] = rows.get(inst["member"], 0) + inst["rows"]
    load: dict[int, float] = {}
    floating = 0.0
    for inst in instances:
        served = rows.get(inst["member"], 0)
        if not served or not inst.get("device", "cpu").startswith("cpu"):
            continue
        per_sample = inst["utilization"] * uptime / served
        if inst.get("cores"):
            for core in inst["cores"]:
                load[core] = load.get(core, 0.0) + per_sample / len(inst["cores"])
        else:
            floating += per_sample
    total = sum(load.values()) + floating
    if total <= 0:
        return None
    if floating:
        return cores / total
    return 1.0 / max(load.values())
