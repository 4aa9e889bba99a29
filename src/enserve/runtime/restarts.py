"""When to bring a dead worker back: limited by a rate, with crash-loop back-off.

A worker that dies is restarted at once while its instance has died fewer than
`burst` times within `window_s`; beyond that it waits, `backoff_s` doubling with each
further death up to `max_backoff_s`. There is no lifetime cap: an instance killed ten
times over hours is restarted ten times, and one stuck in a crash loop is retried slower
and slower, but forever, so it comes back by itself once its cause is gone. A restart
that itself fails (the fork server is gone, say) counts as one more death.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import psutil


@dataclass(frozen=True)
class RestartPolicy:
    burst: int = 10
    """Deaths within `window_s` restarted at once."""
    window_s: float = 60.0
    backoff_s: float = 1.0
    """Wait before the first restart beyond the burst; doubles per further death."""
    max_backoff_s: float = 30.0


@dataclass
class RestartState:
    """One instance's recent deaths and when it may be restarted next."""

    deaths: deque[float] = field(default_factory=lambda: deque(maxlen=64))
    next_restart_at: float = 0.0
    total_deaths: int = 0

    def record_death(self, now: float, policy: RestartPolicy) -> float:
        """Note a death at `now`; returns the wait (s) before the instance may restart."""
        self.total_deaths += 1
        self.deaths.append(now)
        while self.deaths and now - self.deaths[0] > policy.window_s:
            self.deaths.popleft()
        excess = len(self.deaths) - policy.burst
        wait = 0.0 if excess <= 0 else min(policy.max_backoff_s, policy.backoff_s * 2 ** (excess - 1))
        self.next_restart_at = now + wait
        return wait

    def due(self, now: float) -> bool:
        return now >= self.next_restart_at


def pid_alive(pid: int | None) -> bool:
    """Is process `pid` running (not gone, not a zombie)?"""
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def pid_stopped(pid: int | None) -> bool:
    """Is process `pid` stopped (SIGSTOP, SIGTSTP, a debugger): alive but never answering?"""
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
    except psutil.Error:
        return False
