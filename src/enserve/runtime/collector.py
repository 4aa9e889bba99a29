"""The collector: the thread that reads what workers send and notices when they die.

A `Done` frees its instance for the next parked chunk and counts the rows; when a unit has
written its logits for every row of a batch they are folded into the batch's running
combination, and when the last unit is in, the batch's requests are answered
(`runtime.batches`). A `Ready` (a started or restarted worker) brings its instance into
service; deaths, hangs and restarts are `runtime.faults`' to judge. Nothing a worker or a
fork server does may end this thread: an unexpected error is logged and it carries on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait

from enserve.runtime.batches import BatchBook
from enserve.runtime.dispatcher import Dispatcher
from enserve.runtime.faults import Faults
from enserve.runtime.messages import Attach, Done, Failed, FromWorker, Ready
from enserve.runtime.restarts import pid_alive
from enserve.runtime.shm import Arena, ArrayField
from enserve.runtime.supervisor import WorkerHandle
from enserve.runtime.worker import output_field

log = logging.getLogger("enserve.runtime")

IDLE_WAKE_S = 0.25
"""Longest the collector sleeps with nothing to read (hang checks and restarts are due)."""


class Collector:
    """Answers the workers of `handles` under the engine's condition `changed`.

    `wake_fd` is the read end of a pipe others write to, to wake it early. The output
    arena (`book.outputs`) is created when the first worker tells its logits' shape, with
    `rows` rows and `slots` slots per member. Calibration timings (negative task ids) land
    in `calibration`."""

    def __init__(
        self,
        handles: Sequence[WorkerHandle],
        book: BatchBook,
        faults: Faults,
        dispatcher: Dispatcher,
        changed: threading.Condition,
        engine_state: Callable[[], str],
        wake_fd: int,
        members: int,
        rows: int,
        slots: int,
    ) -> None:
        self.handles = handles
        self.book = book
        self.faults = faults
        self.dispatcher = dispatcher
        self.changed = changed
        self.engine_state = engine_state
        self.wake_fd = wake_fd
        self.members = members
        self.rows = rows
        self.slots = slots
        self.calibration: dict[int, float] = {}

    def run(self) -> None:
        while True:
            with self.changed:
                if self.engine_state() == "stopped":
                    return
            try:
                self.collect_once()
            except Exception:
                log.exception("collector: unexpected error; carrying on")
                time.sleep(0.05)

    def collect_once(self) -> None:
        with self.changed:
            conns = {h.conn: h for h in self.handles if h.conn is not None}
            sentinels = {h.process.sentinel: h for h in self.handles
                         if h.process is not None and not h.sentinel_lost}
            due = self.book.expire(time.monotonic())
        timeout = IDLE_WAKE_S if due is None else min(IDLE_WAKE_S,
                                                      max(0.0, due - time.monotonic()))
        ready = wait([self.wake_fd, *conns, *sentinels], timeout=timeout)
        for obj in ready:
            if obj == self.wake_fd:
                with contextlib.suppress(OSError):
                    os.read(self.wake_fd, 4096)
            elif obj in conns:
                self.drain(conns[obj], obj)
            elif obj in sentinels:
                self._on_sentinel(sentinels[obj], obj)
        with self.changed:
            self.book.expire(time.monotonic())
        self.faults.kill_hung()
        self.faults.revive_due()

    def _on_sentinel(self, h: WorkerHandle, sentinel: object) -> None:
        if h.conn is not None:
            self.drain(h, h.conn)
        if h.process is None or h.process.sentinel != sentinel:
            return  # already handled through its pipe
        if h.conn is not None and pid_alive(h.process.pid):
            # The fork server died (its pipe is the sentinel), not the worker: keep the
            # worker and watch its own pipe for its death.
            log.warning("fork server gone; worker %s keeps running", h.label)
            h.sentinel_lost = True
            _revive_fork_servers()
        else:
            self.faults.on_death(h)

    def drain(self, h: WorkerHandle, conn: Connection) -> None:
        """Handle every message waiting on a worker's pipe; EOF means it died."""
        try:
            while conn.poll():
                self.on_message(h, conn.recv())
        except (EOFError, OSError):
            if h.conn is conn:
                self.faults.on_death(h)

    def on_message(self, h: WorkerHandle, msg: FromWorker) -> None:
        if isinstance(msg, Done):
            self._on_done(h, msg)
        elif isinstance(msg, Failed):
            self._on_failed(h, msg)
        elif isinstance(msg, Ready):
            self._on_ready(h, msg)

    def _on_done(self, h: WorkerHandle, msg: Done) -> None:
        with self.changed:
            if msg.task_id < 0:
                self.calibration[msg.task_id] = msg.compute_s
                self.changed.notify_all()
                return
            chunk = h.inflight.pop(msg.task_id, None)
            if chunk is None:
                return
            h.last_progress = time.perf_counter()
            h.outstanding_rows -= chunk.rows
            self.dispatcher.next_parked(h)
            if msg.skipped:
                self.book.skip(chunk)
                return
            s = h.stats
            s.tasks += 1
            s.rows += chunk.rows
            s.compute_s += msg.compute_s
            s.wait_s += msg.wait_s
            s.chunk_rows.append(chunk.rows)
            s.compute_samples.append(msg.compute_s)
            unit_done, finished = self.book.rows_done(chunk)
        if unit_done:
            self.book.fold(chunk.batch, chunk.member)
        if finished:
            self.book.complete(chunk.batch)

    def _on_failed(self, h: WorkerHandle, msg: Failed) -> None:
        with self.changed:
            if msg.task_id == -1:
                h.startup_error = msg.message
                return
            chunk = h.inflight.pop(msg.task_id, None)
            if chunk is not None:
                h.outstanding_rows -= chunk.rows
                self.dispatcher.next_parked(h)
                h.stats.failures += 1
                self.book.fail_chunk(chunk, f"member '{chunk.member}' failed: {msg.message}")

    def _on_ready(self, h: WorkerHandle, msg: Ready) -> None:
        for note in msg.notes:
            log.warning(note)
        with self.changed:
            if self.book.outputs is None:
                fields = tuple(ArrayField(output_field(i), "float32",
                                          (self.rows, *msg.output_shape[1:]))
                               for i in range(self.members))
                self.book.outputs = Arena.create(fields, self.slots)
            expected = self.book.outputs.layout.fields[0].shape[1:]
            if tuple(msg.output_shape[1:]) != expected:
                self.faults.startup_errors.append(
                    f"{h.label} returns logits {list(msg.output_shape)}, other members "
                    f"{[-1, *expected]}: output shapes must agree")
                self.changed.notify_all()
                return
            if not h.attached:
                h.send(Attach(self.book.outputs.layout))
                h.attached = True
            h.ready, h.state, h.ready_at = msg, "ready", time.perf_counter()
            self.dispatcher.hand_out_parked(h)
            self.changed.notify_all()


def _revive_fork_servers() -> None:
    """Replace a dead fork server now, not when a worker next needs one (its spare takes
    over: a restart then costs a fork, not a re-import of torch and the member code)."""
    from enserve.runtime import launch

    try:
        launch.revive()
    except Exception:  # the next worker start tries again
        log.exception("replacing the dead fork server failed")

