"""Placement calibration remembered: an instance's measured seconds per row, kept in
`<cache>/calibration/<key>.json`, so an engine that starts the same instance again pins
it without timing batches first (two batches per instance, one after the other, were
most of a warm start).

The key covers the CPU (model, instruction-set flags, usable cores), the models the
instance runs (their fingerprints), its variant, batch rows and threads. Timings are
only used to order instances onto cores (LPT), so a stale entry costs balance, never a
wrong answer. `ENSERVE_RECALIBRATE=1` times every instance again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path

from enserve.runtime.placement import WorkerConfig, measure_costs
from enserve.spec import EnsembleSpec
from enserve.variants.fingerprint import atomic_write_target, default_cache_dir, member_fingerprint


@cache
def _machine() -> list[object]:
    from enserve.hardware import _cpuinfo_text, parse_cpuinfo, usable_cores

    model, flags = parse_cpuinfo(_cpuinfo_text())
    return [model, list(flags), usable_cores()]


def _entry(spec: EnsembleSpec, cfg: WorkerConfig, rows: int, cache_dir: Path | None) -> Path:
    payload = {
        "format": 2,  # format 1 divided a batch's time by its rows twice (8 rows: 8x too cheap)
        "machine": _machine(),
        "models": [member_fingerprint(spec, m) for m in cfg.members],
        "unit": cfg.member, "variant": cfg.variant, "device": cfg.device,
        "rows": rows, "threads": cfg.threads,
    }
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]
    root = cache_dir if cache_dir is not None else default_cache_dir()
    return root / "calibration" / f"{key}.json"


def _known(path: Path) -> float | None:
    if os.environ.get("ENSERVE_RECALIBRATE"):
        return None
    try:
        value = float(json.loads(path.read_text())["seconds_per_row"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value if value > 0 else None


def _remember(path: Path, seconds_per_row: float) -> None:
    try:
        tmp = atomic_write_target(path)
        tmp.write_text(json.dumps({"seconds_per_row": seconds_per_row}))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs the next start a calibration


def remembered_costs(
    spec: EnsembleSpec, configs: Sequence[WorkerConfig],
    time_rows: Callable[[WorkerConfig, int], float | None], max_batch: int,
    cache_dir: Path | None = None,
) -> tuple[dict[int, float], int]:
    """`measure_costs` for the instances not calibrated before, remembered ones read from
    the cache; returns the costs and how many instances were timed."""
    entries = {c.index: _entry(spec, c, min(c.batch_size, max_batch), cache_dir)
               for c in configs if c.is_cpu}
    known = {i: t for i, p in entries.items() if (t := _known(p)) is not None}
    measured: dict[int, float] = {}

    def timing(cfg: WorkerConfig, rows: int) -> float | None:
        if cfg.index in known:
            return known[cfg.index] * rows
        seconds = time_rows(cfg, rows)
        if seconds is not None:  # the fastest attempt, per row
            measured[cfg.index] = min(measured.get(cfg.index, seconds / rows), seconds / rows)
        return seconds

    costs = measure_costs(configs, timing, max_batch)
    for index, per_row in measured.items():
        _remember(entries[index], per_row)
    return costs, len(entries) - len(known)

