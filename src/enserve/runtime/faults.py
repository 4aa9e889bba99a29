"""Crashed, hung, stopped and slow-to-restart workers.

A worker that dies (crash, or killed here) is restarted under the restart policy
(`runtime.restarts`: at once within a burst, then with crash-loop back-off; a lifetime
cap only when `max_restarts` is set); the chunks it held are retried once on the unit's
other (or restarted) instances, then their batches fail. A ready worker holding work that
answers nothing for `task_timeout_s` is hung; a worker stopped by SIGSTOP or a debugger
never answers; a restarted worker not ready after `start_timeout_s` is stuck: all three
are killed and then handled like a crash. New work that waited longer than `MAX_PARK_S`
for a restarting worker fails with 503 (the client may retry). During start-up a death
fails the start.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from enserve.errors import UnavailableError
from enserve.runtime.batches import BatchBook, Chunk
from enserve.runtime.restarts import RestartPolicy, pid_stopped
from enserve.runtime.supervisor import WorkerHandle

log = logging.getLogger("enserve.runtime")

HANG_CHECK_INTERVAL_S = 0.25
MAX_PARK_S = 5.0
"""Longest a chunk waits for its member's restarting worker before its batch fails (503)."""
RETRY_FAILED_START_S = 1.0
"""Least wait before retrying a restart that failed to start a process."""


