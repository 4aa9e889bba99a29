"""Starting, watching and stopping worker processes.

Workers are started from a fork server that has imported what they run once (torch for
PyTorch workers; only ONNX Runtime for ONNX workers, see `launch.py`), so a new worker
costs a fork instead of a 3.5 s `import torch` (and no process is ever forked after torch
started threads: the fork servers never run a model).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

from enserve.runtime.messages import Ready, Stop, ToWorker
from enserve.runtime.placement import WorkerConfig
from enserve.runtime.restarts import RestartState, pid_alive
from enserve.runtime.shm import ArenaLayout
from enserve.spec import EnsembleSpec


class Launcher:
    """Picks the multiprocessing context each worker starts from.

    `forkserver` (default): a worker that runs only ONNX Runtime forks from the lean fork
    server (no torch), any other from the torch one (`enserve.runtime.launch`); `spawn`
    or `fork`: every worker from that start method.
    """

    def __init__(self, method: str = "forkserver") -> None:
        self.method = method

    def for_config(self, spec: EnsembleSpec, cfg: WorkerConfig,
                   cache_dir: Path | None = None) -> BaseContext:
        if self.method != "forkserver":
            return mp.get_context(self.method)
        from enserve.runtime import launch

        return launch.context(launch.flavor(spec, cfg.member, cfg.variant, cfg.device, cache_dir))


def worker_context(method: str = "forkserver") -> Launcher:
    """How workers start: see `Launcher`."""
    return Launcher(method)


@dataclass
class InstanceStats:
    """Counters of one planned instance, kept across its restarts."""

    tasks: int = 0
    rows: int = 0
    compute_s: float = 0.0
    wait_s: float = 0.0
    failures: int = 0
    restarts: int = 0
    chunk_rows: deque[int] = field(default_factory=lambda: deque(maxlen=2048))
    compute_samples: deque[float] = field(default_factory=lambda: deque(maxlen=2048))


class WorkerHandle:
    """One planned instance: its current process, pipe and in-flight tasks."""

    def __init__(self, cfg: WorkerConfig) -> None:
        self.cfg = cfg
        self.process: Any = None
        self.conn: Connection | None = None
        self.state = "new"  # new → starting → ready → (dead → starting …) | failed | stopped
        self.ready: Ready | None = None
        self.ready_at = 0.0
        self.inflight: dict[int, Any] = {}
        self.outstanding_rows = 0
        self.stats = InstanceStats()
        self.startup_error: str | None = None
        self.attached = False  # holds the output arena's mapping
        self.started_at = 0.0  # when its current process was started
        self.last_progress = 0.0  # when it last got work while idle, or answered a task
        self.kill_reason: str | None = None  # set when the engine kills it as hung
        self.sentinel_lost = False  # the fork server died: watch only the pipe
        self.restart_state = RestartState()
        self._send_lock = threading.Lock()

    @property
    def label(self) -> str:
        return self.cfg.label

    def start(
        self, ctx: Launcher | BaseContext, spec: EnsembleSpec, in_layout: ArenaLayout,
        out_layout: ArenaLayout | None, lock_dir: str | None, cache_dir: Path | None,
    ) -> None:
        from enserve.runtime.worker import worker_main

        if isinstance(ctx, Launcher):
            ctx = ctx.for_config(spec, self.cfg, cache_dir)
        parent_end, child_end = ctx.Pipe(duplex=True)
        try:
            process = ctx.Process(  # type: ignore[attr-defined]
                target=worker_main,
                args=(spec, self.cfg, child_end, in_layout, out_layout, lock_dir, cache_dir),
                name=f"enserve-{self.label}",
                daemon=True,
            )
            process.start()
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        self.sentinel_lost = False
        self.process, self.conn = process, parent_end
        self.started_at = time.perf_counter()
        self.state, self.ready = "starting", None
        self.startup_error, self.attached = None, out_layout is not None
        self.inflight, self.outstanding_rows = {}, 0

    def send(self, msg: ToWorker) -> bool:
        """Send a control message; False if the pipe is gone (the worker died)."""
        if self.conn is None:
            return False
        with self._send_lock:
            try:
                self.conn.send(msg)
                return True
            except (OSError, ValueError):
                return False

    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def close_pipe(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.close()
            self.conn = None

    def reap(self) -> int | None:
        """Collect a dead process; its exit code."""
        if self.process is None:
            return None
        self.process.join(timeout=1.0)
        code: int | None = self.process.exitcode
        self.close_pipe()
        with contextlib.suppress(ValueError):
            self.process.close()
        self.process = None
        return code


def stop_workers(handles: list[WorkerHandle], timeout_s: float = 5.0) -> None:
    """Ask every worker to stop, then terminate and finally kill the ones that don't
    (also those orphaned by a dead fork server, whose exit the sentinel cannot tell)."""
    pids = [h.process.pid for h in handles if h.process is not None]
    for h in handles:
        if h.alive():
            h.send(Stop())
    deadline = time.monotonic() + timeout_s
    for h in handles:
        if h.process is not None:
            h.process.join(timeout=max(0.0, deadline - time.monotonic()))
    for signal_name in ("terminate", "kill"):
        lingering = [h for h in handles if h.alive()]
        for h in lingering:
            getattr(h.process, signal_name)()
        for h in lingering:
            h.process.join(timeout=2.0)
    for h in handles:
        if h.process is not None:
            h.reap()
        h.close_pipe()
        h.state = "stopped"
    for pid in pids:
        if pid_alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
