"""The dispatcher: queued requests become one batch in the shared input arena, and every
unit (member or fused group) gets that batch's rows as chunks.

It runs on its own thread (`run`), except for a lone request on an idle engine, which the
caller's thread launches itself (`launch_now`). Chunks go to the least-loaded ready
instance of their unit; a chunk that cannot run now is parked in the batch book's backlog
and handed out when an instance frees up (`next_parked`) or comes back (the collector).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping

from enserve.errors import MemberFailedError, UnavailableError
from enserve.runtime.batcher import (
    Gatherer,
    PendingRequest,
    RequestQueue,
    chunk_rows,
    fail_expired,
    may_launch_alone,
)
from enserve.runtime.batches import BatchBook, Chunk, fail_future
from enserve.runtime.messages import Task
from enserve.runtime.shm import Arena
from enserve.runtime.stats import EngineCounters
from enserve.runtime.supervisor import WorkerHandle

log = logging.getLogger("enserve.runtime")


class Dispatcher:
    """Batches requests and hands out their chunks, under the engine's lock `lock`.

    `engine_state()` is the engine's state; `wake()` wakes the collector (a batch with a
    deadline may be due before its next wake-up). `inputs` is set once the engine has
    created the input arena."""

    def __init__(
        self,
        book: BatchBook,
        by_unit: Mapping[str, list[WorkerHandle]],
        requests: RequestQueue,
        gatherer: Gatherer,
        lock: threading.RLock,
        counters: EngineCounters,
        delays: Mapping[str, float],
        engine_state: Callable[[], str],
        wake: Callable[[], None],
    ) -> None:
        self.book = book
        self.by_unit = by_unit
        self.requests = requests
        self.gatherer = gatherer
        self.lock = lock
        self.counters = counters
        self.delays = delays  # test hook: seconds each unit's tasks are slowed by
        self.engine_state = engine_state
        self.wake = wake
        self.inputs: Arena | None = None

    def launch_now(self, request: PendingRequest) -> bool:
        """Launch a lone request from the caller's thread where `may_launch_alone` allows
        it; False: queue it for the dispatcher thread."""
        book = self.book
        if not may_launch_alone(self.engine_state() == "running", book.inflight,
                                self.requests.depth(), book.last_batch_requests):
            return False
        try:
            slot = book.free_slots.get_nowait()
        except queue.Empty:
            return False
        try:
            self.launch(slot, [request])
        except Exception as exc:  # as on the dispatcher thread: answer, never lose it
            log.exception("launch failed")
            fail_future(request.future, MemberFailedError(f"dispatch failed: {exc}"))
            book.release_slot(slot)
        return True

    def run(self) -> None:
        """The dispatcher thread: until the request queue is closed and drained."""
        while True:
            first = self.gatherer.first()
            if first is None:
                return
            slot = self.book.take_slot(spare_first=first.answer_by is not None)
            batch = self.gatherer.fill([first])
            if self.engine_state() == "stopped":  # woken by stop() after the drain timed out
                for r in batch:
                    fail_future(r.future, UnavailableError("engine stopped"))
                self.book.release_slot(slot)
                continue
            try:
                self.launch(slot, batch)
            except Exception as exc:  # never let the dispatcher die silently
                log.exception("dispatch failed")
                for r in batch:
                    fail_future(r.future, MemberFailedError(f"dispatch failed: {exc}"))
                self.book.release_slot(slot)

    def launch(self, slot: int, requests: list[PendingRequest]) -> None:
        """Write the requests' rows into `slot` and hand every unit its chunks."""
        requests, late = fail_expired(requests)
        if late:
            with self.lock:
                self.counters.failed += late
        if not requests:
            self.book.release_slot(slot)
            return
        assert self.inputs is not None
        offset = 0
        for r in requests:
            for name, arr in r.inputs.items():
                self.inputs.view(name, slot)[offset:offset + r.rows] = arr
            offset += r.rows
        with self.lock:
            batch = self.book.open(slot, requests)
            if batch.task_deadline is not None or any(r.answer_by for r in requests):
                self.wake()  # the collector's next wake-up may have to come sooner
            for unit in list(batch.remaining):
                handles = self.by_unit[unit]
                usable = [h for h in handles if h.state == "ready"] or handles
                size = max(h.cfg.batch_size for h in handles)
                for start, stop in chunk_rows(batch.rows, size, len(usable)):
                    self.assign(self.book.chunk(batch, unit, start, stop))
            self.book.maybe_retire(batch)

    def assign(self, chunk: Chunk) -> None:
        """Send a chunk to the least-loaded ready instance of its unit (lock held). A chunk
        of a batch with a deadline waits here while every instance is busy, not in a
        worker's pipe: at the deadline it is dropped, and its slot freed, at once."""
        handles = self.by_unit[chunk.member]
        ready = [h for h in handles if h.state == "ready"]
        if ready:
            h = min(ready, key=lambda h: h.outstanding_rows)
            if chunk.batch.task_deadline is not None and h.inflight:
                chunk.parked_at = time.monotonic()
                self.book.backlog[chunk.member].append(chunk)
                return
            if not h.inflight:
                h.last_progress = time.perf_counter()
            h.inflight[chunk.task_id] = chunk
            h.outstanding_rows += chunk.rows
            h.send(Task(chunk.task_id, chunk.batch.slot, chunk.start, chunk.stop,
                        chunk.batch.task_deadline, self.delays.get(chunk.member, 0.0)))
            return  # a failed send means the worker died: the collector reassigns it
        if any(h.state == "starting" for h in handles):
            chunk.parked_at = time.monotonic()
            self.book.backlog[chunk.member].append(chunk)
            return
        self.book.fail_chunk(chunk, f"member '{chunk.member}' has no running worker now "
                                    "(restarting after repeated crashes); retry later",
                             UnavailableError)

    def next_parked(self, h: WorkerHandle) -> None:
        """An instance with nothing in flight takes the oldest chunk parked for its unit
        (lock held)."""
        backlog = self.book.backlog[h.cfg.member]
        if backlog and not h.inflight and h.state == "ready":
            self.assign(backlog.popleft())

    def hand_out_parked(self, h: WorkerHandle) -> None:
        """A (re)started instance is ready: every chunk parked for its unit is assigned
        again, in order (lock held); deadline chunks beyond a free instance park again."""
        backlog = self.book.backlog[h.cfg.member]
        waiting = list(backlog)
        backlog.clear()
        for chunk in waiting:
            self.assign(chunk)
