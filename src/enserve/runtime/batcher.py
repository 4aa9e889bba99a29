"""Ensemble-level batching: concurrent requests are gathered once into one batch that every
member consumes, each in chunks of its planned batch size."""

from __future__ import annotations

import contextlib
import math
import queue
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from enserve.errors import DeadlineError, OverloadedError


@dataclass
class PendingRequest:
    """A validated request waiting for (or riding in) a batch: the members whose logits it
    wants copied out, and the `time.monotonic()` by which its batch must start (None: no
    deadline)."""

    inputs: dict[str, np.ndarray]
    rows: int
    future: Future[Any]
    logits: tuple[str, ...] = ()
    deadline: float | None = None
    submitted: float = field(default_factory=time.perf_counter)
    members: tuple[str, ...] | None = None  # only these members run (None: all)
    answer_by: float | None = None  # time.monotonic(): answer with the members done by then
    min_members: int = 1  # fewest members such an answer may combine


class RequestQueue:
    """A bounded FIFO of requests; `put` rejects instead of blocking when full."""

    def __init__(self, max_requests: int) -> None:
        self._queue: queue.Queue[PendingRequest | None] = queue.Queue(maxsize=max_requests)
        self.max_requests = max_requests

    def put(self, request: PendingRequest) -> None:
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            raise OverloadedError(
                f"overloaded: {self.max_requests} requests are already waiting; retry later"
            ) from None

    def close(self, timeout: float | None = None) -> None:
        """Wake the consumer with an end marker (queued requests stay ahead of it)."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)

    def get(self, timeout: float | None = None) -> PendingRequest | None:
        """The next request; None for the end marker; raises queue.Empty on timeout."""
        return self._queue.get(timeout=timeout)

    def get_nowait(self) -> PendingRequest | None:
        return self._queue.get_nowait()

    def depth(self) -> int:
        return self._queue.qsize()


class Gatherer:
    """Builds batches of at most `max_rows` rows from a RequestQueue.

    The first request waits for the batch; more are added while they fit, without waiting if
    `busy()` says nothing else is in flight (an idle engine answers at once), else for up to
    `max_delay_s` after the first request arrived. A request that would overflow the batch is
    kept for the next one. A batch holds requests for one member subset only; requests for
    another subset are kept (in arrival order) for the batches after it.
    """

    def __init__(
        self, requests: RequestQueue, max_rows: int, max_delay_s: float,
        busy: Callable[[], bool] = lambda: True,
    ) -> None:
        self.requests = requests
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self.busy = busy
        self._carry: deque[PendingRequest] = deque()
        self.max_carry = max(1, requests.max_requests)
        self.closed = False

    def first(self) -> PendingRequest | None:
        """Block for the request that opens the next batch (None once closed and drained)."""
        if self._carry:
            return self._carry.popleft()
        if self.closed:
            return None
        req = self.requests.get()
        if req is None:
            self.closed = True
        return req

    def fill(self, batch: list[PendingRequest]) -> list[PendingRequest]:
        """Add queued requests to `batch` (which holds the first one) until full or due."""
        rows = sum(r.rows for r in batch)
        key = batch[0].members
        kept: deque[PendingRequest] = deque()
        while self._carry:  # requests kept earlier, oldest first
            held = self._carry.popleft()
            if held.members == key and rows + held.rows <= self.max_rows:
                batch.append(held)
                rows += held.rows
            else:
                kept.append(held)
        self._carry = kept
        deadline = batch[0].submitted + self.max_delay_s
        while rows < self.max_rows and not self.closed and len(self._carry) < self.max_carry:
            wait = deadline - time.perf_counter() if self.busy() else 0.0
            try:
                req = self.requests.get(timeout=wait) if wait > 0 else self.requests.get_nowait()
            except queue.Empty:
                break
            if req is None:
                self.closed = True
                break
            if req.members != key:
                self._carry.append(req)
                continue
            if rows + req.rows > self.max_rows:
                self._carry.append(req)
                break
            batch.append(req)
            rows += req.rows
        return batch


def may_launch_alone(running: bool, inflight: int, queued: int,
                     last_batch_requests: int) -> bool:
    """Whether a lone request may be launched from the caller's thread (one thread hop less
    than the dispatcher's): only on a running engine with no batch in flight and nothing
    queued, serving one caller at a time. Not when the last batch answered several
    callers: their next requests arrive together, and launching the first alone would
    split the burst into a one-row batch and the rest (on a tiny ensemble that cost 40%
    of the throughput)."""
    return running and not inflight and not queued and last_batch_requests <= 1


def fail_expired(requests: list[PendingRequest]) -> tuple[list[PendingRequest], int]:
    """Fail (DeadlineError) the requests whose deadline passed before their batch
    started; the others, and how many futures were failed here."""
    now = time.monotonic()
    keep: list[PendingRequest] = []
    failed = 0
    for r in requests:
        if r.deadline is None or now <= r.deadline:
            keep.append(r)
            continue
        waited = (time.perf_counter() - r.submitted) * 1000
        with contextlib.suppress(Exception):  # already answered (cancelled): nothing to do
            r.future.set_exception(DeadlineError(
                f"request timed out after {waited:.1f} ms in the queue"))
            failed += 1
    return keep, failed


def chunk_rows(rows: int, batch_size: int, replicas: int = 1) -> list[tuple[int, int]]:
    """Split rows [0, rows) into chunks of at most `batch_size`, and into at least `replicas`
    chunks when there are enough rows, so replicas of a member share a batch."""
    replicas = max(1, min(replicas, rows))
    size = max(1, min(batch_size, math.ceil(rows / replicas)))
    return [(start, min(rows, start + size)) for start in range(0, rows, size)]
