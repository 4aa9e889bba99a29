"""Latency against throughput over a range of load levels, for the engine and baselines."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from enserve.bench.runner import BenchConfig, BenchSession
from enserve.spec import EnsembleSpec

DEFAULT_CONCURRENCIES = (1, 2, 4, 8, 16)


def run_sweep(spec: EnsembleSpec, plan: Any, cfg: BenchConfig, levels: Sequence[float],
              profile: Any = None, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """One bench report per level: {"levels": [...], "reports": [...]}."""
    reports = []
    with BenchSession(spec, plan, cfg, profile, progress) as session:
        for level in levels:
            point = (replace(cfg, concurrency=int(level)) if cfg.mode == "closed"
                     else replace(cfg, rate=float(level)))
            reports.append(session.measure(point))
    return {"levels": list(levels), "reports": reports}


def plot_sweep(sweep: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """PNG of p50 (solid) and p95 (dashed) latency against throughput for every target."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[float, float, float]]] = {}
    for report in sweep["reports"]:
        rows = {"enserve": report["enserve"], **report["baselines"]}
        for name, r in rows.items():
            series.setdefault(name, []).append((r["throughput"], r["p50_s"], r["p95_s"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in series.items():
        th = [p[0] for p in points]
        line = ax.plot(th, [p[1] * 1e3 for p in points], marker="o", label=f"{name} p50")[0]
        ax.plot(th, [p[2] * 1e3 for p in points], linestyle="--", color=line.get_color(),
                label=f"{name} p95")
    ax.set_xlabel("throughput (samples/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "latency vs throughput")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def default_levels(cfg: BenchConfig) -> list[float]:
    if cfg.mode == "closed":
        return list(DEFAULT_CONCURRENCIES)
    return [cfg.rate * f for f in (0.25, 0.5, 0.75, 1.0, 1.25)]
