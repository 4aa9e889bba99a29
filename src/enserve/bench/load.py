"""Closed- and open-loop load against any async target `(payload) -> awaitable`.

The generator knows nothing about what it drives: the engine, an in-process baseline, or
(later) an HTTP/gRPC client all look the same — one async callable per request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from enserve.errors import OverloadedError
from enserve.runtime.stats import percentiles

Target = Callable[[Any], Awaitable[Any]]


@dataclass
class LoadResult:
    """What one load run measured. Throughput counts rows (samples), not requests."""

    mode: str
    level: float
    elapsed_s: float = 0.0
    completed: int = 0
    rows: int = 0
    failed: int = 0
    rejected: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return self.rows / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "level": self.level,
            "throughput": self.throughput,
            **percentiles(self.latencies),
            "completed": self.completed,
            "failed": self.failed,
            "rejected": self.rejected,
            "elapsed_s": self.elapsed_s,
            "first_errors": self.errors[:3],
        }


async def _one(target: Target, payload: Any, rows: int, result: LoadResult,
               record: Callable[[], bool]) -> None:
    start = time.perf_counter()
    try:
        await target(payload)
    except OverloadedError:
        if record():
            result.rejected += 1
        return
    except Exception as exc:  # a failed request is counted, never fatal to the run
        if record():
            result.failed += 1
            if len(result.errors) < 10:
                result.errors.append(f"{type(exc).__name__}: {exc}")
        return
    if record():
        result.completed += 1
        result.rows += rows
        result.latencies.append(time.perf_counter() - start)


async def closed_loop(target: Target, payloads: Sequence[Any], concurrency: int,
                      duration_s: float, warmup_s: float = 0.0) -> LoadResult:
    """`concurrency` clients, each sending its next request when the last one returns."""
    result = LoadResult("closed", concurrency)
    t0 = time.perf_counter()
    measure_from = t0 + warmup_s
    stop_at = measure_from + duration_s

    def in_window() -> bool:  # completions inside the window count
        return measure_from <= time.perf_counter() <= stop_at

    async def client(k: int) -> None:
        i = k
        while time.perf_counter() < stop_at:
            payload = payloads[i % len(payloads)]
            i += concurrency
            await _one(target, payload, _rows(payload), result, in_window)

    await asyncio.gather(*(client(k) for k in range(concurrency)))
    result.elapsed_s = duration_s
    return result


async def open_loop(target: Target, payloads: Sequence[Any], rate: float, duration_s: float,
                    warmup_s: float = 0.0, seed: int = 0) -> LoadResult:
    """Poisson arrivals at `rate` requests/s, whatever the target's speed."""
    result = LoadResult("open", rate)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    measure_from = t0 + warmup_s
    stop_at = measure_from + duration_s

    def in_window() -> bool:
        return measure_from <= time.perf_counter() <= stop_at

    tasks: set[asyncio.Task[None]] = set()
    next_at, i = t0, 0
    while next_at < stop_at:
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        payload = payloads[i % len(payloads)]
        i += 1
        task = asyncio.ensure_future(_one(target, payload, _rows(payload), result, in_window))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        next_at += float(rng.exponential(1.0 / rate))
    if tasks:
        await asyncio.wait(tasks, timeout=max(5.0, duration_s))
    result.elapsed_s = duration_s
    return result


def _rows(payload: Any) -> int:
    if isinstance(payload, np.ndarray):
        return int(payload.shape[0])
    if isinstance(payload, dict) and payload:
        return int(np.asarray(next(iter(payload.values()))).shape[0])
    return 1


def run_load(target: Target, payloads: Sequence[Any], mode: str = "closed",
             concurrency: int = 8, rate: float = 10.0, duration_s: float = 10.0,
             warmup_s: float = 1.0, seed: int = 0) -> LoadResult:
    """Run one load level to completion in a fresh event loop."""
    if mode == "closed":
        return asyncio.run(closed_loop(target, payloads, concurrency, duration_s, warmup_s))
    if mode == "open":
        return asyncio.run(open_loop(target, payloads, rate, duration_s, warmup_s, seed))
    raise ValueError(f"mode must be 'closed' or 'open', got '{mode}'")