class Faults:
    """Decides what a worker's death or silence means, under the engine's lock.

    `start(h)` starts a new process for the instance (raising if it cannot);
    `assign(chunk)` hands a chunk to a ready instance of its unit (or parks it);
    `engine_state()` is the engine's state; `wake()` wakes the collector."""

    def __init__(
        self,
        handles: Sequence[WorkerHandle],
        by_unit: Mapping[str, list[WorkerHandle]],
        book: BatchBook,
        changed: threading.Condition,
        start: Callable[[WorkerHandle], None],
        assign: Callable[[Chunk], None],
        engine_state: Callable[[], str],
        wake: Callable[[], None],
        max_restarts: int | None,
        restart_policy: RestartPolicy,
        start_timeout_s: float,
        task_timeout_s: float | None,
    ) -> None:
        self.handles = handles
        self.by_unit = by_unit
        self.book = book
        self.changed = changed
        self.start = start
        self.assign = assign
        self.engine_state = engine_state
        self.wake = wake
        # No lifetime cap by default: restarts are limited by a rate (crash-loop back-off);
        # `max_restarts` caps them over the engine's life as well (0: never restart).
        self.max_restarts = max_restarts
        self.restart_policy = restart_policy
        self.start_timeout_s = start_timeout_s
        # A ready worker holding work that answers nothing for this long is hung: it is
        # killed, restarted, and its tasks retried once like a crashed worker's (None: off).
        self.task_timeout_s = task_timeout_s
        self.startup_errors: list[str] = []
        self._last_hang_check = 0.0

    def kill_hung(self) -> None:
        """Kill stopped workers, ready workers that hold tasks but answered none for
        `task_timeout_s`, and restarted workers not ready after `start_timeout_s`; their
        death is then handled like a crash."""
        now = time.perf_counter()
        if now - self._last_hang_check < HANG_CHECK_INTERVAL_S:
            return  # checked a moment ago (this runs on every collector wake-up)
        self._last_hang_check = now
        with self.changed:
            for h in self.handles:
                if h.kill_reason is not None or h.process is None:
                    continue
                if h.state in ("ready", "starting") and pid_stopped(h.process.pid):
                    h.kill_reason = (f"worker {h.label} was stopped (SIGSTOP or a debugger) "
                                     "and was killed")
                elif (h.state == "ready" and h.inflight and self.task_timeout_s is not None
                        and now - h.last_progress > self.task_timeout_s):
                    h.kill_reason = (f"worker {h.label} answered nothing for "
                                     f"{self.task_timeout_s:g} s (hung) and was killed")
                elif (h.state == "starting" and self.engine_state() == "running"
                        and now - h.started_at > self.start_timeout_s):
                    h.kill_reason = (f"restarted worker {h.label} was not ready after "
                                     f"{self.start_timeout_s:g} s and was killed")
                else:
                    continue
                log.warning("%s", h.kill_reason)
                with contextlib.suppress(OSError):
                    h.process.kill()

    def on_death(self, h: WorkerHandle) -> None:
        """A worker's process ended: fail the start, restart it (now or after a back-off),
        or give the instance up (lifetime cap reached)."""
        with self.changed:
            if h.process is None:
                return
            code = h.reap()
            error = h.startup_error
            chunks: list[Chunk] = list(h.inflight.values())
            h.inflight, h.outstanding_rows = {}, 0
            why = error or h.kill_reason or f"worker {h.label} exited with code {code}"
            h.kill_reason = None
            engine_state = self.engine_state()
            if engine_state == "starting":
                h.state = "failed"
                self.startup_errors.append(why)
                self.changed.notify_all()
                return
            if engine_state in ("stopping", "stopped"):
                h.state = "stopped"
            elif self.max_restarts is None or h.stats.restarts < self.max_restarts:
                wait_s = h.restart_state.record_death(time.monotonic(), self.restart_policy)
                if wait_s <= 0:
                    log.warning("%s; restarting it", why)
                    self.restart(h)
                else:
                    log.warning("%s; crash loop: restarting it in %.1f s", why, wait_s)
                    h.state = "backoff"
            else:
                log.error("%s; restart limit (%d) reached", why, self.max_restarts)
                h.state = "failed"
            for chunk in chunks:
                chunk.attempts += 1
                if chunk.batch.error is None and chunk.attempts < 2:
                    self.assign(chunk)
                    continue
                self.book.fail_chunk(chunk, f"member '{chunk.member}': {why} while running "
                                            "this batch (already retried once)")
            if not any(x.state in ("ready", "starting") for x in self.by_unit[h.cfg.member]):
                self.book.fail_backlog(h.cfg.member,
                                       lambda c: f"member '{c.member}' has no worker",
                                       UnavailableError)
            self.changed.notify_all()

    def restart(self, h: WorkerHandle) -> None:
        """Start a new process for `h` (lock held). A restart that fails (the fork server
        is gone, say) counts as a death: `h` backs off and is tried again later."""
        try:
            self.start(h)
        except Exception as exc:
            wait_s = h.restart_state.record_death(time.monotonic(), self.restart_policy)
            log.error("restarting worker %s failed (%s: %s); trying again in %.1f s",
                      h.label, type(exc).__name__, exc, max(wait_s, RETRY_FAILED_START_S))
            h.restart_state.next_restart_at = max(h.restart_state.next_restart_at,
                                                  time.monotonic() + RETRY_FAILED_START_S)
            h.state = "backoff"
            return
        h.stats.restarts += 1
        self.wake()

    def revive_due(self) -> None:
        """Restart instances whose crash-loop back-off is over; fail new work that waited
        too long for a restarting worker (503: the client may retry)."""
        now = time.monotonic()
        with self.changed:
            if self.engine_state() != "running":
                return
            for h in self.handles:
                if h.state == "backoff" and h.restart_state.due(now):
                    log.info("restarting worker %s after its back-off", h.label)
                    self.restart(h)
            for unit, backlog in list(self.book.backlog.items()):
                # new work only: work retried after a crash waits for the restart (bounded by
                # start_timeout_s and the request's deadline)
                expired = [c for c in backlog if c.attempts == 0 and c.batch.task_deadline is None
                           and now - c.parked_at > MAX_PARK_S]
                for chunk in expired:
                    if chunk.batch.error is not None:
                        continue  # failing its batch already took it out of the backlogs
                    self.book.backlog[unit].remove(chunk)
                    self.book.fail_chunk(chunk, f"member '{unit}' is restarting and was not "
                                                f"ready within {MAX_PARK_S:g} s; retry later",
                                         UnavailableError)
