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
    """PNG of p50 (solid, each point labelled with its load level) and p95 (dashed) latency
    against throughput, one colour per target: enserve and every baseline it ran."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    series: dict[str, list[tuple[float, float, float, float]]] = {}
    for level, report in zip(sweep["levels"], sweep["reports"], strict=True):
        rows = {"enserve": report["enserve"], **report["baselines"]}
        for name, r in rows.items():
            series.setdefault(name, []).append((r["throughput"], r["p50_s"], r["p95_s"], level))
    closed = bool(sweep["reports"]) and sweep["reports"][0]["config"]["mode"] == "closed"
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    handles = []
    for name, points in series.items():
        th = [p[0] for p in points]
        width = 2.0 if name == "enserve" else 1.3
        line = ax.plot(th, [p[1] * 1e3 for p in points], marker="o", linewidth=width)[0]
        ax.plot(th, [p[2] * 1e3 for p in points], linestyle="--", color=line.get_color(), alpha=0.8)
        for x, p50, _, level in points:
            ax.annotate(f"{level:g}", (x, p50 * 1e3), textcoords="offset points", xytext=(4, 4),
                        fontsize=7, color=line.get_color())
        handles.append(Line2D([], [], color=line.get_color(), marker="o", label=name))
    handles += [Line2D([], [], color="grey", label="p50"),
                Line2D([], [], color="grey", linestyle="--", label="p95")]
    ax.set_xlabel("throughput (samples/s)")
    ax.set_ylabel("latency (ms, log)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(handles=handles, fontsize=8, loc="best")
    level_name = "clients" if closed else "requests/s offered"
    ax.set_title((title or "latency vs throughput") + f"\npoints labelled with {level_name}", fontsize=10)
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
