"""Showing a plan: the allocation matrix as a rich table and as a PNG heatmap."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from enserve.devices import json_number
from enserve.formats.plan import Instance, Plan
from enserve.plan.cost import CostReport


def _gib(count: float) -> str:
    if count >= 2**30:
        return f"{count / 2**30:.2f} GiB"
    return f"{count / 2**20:.0f} MiB"


def cell_lines(instances: list[Instance]) -> list[str]:
    """One line per distinct configuration: `2x b8 s50 onnx`."""
    groups = Counter((i.batch_size, i.share, i.variant) for i in instances)
    lines = []
    for (batch, share, variant), n in sorted(groups.items(), key=lambda g: (g[0][0], g[0][1])):
        line = f"{n}x b{batch} s{json_number(share)}"
        lines.append(line + (f" {variant}" if variant else ""))
    return lines


def print_plan(plan: Plan, report: CostReport, console: Any) -> None:
    """The allocation matrix (the longer of devices / members down the side) and totals."""
    from rich.table import Table

    members = plan.member_names()
    matrix = plan.allocation_matrix()
    devices = list(plan.devices)

    def cell(device_id: str, member: str) -> str:
        return "\n".join(cell_lines(matrix.get((device_id, member), []))) or "-"

    def totals(device_id: str, units: float, memory: int) -> tuple[str, str]:
        used = report.device_memory_bytes.get(device_id, 0)
        share = report.device_share.get(device_id, 0.0)
        busy = report.device_compute_used.get(device_id, 0.0)
        flag = "\ntime-shared" if device_id in report.time_shared else ""
        return (f"{_gib(used)}\nof {_gib(memory)}",
                f"{share:g} of {json_number(units)}\n{busy:.3g} busy{flag}")

    table = Table(title=f"{plan.algorithm} plan ({plan.objective})", show_lines=True,
                  caption="n x b<batch> s<share>")

    def heading(d: Any) -> str:
        return d.id if d.kind in d.id else f"{d.id}\n{d.kind}"  # "cuda:0" says its kind

    if len(members) >= len(devices):
        table.add_column("member", style="bold")
        for d in devices:
            table.add_column(heading(d))
        for m in members:
            table.add_row(m, *[cell(d.id, m) for d in devices])
        sums = [totals(d.id, d.compute_units, d.memory_bytes) for d in devices]
        table.add_row("memory", *[t[0] for t in sums], style="dim")
        table.add_row("shares", *[t[1] for t in sums], style="dim")
    else:
        table.add_column("device", style="bold")
        for m in members:
            table.add_column(m)
        table.add_column("memory")
        table.add_column("shares")
        for d in devices:
            table.add_row(heading(d), *[cell(d.id, m) for m in members],
                          *totals(d.id, d.compute_units, d.memory_bytes))
    console.print(table)
    predicted = plan.predicted or report.predicted()
    console.print(
        f"predicted throughput [bold]{predicted.throughput:.4g}[/bold] samples/s "
        f"(limited by {report.bottleneck}), completion time "
        f"[bold]{predicted.latency_s * 1000:.4g} ms[/bold] per batch, "
        f"{len(plan.instances)} instances, planned in {plan.planning_time_s:.3f} s")


def save_heatmap(plan: Plan, path: str | Path) -> None:
    """The allocation matrix as a picture: members down, devices across; each cell's colour is
    the share of the device its instances hold, its text the instances (`1x b8 s0.5 onnx`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    members = plan.member_names()
    devices = list(plan.devices)
    matrix = plan.allocation_matrix()
    held = np.array([[sum(i.share for i in matrix.get((d.id, m), [])) / (d.compute_units or 1.0)
                      for d in devices] for m in members])
    shown = np.ma.masked_where(held <= 0, held)
    width = max(4.5, 2.1 * len(devices) + 2.8)
    height = max(2.6, 0.55 * len(members) + 1.6)
    fig, ax = plt.subplots(figsize=(width, height))
    top = max(1.0, float(held.max()))
    image = ax.imshow(shown, cmap="YlOrRd", vmin=0, vmax=top, aspect="auto")
    ax.set_facecolor("#f4f6f9")
    labels = [d.id if d.kind in d.id else f"{d.id}\n{d.kind}" for d in devices]
    ax.set_xticks(range(len(devices)), labels=labels)
    ax.set_yticks(range(len(members)), labels=members)
    ax.set_xlabel("device")
    ax.set_ylabel("member")
    ax.set_xticks(np.arange(-0.5, len(devices)), minor=True)
    ax.set_yticks(np.arange(-0.5, len(members)), minor=True)
    ax.grid(which="minor", color="white", linewidth=2)
    ax.tick_params(which="minor", length=0)
    for r, m in enumerate(members):
        for c, d in enumerate(devices):
            text = "\n".join(cell_lines(matrix.get((d.id, m), [])))
            if text:
                dark = held[r, c] > 0.6 * top
                ax.text(c, r, text, ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
    fig.colorbar(image, ax=ax, label="share of the device")
    title = f"{plan.algorithm} plan ({plan.objective})"
    if plan.predicted is not None:
        title += (f": predicted {plan.predicted.throughput:.4g} samples/s, "
                  f"{plan.predicted.latency_s * 1000:.4g} ms per batch")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
