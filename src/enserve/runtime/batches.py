"""Batch bookkeeping: the batches in flight, their slots, the rows each unit still owes,
the chunks waiting for a worker, and answering a batch's requests.

A batch holds one slot of the shared input and output arenas from the moment it is
launched until no chunk of it can still touch them; its requests are answered as soon as
every unit has written its rows (each unit's logits are folded into the batch's running
combination as soon as that unit is done). Every method runs with the engine's lock held
unless it says otherwise.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

from enserve.combine import RunningCombination
from enserve.errors import DeadlineError, InferenceError, MemberFailedError, UnavailableError
from enserve.result import EnsembleResult
from enserve.runtime.batcher import PendingRequest
from enserve.runtime.shm import Arena
from enserve.runtime.stats import EngineCounters
from enserve.runtime.worker import output_field
from enserve.spec import EnsembleSpec


@dataclass
class Batch:
    batch_id: int
    slot: int
    requests: list[PendingRequest]
    rows: int
    remaining: dict[str, int]  # unit -> rows it has not answered yet
    outstanding: int = 0  # chunks sent or waiting that may still touch the arenas
    error: str | None = None
    started: float = field(default_factory=time.perf_counter)
    running: RunningCombination | None = None  # members folded in as they answer
    member_s: dict[str, float] = field(default_factory=dict)  # member -> seconds until done
    members: tuple[str, ...] = ()  # the members this batch runs (a request's subset, or all)
    subset: bool = False  # True when `members` is not every member
    task_deadline: float | None = None  # workers skip this batch's tasks not started by then
    answered: set[int] = field(default_factory=set)  # requests answered at their deadline
    closed: bool = False  # every request answered: late chunks only free the slot


@dataclass
class Chunk:
    task_id: int
    batch: Batch
    member: str  # the unit (a member, or a fused group) that computes it
    start: int
    stop: int
    attempts: int = 0
    parked_at: float = 0.0  # when it started waiting for a restarting worker

    @property
    def rows(self) -> int:
        return self.stop - self.start


def fail_future(future: Future[Any], error: BaseException) -> bool:
    try:
        future.set_exception(error)
        return True
    except InvalidStateError:
        return False


class BatchBook:
    """The batches in flight and the slots they hold.

    `units` maps each unit to the members it computes; `changed` is the engine's condition
    (its lock guards this book), notified whenever a slot comes free."""

    def __init__(self, spec: EnsembleSpec, units: Mapping[str, tuple[str, ...]], slots: int,
                 counters: EngineCounters, changed: threading.Condition) -> None:
        self.spec = spec
        self.units = dict(units)
        self.member_names = [m.name for m in spec.members]
        self.weights = spec.member_weights()
        self.counters = counters
        self.changed = changed
        self.batches: dict[int, Batch] = {}
        self.backlog: dict[str, deque[Chunk]] = {u: deque() for u in self.units}
        self.free_slots: queue.Queue[int] = queue.Queue()
        for slot in range(slots):
            self.free_slots.put(slot)
        # Slots from `normal_slots` on are for batches whose requests all have a deadline:
        # such a batch may hold its slot until the deadline (waiting for a straggler)
        # without keeping other requests from starting.
        self.spare_slots: queue.Queue[int] = queue.Queue()
        self.normal_slots = slots
        self.inflight = 0
        # Requests in the batch answered last: more than one means several callers wait on
        # the engine at once, and their next requests come back together (a burst to batch).
        self.last_batch_requests = 0
        self.ids = itertools.count()
        self.outputs: Arena | None = None  # created once the first worker tells its shape
        self.policy_counts = {"partial_answers": 0, "deadline_failures": 0}
        self.late_tasks: dict[str, int] = {}  # unit -> tasks finished after their answer
        self.skipped_tasks: dict[str, int] = {}  # unit -> tasks dropped at their deadline

    # ----------------------------------------------------------------- opening
    def open(self, slot: int, requests: list[PendingRequest]) -> Batch:
        """Register a batch of `requests` (their rows already written into `slot`)."""
        rows = sum(r.rows for r in requests)
        subset = requests[0].members  # the gatherer batches one member subset at a time
        members = subset or tuple(self.member_names)
        units = ([u for u, covered in self.units.items() if set(covered) & set(members)]
                 if subset else list(self.units))
        weights = [self.weights[self.member_names.index(m)] for m in members]
        due = [r.answer_by for r in requests]
        batch = Batch(next(self.ids), slot, requests, rows, {u: rows for u in units},
                      running=RunningCombination(self.spec.combiner, weights, len(members)),
                      members=members, subset=subset is not None,
                      task_deadline=(max(d for d in due if d is not None)
                                     if all(d is not None for d in due) else None))
        self.batches[batch.batch_id] = batch
        self.inflight += 1
        self.counters.batches += 1
        self.counters.batch_rows.append(rows)
        return batch

    def chunk(self, batch: Batch, unit: str, start: int, stop: int) -> Chunk:
        batch.outstanding += 1
        return Chunk(next(self.ids), batch, unit, start, stop)

    # ----------------------------------------------------------------- answers
    def rows_done(self, chunk: Chunk) -> tuple[bool, bool]:
        """Count a chunk's rows as answered: (its unit has answered every row of the batch,
        every unit has); retires the batch when it was failed meanwhile."""
        batch = chunk.batch
        if batch.closed:  # answered at its deadline without this unit: late work
            self.late_tasks[chunk.member] = self.late_tasks.get(chunk.member, 0) + 1
            batch.outstanding -= 1
            self.maybe_retire(batch)
            return False, False
        batch.remaining[chunk.member] -= chunk.rows
        batch.outstanding -= 1
        unit_done = batch.error is None and batch.remaining[chunk.member] == 0
        if unit_done:
            elapsed = time.perf_counter() - batch.started
            for member in self.units[chunk.member]:
                batch.member_s[member] = elapsed
        finished = batch.error is None and not any(batch.remaining.values())
        if not finished:
            self.maybe_retire(batch)
        return unit_done, finished

    def fold(self, batch: Batch, unit: str) -> None:
        """Fold the logits of the members `unit` computes into the batch's combination (the
        collector thread, lock not held: the rows are the unit's alone)."""
        assert self.outputs is not None and batch.running is not None
        try:
            for member in self.units[unit]:
                if member not in batch.members:
                    continue  # a fused group computing more than the batch asked for
                i = self.member_names.index(member)
                batch.running.add(batch.members.index(member),
                                  self.outputs.view(output_field(i), batch.slot)[:batch.rows])
        except Exception as exc:
            with self.changed:
                self.fail(batch, f"combiner failed: {exc}")

    def complete(self, batch: Batch) -> None:
        """Answer the requests of a batch whose members have all been folded in, then free
        its slot (lock not held on entry)."""
        assert self.outputs is not None and batch.running is not None
        try:
            probs, agree = batch.running.result()
        except Exception as exc:
            with self.changed:
                self.fail(batch, f"combiner failed: {exc}")
            return
        now, offset = time.perf_counter(), 0
        with self.changed:
            for index, r in enumerate(batch.requests):
                rows = slice(offset, offset + r.rows)
                offset += r.rows
                if index in batch.answered:
                    continue
                logits = self._logits(batch, r, rows, batch.members)
                result = EnsembleResult(probs[rows], agree[rows], logits,
                                        member_s=dict(batch.member_s),
                                        queue_s=max(0.0, batch.started - r.submitted),
                                        members=batch.members if batch.subset else None)
                with contextlib.suppress(InvalidStateError):
                    r.future.set_result(result)
                self.counters.completed += 1
                self.counters.latencies.append(now - r.submitted)
            batch.closed = True
            self.last_batch_requests = len(batch.requests)
            self.maybe_retire(batch)

    def _logits(self, batch: Batch, request: PendingRequest, rows: slice,
                members: Sequence[str]) -> dict[str, Any]:
        """Copies of the logits the request asked for, of the members in `members`."""
        assert self.outputs is not None
        return {m: self.outputs.view(output_field(self.member_names.index(m)),
                                     batch.slot)[rows].copy()
                for m in request.logits if m in members}

    # ----------------------------------------------------------------- deadlines
    def expire(self, now: float) -> float | None:
        """Answer the requests whose `answer_by` has come: with the members folded in so
        far if at least `min_members` are, else DeadlineError. A batch whose requests are
        all answered is closed: its waiting chunks are dropped and its slot freed once the
        chunks already running return. Returns the next `answer_by` still pending (the
        collector thread, lock held: it also folds, so the combination is not moving)."""
        due: float | None = None
        for batch in list(self.batches.values()):
            if batch.error is not None or batch.closed or batch.running is None:
                continue
            offset = 0
            for index, r in enumerate(batch.requests):
                rows = slice(offset, offset + r.rows)
                offset += r.rows
                if index in batch.answered or r.answer_by is None:
                    continue
                if r.answer_by > now:
                    due = r.answer_by if due is None else min(due, r.answer_by)
                    continue
                self._answer_at_deadline(batch, r, rows)
                batch.answered.add(index)
            if len(batch.answered) == len(batch.requests):
                batch.closed = True
                for unit, backlog in self.backlog.items():
                    keep = deque(c for c in backlog if c.batch is not batch)
                    batch.outstanding -= len(backlog) - len(keep)
                    self.skipped_tasks[unit] = (self.skipped_tasks.get(unit, 0)
                                                + len(backlog) - len(keep))
                    self.backlog[unit] = keep
                self.maybe_retire(batch)
        return due

    def _answer_at_deadline(self, batch: Batch, r: PendingRequest, rows: slice) -> None:
        assert batch.running is not None
        done = tuple(batch.members[i] for i in sorted(batch.running.member_top1))
        need = min(r.min_members, len(batch.members))
        if len(done) < need:
            error = DeadlineError(
                f"deadline passed with {len(done)} of {len(batch.members)} members answered "
                f"({', '.join(done) or 'none'}); min_members is {r.min_members}")
            if fail_future(r.future, error):
                self.counters.failed += 1
                self.policy_counts["deadline_failures"] += 1
            return
        probs, agree = batch.running.partial()
        result = EnsembleResult(probs[rows], agree[rows], self._logits(batch, r, rows, done),
                                member_s={m: s for m, s in batch.member_s.items() if m in done},
                                queue_s=max(0.0, batch.started - r.submitted), members=done)
        with contextlib.suppress(InvalidStateError):
            r.future.set_result(result)
            self.counters.completed += 1
            self.counters.latencies.append(time.perf_counter() - r.submitted)
            if len(done) < len(batch.members):
                self.policy_counts["partial_answers"] += 1

    def skip(self, chunk: Chunk) -> None:
        """A chunk its worker dropped because the batch's deadline had passed."""
        self.skipped_tasks[chunk.member] = self.skipped_tasks.get(chunk.member, 0) + 1
        chunk.batch.outstanding -= 1
        self.maybe_retire(chunk.batch)

    # ----------------------------------------------------------------- failures
    def fail(self, batch: Batch, message: str,
             kind: type[InferenceError] = MemberFailedError) -> None:
        """Fail every request of the batch (once) with `kind` (by default: a member's
        fault, a 500) and drop its waiting chunks."""
        if batch.error is not None:
            return
        batch.error = message
        for r in batch.requests:
            if fail_future(r.future, kind(message)):
                self.counters.failed += 1
        for unit, backlog in self.backlog.items():
            keep = deque(c for c in backlog if c.batch is not batch)
            batch.outstanding -= len(backlog) - len(keep)
            self.backlog[unit] = keep
        self.maybe_retire(batch)

    def drop(self, chunk: Chunk) -> None:
        """A chunk that will never be answered (its batch has failed)."""
        chunk.batch.outstanding -= 1
        self.maybe_retire(chunk.batch)

    def fail_chunk(self, chunk: Chunk, message: str,
                   kind: type[InferenceError] = MemberFailedError) -> None:
        self.fail(chunk.batch, message, kind)
        self.drop(chunk)

    def fail_backlog(self, unit: str, message: Callable[[Chunk], str],
                     kind: type[InferenceError] = UnavailableError) -> None:
        """Fail every chunk waiting for `unit` (it has no worker left)."""
        backlog = self.backlog[unit]
        while backlog:
            chunk = backlog.popleft()
            self.fail_chunk(chunk, message(chunk), kind)

    def fail_all(self, message: str, kind: type[InferenceError] = UnavailableError) -> None:
        for batch in list(self.batches.values()):
            self.fail(batch, message, kind)

    def maybe_retire(self, batch: Batch) -> None:
        """Free the batch's slot once no chunk of it can still touch the arenas."""
        if batch.outstanding > 0 or batch.batch_id not in self.batches:
            return
        if batch.error is None and not batch.closed and any(batch.remaining.values()):
            return
        del self.batches[batch.batch_id]
        self.inflight -= 1
        self.release_slot(batch.slot)
        self.changed.notify_all()

    def release_slot(self, slot: int) -> None:
        (self.spare_slots if slot >= self.normal_slots else self.free_slots).put(slot)

    def take_slot(self, spare_first: bool) -> int:
        """A free slot (blocking): a spare one first for a batch with a deadline, if any."""
        if spare_first:
            with contextlib.suppress(queue.Empty):
                return self.spare_slots.get_nowait()
        return self.free_slots.get()

