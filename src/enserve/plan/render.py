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
                f"{share:g} ({busy:.3g} busy)\nof {json_number(units)}{flag}")

    table = Table(title=f"{plan.algorithm} plan, objective {plan.objective}", show_lines=True,
                  caption="cell: instances x b<batch size> s<share> <variant>")
    if len(members) >= len(devices):
        table.add_column("member", style="bold")
        for d in devices:
            table.add_column(f"{d.id}\n{d.kind}")
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
            table.add_row(f"{d.id}\n{d.kind}", *[cell(d.id, m) for m in members],
                          *totals(d.id, d.compute_units, d.memory_bytes))
    console.print(table)
    console.print(
        f"predicted throughput [bold]{plan.predicted.throughput:.4g}[/bold] samples/s "
        f"(limited by {report.bottleneck}), completion time "
        f"[bold]{plan.predicted.latency_s * 1000:.4g} ms[/bold] per batch, "
        f"{len(plan.instances)} instances, planned in {plan.planning_time_s:.3f} s")


def save_heatmap(plan: Plan, path: str | Path) -> None:
    """Instances per (device, member) as a colour grid, configurations written in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    members = plan.member_names()
    devices = [d.id for d in plan.devices]
    matrix = plan.allocation_matrix()
    counts = np.array([[len(matrix.get((d, m), [])) for m in members] for d in devices])
    width = max(4.0, 1.3 * len(members) + 2)
    height = max(2.5, 0.8 * len(devices) + 1.5)
    fig, ax = plt.subplots(figsize=(width, height))
    image = ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(1, int(counts.max())), aspect="auto")
    ax.set_xticks(range(len(members)), labels=members, rotation=45, ha="right")
    ax.set_yticks(range(len(devices)), labels=devices)
    for r, d in enumerate(devices):
        for c, m in enumerate(members):
            text = "\n".join(cell_lines(matrix.get((d, m), [])))
            if text:
                dark = counts[r, c] > counts.max() / 2
                ax.text(c, r, text, ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")
    fig.colorbar(image, ax=ax, label="instances")
    ax.set_title(f"{plan.algorithm} ({plan.objective}): {plan.predicted.throughput:.4g} samples/s, "
                 f"{plan.predicted.latency_s * 1000:.4g} ms", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
