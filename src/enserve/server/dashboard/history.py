"""Recent scrapes kept for rates and windowed percentiles (what Grafana's `rate()[10s]` does).

Each dashboard refresh adds the current scrape; `base(now)` is the newest scrape at least
`window_s` old (or the oldest kept one while the server is younger than the window), so
"per second" and "p99" describe the last `window_s` seconds, not the server's whole life.
Scrapes older than the base are dropped, and at most one scrape is kept per `min_gap_s`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from enserve.server.dashboard.promtext import Samples, delta_buckets, quantile


@dataclass(frozen=True)
class Scrape:
    time: float
    samples: Samples


class Window:
    """`now` against `base`: counter rates and histogram quantiles over the span between."""

    def __init__(self, now: Scrape, base: Scrape | None) -> None:
        self.now = now
        self.base = base
        self.span_s = now.time - base.time if base is not None else 0.0

    def increase(self, name: str, **match: str) -> float:
        """How much the matching counters grew over the window (a reset counts from zero)."""
        now = self.now.samples.series(name, **match)
        if self.base is None:
            return sum(v for _, v in now)
        before = {tuple(sorted(labels.items())): v for labels, v in self.base.samples.series(name, **match)}
        grown = 0.0
        for labels, value in now:
            previous = before.get(tuple(sorted(labels.items())), 0.0)
            grown += value - previous if value >= previous else value
        return grown

    def rate(self, name: str, **match: str) -> float | None:
        """Per-second growth over the window; None before there is a window to measure."""
        if self.span_s <= 0:
            return None
        return self.increase(name, **match) / self.span_s

    def histogram(self, name: str, **match: str) -> list[tuple[float, float]]:
        """The histogram's buckets counting only the window's observations."""
        now = self.now.samples.buckets(name, **match)
        if self.base is None:
            return now
        return delta_buckets(now, dict(self.base.samples.buckets(name, **match)))

    def quantiles(self, name: str, qs: tuple[float, ...] = (0.5, 0.99),
                  **match: str) -> dict[str, float | None]:
        """`{"p50_s": …, "p99_s": …, "mean_s": …, "count": …}` over the window."""
        buckets = self.histogram(name, **match)
        count = buckets[-1][1] if buckets else 0.0
        total = self.increase(f"{name}_sum", **match)
        out: dict[str, float | None] = {f"p{q * 100:g}_s": quantile(q, buckets) for q in qs}
        out["mean_s"] = total / count if count > 0 else None
        out["count"] = count
        return out


class History:
    """Scrapes of the last `max_window_s` seconds (at most one per `min_gap_s`), and the first."""

    def __init__(self, window_s: float = 10.0, max_window_s: float = 60.0, min_gap_s: float = 0.9) -> None:
        if not (math.isfinite(window_s) and 0 < window_s <= max_window_s):
            raise ValueError(f"window_s must be in (0, {max_window_s:g}], got {window_s}")
        self.window_s = window_s
        self.max_window_s = max_window_s
        self.min_gap_s = min_gap_s
        self.first: Scrape | None = None
        self._scrapes: deque[Scrape] = deque()

    def add(self, scrape: Scrape) -> None:
        if self.first is None:
            self.first = scrape
        if self._scrapes and scrape.time - self._scrapes[-1].time < self.min_gap_s:
            return
        self._scrapes.append(scrape)
        # keep one scrape at least `max_window_s` old, drop the older ones
        while len(self._scrapes) > 1 and self._scrapes[1].time <= scrape.time - self.max_window_s:
            self._scrapes.popleft()

    def window(self, now: Scrape, window_s: float | None = None) -> Window:
        """The window of `window_s` (default `self.window_s`, at most `max_window_s`) ending
        at `now`; shorter while the history is young. `window_s=0`: since the first scrape
        (the server's start when the dashboard starts with the server)."""
        span = self.window_s if window_s is None else min(window_s, self.max_window_s)
        if span <= 0:
            return Window(now, self.first if self.first is not None and self.first.time < now.time else None)
        base: Scrape | None = None
        for scrape in self._scrapes:
            if scrape.time > now.time - span and base is not None:
                break
            if scrape.time < now.time:
                base = scrape
        return Window(now, base)
