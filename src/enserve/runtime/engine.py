"""The engine: runs a plan as worker processes behind one ensemble-level batcher.

Three threads in the calling process do the work around the workers:
- the caller's thread validates a request and queues it (a full queue rejects it);
- the dispatcher gathers queued requests into one batch, writes it once into a free slot
  of the shared input arena and hands every member its chunks (`Task` messages);
- the collector reads `Done` messages (and notices dead workers); as soon as a member has
  written its logits for every row of a batch it folds them into the batch's running
  combination (`combine.RunningCombination`), and when the last member is in, it answers
  that batch's requests.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import logging
import os
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from enserve.combine import RunningCombination
from enserve.datatypes import numpy_dtype
from enserve.errors import (
    DeadlineError,
    EnserveError,
    InferenceError,
    MemberFailedError,
    ModelLoadError,
    SpecError,
    UnavailableError,
)
from enserve.result import EnsembleResult, output_names, validate_inputs
from enserve.runtime.batcher import Gatherer, PendingRequest, RequestQueue, chunk_rows
from enserve.runtime.corelocks import create_lock_dir, remove_lock_dir
from enserve.runtime.messages import Attach, Done, Failed, Pin, Ready, Task
from enserve.runtime.placement import (
    WorkerConfig,
    available_cores,
    balance_cores,
    configs_from_plan,
    default_configs,
    execution_units,
    predicted_throughput,
)
from enserve.runtime.restarts import RestartPolicy, pid_alive, pid_stopped
from enserve.runtime.shm import Arena, ArrayField
from enserve.runtime.stats import EngineCounters, instance_summary, member_summary, percentiles
from enserve.runtime.supervisor import WorkerHandle, stop_workers, worker_context
from enserve.runtime.worker import output_field
from enserve.spec import EnsembleSpec, load_spec

log = logging.getLogger("enserve.runtime")
MAX_PARK_S = 5.0
"""Longest a chunk waits for its member's restarting worker before its batch fails (503)."""
RETRY_FAILED_START_S = 1.0
"""Least wait before retrying a restart that failed to start a process."""


@dataclass
class _Batch:
    batch_id: int
    slot: int
    requests: list[PendingRequest]
    rows: int
    remaining: dict[str, int]
    outstanding: int = 0
    error: str | None = None
    started: float = field(default_factory=time.perf_counter)
    running: RunningCombination | None = None  # members folded in as they answer


@dataclass
class _Chunk:
    task_id: int
    batch: _Batch
    member: str
    start: int
    stop: int
    attempts: int = 0
    parked_at: float = 0.0  # when it started waiting for a restarting worker

    @property
    def rows(self) -> int:
        return self.stop - self.start


class Engine:
    """Serve `spec` with the instances of `plan` (or a default plan), one process each.

    `plan`: a planner `Plan`, a plan dict, or a plan JSON path; None plans automatically
    (from `profile` through the planner where given, else one instance per member with
    members spread over the cores by their measured cost). `fusion` ("auto", "on", "off")
    applies when planning from a profile that carries fused groups (see
    `enserve.plan.fusion.plan_with_fusion`); a plan's instance whose `member` names a
    fused group (`fx:a+b`) runs the group as one unit.
    """

    def __init__(
        self,
        spec: EnsembleSpec | str | Path,
        plan: Any = None,
        *,
        profile: Any = None,
        max_batch: int = 32,
        max_delay_s: float = 0.002,
        max_queue: int = 1024,
        inflight_batches: int = 2,
        max_restarts: int | None = None,
        restart_policy: RestartPolicy | None = None,
        start_timeout_s: float = 600.0,
        task_timeout_s: float | None = 120.0,
        exclusive_cores: bool = True,
        pin: bool = True,
        cores: Sequence[int] | None = None,
        cache_dir: str | Path | None = None,
        start_method: str = "forkserver",
        default_batch_size: int = 8,
        fusion: str = "auto",
    ) -> None:
        self.spec = spec if isinstance(spec, EnsembleSpec) else load_spec(spec)
        if plan is None and profile is not None:
            plan = _plan_from_profile(profile, fusion)
        if isinstance(plan, (str, Path)):
            plan = load_plan_file(plan)
        self.plan = plan
        self.cores = tuple(cores) if cores else available_cores()
        if plan is not None:
            configs = configs_from_plan(self.spec, plan)
        else:
            configs = default_configs(self.spec, default_batch_size, self.cores)
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        # No lifetime cap by default: restarts are limited by a rate (crash-loop back-off);
        # `max_restarts` caps them over the engine's life as well (0: never restart).
        self.max_restarts = max_restarts
        self.restart_policy = restart_policy or RestartPolicy()
        self.start_timeout_s = start_timeout_s
        # A ready worker holding work that answers nothing for this long is hung: it is
        # killed, restarted, and its tasks retried once like a crashed worker's (None: off).
        self.task_timeout_s = task_timeout_s
        self._last_hang_check = 0.0
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._auto_pin = pin and any(c.is_cpu and c.cores is None for c in configs)
        self._handles = [WorkerHandle(c) for c in configs]
        # A unit is what the dispatcher hands chunks to: a member, or a fused group that
        # computes several members at once (writing each one's logits into its own slot).
        self.units = execution_units(configs)
        self._by_member: dict[str, list[WorkerHandle]] = {u: [] for u in self.units}
        for h in self._handles:
            self._by_member[h.cfg.member].append(h)
        self._member_names = [m.name for m in self.spec.members]
        self._weights = self.spec.member_weights()
        self._ctx = worker_context(start_method)
        self._exclusive_cores = exclusive_cores and pin
        self._lock_dir: str | None = None
        self._slots = max(1, inflight_batches)
        self._requests = RequestQueue(max_queue)
        self._free_slots: queue.Queue[int] = queue.Queue()
        self._gatherer = Gatherer(self._requests, max_batch, max_delay_s,
                                  busy=lambda: self._inflight > 0)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._batches: dict[int, _Batch] = {}
        self._backlog: dict[str, deque[_Chunk]] = {u: deque() for u in self.units}
        self._inflight = 0
        self._ids = itertools.count()
        self._calibration: dict[int, float] = {}
        self._counters = EngineCounters()
        self._inputs: Arena | None = None
        self._outputs: Arena | None = None
        self._startup_errors: list[str] = []
        self._state = "new"  # new → starting → running → stopping → stopped
        self._wake_r, self._wake_w = os.pipe()
        self._threads: list[threading.Thread] = []

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> Engine:
        """Start every worker in parallel and wait until all have loaded and warmed up."""
        if self._state != "new":
            raise EnserveError(f"engine already {self._state}")
        self._state = "starting"
        atexit.register(_stop_at_exit, weakref.ref(self))
        try:
            self._inputs = Arena.create(self._input_fields(), self._slots)
            if self._exclusive_cores:
                self._lock_dir = create_lock_dir(self.cores)
            for h in self._handles:
                h.start(self._ctx, self.spec, self._inputs.layout, None, self._lock_dir,
                        self.cache_dir)
            self._spawn_thread(self._collect_loop, "collector")
            self._wait_ready()
            if self._auto_pin:
                self._pin_balanced()
            for slot in range(self._slots):
                self._free_slots.put(slot)
            self._counters.reset()
            self._state = "running"
            self._spawn_thread(self._dispatch_loop, "dispatcher")
        except BaseException:
            self._shutdown(drain_timeout_s=0.0)
            raise
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop accepting requests, finish the queued and in-flight ones (up to `timeout_s`),
        stop the workers and free shared memory. Safe to call twice."""
        if self._state in ("stopped", "new"):
            if self._state == "new":
                for fd in (self._wake_r, self._wake_w):
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._state = "stopped"
            return
        self._shutdown(drain_timeout_s=timeout_s)

    def __enter__(self) -> Engine:
        if self._state == "new":
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> Engine:
        if self._state == "new":
            await asyncio.get_running_loop().run_in_executor(None, self.start)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.stop)

    # ----------------------------------------------------------------- requests
    def submit(self, inputs: Mapping[str, np.ndarray] | np.ndarray,
               outputs: Sequence[str] | None = None) -> Future[EnsembleResult]:
        """Queue one request batch; the future resolves to its EnsembleResult.

        Raises InferenceError for bad inputs or a stopped engine, OverloadedError when the
        queue is full."""
        if self._state != "running":
            raise UnavailableError(f"engine is {self._state}, not accepting requests")
        if outputs is not None:
            unknown = sorted(set(outputs) - set(output_names(self.spec)))
            if unknown:
                raise InferenceError(f"unknown output(s) {unknown}; available: "
                                     f"{output_names(self.spec)}")
        arrays = validate_inputs(self.spec, inputs, max_batch=self.max_batch)
        rows = next(iter(arrays.values())).shape[0]
        want_logits = outputs is None or any(o.startswith("logits_") for o in outputs)
        future: Future[EnsembleResult] = Future()
        request = PendingRequest(arrays, rows, future, want_logits)
        if self._launch_now(request):
            return future
        try:
            self._requests.put(request)
        except InferenceError:
            with self._lock:
                self._counters.rejected += 1
            raise
        return future

    def _launch_now(self, request: PendingRequest) -> bool:
        """On an idle engine, launch a lone request from the caller's thread: one thread
        hop less than going through the dispatcher (there is nothing to batch it with)."""
        if self._inflight or self._requests.depth() or self._state != "running":
            return False
        try:
            slot = self._free_slots.get_nowait()
        except queue.Empty:
            return False
        try:
            self._launch(slot, [request])
        except Exception as exc:  # as in the dispatcher: answer, never lose the request
            log.exception("launch failed")
            _fail_future(request.future, MemberFailedError(f"dispatch failed: {exc}"))
            self._free_slots.put(slot)
        return True

    async def infer(self, inputs: Mapping[str, np.ndarray] | np.ndarray,
                    outputs: Sequence[str] | None = None) -> EnsembleResult:
        return await asyncio.wrap_future(self.submit(inputs, outputs))

    def infer_sync(self, inputs: Mapping[str, np.ndarray] | np.ndarray,
                   outputs: Sequence[str] | None = None,
                   timeout: float | None = None) -> EnsembleResult:
        future = self.submit(inputs, outputs)
        try:
            return future.result(timeout=timeout)
        except TimeoutError:
            raise DeadlineError(f"no answer within {timeout} s") from None

    # ----------------------------------------------------------------- introspection
    @property
    def predicted_throughput(self) -> float | None:
        return predicted_throughput(self.plan)

    @property
    def configs(self) -> list[WorkerConfig]:
        return [h.cfg for h in self._handles]

    def unhealthy(self) -> str | None:
        """Why the engine cannot answer every request now, or None when it can: it is not
        running, or some member has no ready worker (restarting or backing off)."""
        with self._lock:
            if self._state != "running":
                return f"engine is {self._state}"
            down = [u for u, hs in self._by_member.items() if not any(h.state == "ready" for h in hs)]
        return f"no ready worker for {', '.join(down)}" if down else None

    def member_health(self) -> dict[str, tuple[bool, int]]:
        """Per unit (member or fused group): (has a ready worker, restarts so far)."""
        with self._lock:
            return {u: (any(h.state == "ready" for h in hs), sum(h.stats.restarts for h in hs))
                    for u, hs in self._by_member.items()}

    def worker_pids(self) -> dict[str, int]:
        with self._lock:
            return {h.label: h.process.pid for h in self._handles if h.process is not None}

    @property
    def output_shape(self) -> tuple[int, ...] | None:
        """Logits shape `(-1, classes)` the workers reported when they started."""
        if self._outputs is None:
            return None
        return (-1, *self._outputs.layout.fields[0].shape[1:])

    def memory(self) -> dict[str, Any]:
        """RSS/PSS/USS of the workers and of this process's whole tree (engine, fork
        servers, workers): see `enserve.runtime.memory`."""
        from enserve.runtime.memory import pids_memory, tree_memory

        return {"workers": pids_memory(self.worker_pids().values()).as_dict(),
                "tree": tree_memory().as_dict()}

    def stats(self) -> dict[str, Any]:
        with self._lock:
            uptime = time.perf_counter() - self._counters.started
            instances = [instance_summary(h, uptime) for h in self._handles]
            c = self._counters
            return {
                "state": self._state,
                "uptime_s": uptime,
                "requests": {"completed": c.completed, "failed": c.failed,
                             "rejected": c.rejected},
                "queue_depth": self._requests.depth(),
                "inflight_batches": self._inflight,
                "batches": c.batches,
                "mean_batch_rows": float(np.mean(c.batch_rows)) if c.batch_rows else 0.0,
                "latency": percentiles(c.latencies),
                "restarts": sum(i["restarts"] for i in instances),
                "members": member_summary(instances),
                "instances": instances,
            }

    def reset_stats(self) -> None:
        """Zero the counters (e.g. after a warm-up)."""
        with self._lock:
            self._counters.reset()
            for h in self._handles:
                restarts = h.stats.restarts
                h.stats = type(h.stats)(restarts=restarts)

    # ----------------------------------------------------------------- start-up
    def _input_fields(self) -> tuple[ArrayField, ...]:
        fields = []
        for t in self.spec.inputs:
            if any(d < 0 for d in t.shape[1:]):
                raise SpecError(f"{self.spec.source_file}: input '{t.name}': the runtime needs "
                                f"fixed sizes on every axis but the batch axis, got {t.shape}")
            fields.append(ArrayField(t.name, np.dtype(numpy_dtype(t.datatype)).str,
                                     (self.max_batch, *t.shape[1:])))
        return tuple(fields)

    def _spawn_thread(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=f"enserve-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        with self._changed:
            while not all(h.state == "ready" for h in self._handles):
                if self._startup_errors:
                    raise ModelLoadError("; ".join(self._startup_errors))
                left = deadline - time.monotonic()
                if left <= 0:
                    waiting = [h.label for h in self._handles if h.state != "ready"]
                    raise ModelLoadError(f"workers not ready after {self.start_timeout_s:g} s: "
                                         f"{', '.join(waiting)}")
                self._changed.wait(timeout=min(left, 0.5))

    def _pin_balanced(self) -> None:
        """Time one batch of each instance, alone, then pin instances to cores (LPT)."""
        assert self._inputs is not None
        for name, arr in self._inputs_fill().items():
            self._inputs.view(name, 0)[...] = arr
        costs: dict[int, float] = {}
        for h in self._handles:
            if not h.cfg.is_cpu:
                continue
            rows = min(h.cfg.batch_size, self.max_batch)
            timings = []
            for attempt in range(2):  # the faster of two runs: less noise from other load
                task_id = -(2 * h.cfg.index + attempt + 1)
                with self._changed:
                    h.send(Task(task_id, 0, 0, rows))
                    if self._changed.wait_for(_has_key(self._calibration, task_id), timeout=60):
                        timings.append(self._calibration[task_id])
            per_row = min(timings) / rows if timings else 1.0
            costs[h.cfg.index] = per_row / len(self._by_member[h.cfg.member])
        balanced = balance_cores([h.cfg for h in self._handles], costs, self.cores)
        for h, cfg in zip(self._handles, balanced, strict=True):
            if cfg.cores and cfg.cores != h.cfg.cores:
                h.cfg = cfg
                h.send(Pin(cfg.cores))
        log.info("pinned: %s", {h.label: h.cfg.cores for h in self._handles})

    def _inputs_fill(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(0)
        assert self._inputs is not None
        out = {}
        for f in self._inputs.layout.fields:
            if np.dtype(f.dtype).kind == "f":
                out[f.name] = rng.standard_normal(f.shape).astype(f.dtype)
            else:
                out[f.name] = rng.integers(0, 128, size=f.shape).astype(f.dtype)
        return out

    # ----------------------------------------------------------------- dispatcher
    def _dispatch_loop(self) -> None:
        while True:
            first = self._gatherer.first()
            if first is None:
                return
            slot = self._free_slots.get()
            batch = self._gatherer.fill([first])
            if self._state == "stopped":  # woken by stop() after the drain timed out
                for r in batch:
                    _fail_future(r.future, UnavailableError("engine stopped"))
                self._free_slots.put(slot)
                continue
            try:
                self._launch(slot, batch)
            except Exception as exc:  # never let the dispatcher die silently
                log.exception("dispatch failed")
                for r in batch:
                    _fail_future(r.future, MemberFailedError(f"dispatch failed: {exc}"))
                self._free_slots.put(slot)

    def _launch(self, slot: int, requests: list[PendingRequest]) -> None:
        assert self._inputs is not None
        rows, offset = sum(r.rows for r in requests), 0
        for r in requests:
            for name, arr in r.inputs.items():
                self._inputs.view(name, slot)[offset:offset + r.rows] = arr
            offset += r.rows
        with self._lock:
            batch = _Batch(next(self._ids), slot, requests, rows,
                           {u: rows for u in self.units},
                           running=RunningCombination(self.spec.combiner, self._weights,
                                                      len(self._member_names)))
            self._batches[batch.batch_id] = batch
            self._inflight += 1
            self._counters.batches += 1
            self._counters.batch_rows.append(rows)
            for member in self.units:
                handles = self._by_member[member]
                usable = [h for h in handles if h.state == "ready"] or handles
                size = max(h.cfg.batch_size for h in handles)
                for start, stop in chunk_rows(rows, size, len(usable)):
                    batch.outstanding += 1
                    self._assign(_Chunk(next(self._ids), batch, member, start, stop))
            self._maybe_retire(batch)

    def _assign(self, chunk: _Chunk) -> None:
        """Send a chunk to the least-loaded ready instance of its member (lock held)."""
        handles = self._by_member[chunk.member]
        ready = [h for h in handles if h.state == "ready"]
        if ready:
            h = min(ready, key=lambda h: h.outstanding_rows)
            if not h.inflight:
                h.last_progress = time.perf_counter()
            h.inflight[chunk.task_id] = chunk
            h.outstanding_rows += chunk.rows
            h.send(Task(chunk.task_id, chunk.batch.slot, chunk.start, chunk.stop))
            return  # a failed send means the worker died: the collector reassigns it
        if any(h.state == "starting" for h in handles):
            chunk.parked_at = time.monotonic()
            self._backlog[chunk.member].append(chunk)
            return
        self._fail_batch(chunk.batch, f"member '{chunk.member}' has no running worker now "
                                      "(restarting after repeated crashes); retry later",
                         UnavailableError)
        self._drop(chunk)

    # ----------------------------------------------------------------- collector
    def _collect_loop(self) -> None:
        """Answer workers' messages and supervise them; nothing a worker (or the fork
        server) does may end this loop: an unexpected error is logged and the loop goes on."""
        while True:
            with self._lock:
                if self._state == "stopped":
                    return
            try:
                self._collect_once()
            except Exception:
                log.exception("collector: unexpected error; carrying on")
                time.sleep(0.05)

    def _collect_once(self) -> None:
        with self._lock:
            conns = {h.conn: h for h in self._handles if h.conn is not None}
            sentinels = {h.process.sentinel: h for h in self._handles
                         if h.process is not None and not h.sentinel_lost}
        ready = wait([self._wake_r, *conns, *sentinels], timeout=0.25)
        for obj in ready:
            if obj == self._wake_r:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 4096)
            elif obj in conns:
                self._drain(conns[obj], obj)
            elif obj in sentinels:
                h = sentinels[obj]
                if h.conn is not None:
                    self._drain(h, h.conn)
                if h.process is not None and h.process.sentinel == obj:
                    if h.conn is not None and pid_alive(h.process.pid):
                        # The fork server died (its pipe is the sentinel), not the worker:
                        # keep the worker and watch its own pipe for its death.
                        log.warning("fork server gone; worker %s keeps running", h.label)
                        h.sentinel_lost = True
                    else:
                        self._on_death(h)
        self._kill_hung()
        self._revive_due()

    def _kill_hung(self) -> None:
        """Kill ready workers that hold tasks but answered none for `task_timeout_s`, and
        restarted workers not ready after `start_timeout_s`; their death is then handled
        like a crash (restart up to `max_restarts`, tasks retried once, then failed)."""
        now = time.perf_counter()
        if now - self._last_hang_check < 0.25:
            return  # checked a moment ago (this runs on every collector wake-up)
        self._last_hang_check = now
        with self._lock:
            for h in self._handles:
                if h.kill_reason is not None or h.process is None:
                    continue
                if h.state in ("ready", "starting") and pid_stopped(h.process.pid):
                    h.kill_reason = (f"worker {h.label} was stopped (SIGSTOP or a debugger) "
                                     "and was killed")
                elif (h.state == "ready" and h.inflight and self.task_timeout_s is not None
                        and now - h.last_progress > self.task_timeout_s):
                    h.kill_reason = (f"worker {h.label} answered nothing for "
                                     f"{self.task_timeout_s:g} s (hung) and was killed")
                elif (h.state == "starting" and self._state == "running"
                        and now - h.started_at > self.start_timeout_s):
                    h.kill_reason = (f"restarted worker {h.label} was not ready after "
                                     f"{self.start_timeout_s:g} s and was killed")
                else:
                    continue
                log.warning("%s", h.kill_reason)
                with contextlib.suppress(OSError):
                    h.process.kill()

    def _drain(self, h: WorkerHandle, conn: Connection) -> None:
        """Handle every message waiting on a worker's pipe; EOF means it died."""
        try:
            while conn.poll():
                self._on_message(h, conn.recv())
        except (EOFError, OSError):
            if h.conn is conn:
                self._on_death(h)

    def _on_message(self, h: WorkerHandle, msg: Any) -> None:
        finished: _Batch | None = None
        answered: tuple[_Batch, str] | None = None  # a unit that finished all its rows
        with self._changed:
            if isinstance(msg, Done):
                if msg.task_id < 0:
                    self._calibration[msg.task_id] = msg.compute_s
                    self._changed.notify_all()
                    return
                chunk = h.inflight.pop(msg.task_id, None)
                if chunk is None:
                    return
                h.last_progress = time.perf_counter()
                h.outstanding_rows -= chunk.rows
                s = h.stats
                s.tasks += 1
                s.rows += chunk.rows
                s.compute_s += msg.compute_s
                s.wait_s += msg.wait_s
                s.chunk_rows.append(chunk.rows)
                s.compute_samples.append(msg.compute_s)
                batch = chunk.batch
                batch.remaining[chunk.member] -= chunk.rows
                batch.outstanding -= 1
                if batch.error is None and batch.remaining[chunk.member] == 0:
                    answered = (batch, chunk.member)
                if batch.error is None and not any(batch.remaining.values()):
                    finished = batch
                else:
                    self._maybe_retire(batch)
            elif isinstance(msg, Failed):
                if msg.task_id == -1:
                    h.startup_error = msg.message
                    return
                chunk = h.inflight.pop(msg.task_id, None)
                if chunk is not None:
                    h.outstanding_rows -= chunk.rows
                    h.stats.failures += 1
                    self._fail_batch(chunk.batch, f"member '{chunk.member}' failed: "
                                                  f"{msg.message}")
                    self._drop(chunk)
            elif isinstance(msg, Ready):
                self._on_ready(h, msg)
        if answered is not None:
            self._fold(*answered)
        if finished is not None:
            self._complete(finished)
            with self._changed:
                self._maybe_retire(finished)

    def _on_ready(self, h: WorkerHandle, msg: Ready) -> None:
        for note in msg.notes:
            log.warning(note)
        if self._outputs is None:
            fields = tuple(ArrayField(output_field(i), "float32", (self.max_batch,
                                                                   *msg.output_shape[1:]))
                           for i in range(len(self._member_names)))
            self._outputs = Arena.create(fields, self._slots)
        expected = self._outputs.layout.fields[0].shape[1:]
        if tuple(msg.output_shape[1:]) != expected:
            self._startup_errors.append(
                f"{h.label} returns logits {list(msg.output_shape)}, other members "
                f"{[-1, *expected]}: output shapes must agree")
            self._changed.notify_all()
            return
        if not h.attached:
            h.send(Attach(self._outputs.layout))
            h.attached = True
        h.ready, h.state, h.ready_at = msg, "ready", time.perf_counter()
        backlog = self._backlog[h.cfg.member]
        while backlog:
            self._assign(backlog.popleft())
        self._changed.notify_all()

    def _on_death(self, h: WorkerHandle) -> None:
        with self._changed:
            if h.process is None:
                return
            code = h.reap()
            error = h.startup_error
            chunks = list(h.inflight.values())
            h.inflight, h.outstanding_rows = {}, 0
            why = error or h.kill_reason or f"worker {h.label} exited with code {code}"
            h.kill_reason = None
            if self._state == "starting":
                h.state = "failed"
                self._startup_errors.append(why)
                self._changed.notify_all()
                return
            if self._state in ("stopping", "stopped"):
                h.state = "stopped"
            elif self.max_restarts is None or h.stats.restarts < self.max_restarts:
                wait_s = h.restart_state.record_death(time.monotonic(), self.restart_policy)
                if wait_s <= 0:
                    log.warning("%s; restarting it", why)
                    self._restart(h)
                else:
                    log.warning("%s; crash loop: restarting it in %.1f s", why, wait_s)
                    h.state = "backoff"
            else:
                log.error("%s; restart limit (%d) reached", why, self.max_restarts)
                h.state = "failed"
            for chunk in chunks:
                chunk.attempts += 1
                if chunk.batch.error is None and chunk.attempts < 2:
                    self._assign(chunk)
                    continue
                self._fail_batch(chunk.batch, f"member '{chunk.member}': {why} while running "
                                              "this batch (already retried once)")
                self._drop(chunk)
            if not any(x.state in ("ready", "starting") for x in self._by_member[h.cfg.member]):
                backlog = self._backlog[h.cfg.member]
                while backlog:
                    chunk = backlog.popleft()
                    self._fail_batch(chunk.batch, f"member '{chunk.member}' has no worker",
                                     UnavailableError)
                    self._drop(chunk)
            self._changed.notify_all()

    def _restart(self, h: WorkerHandle) -> None:
        """Start a new process for `h` (lock held). A restart that fails (the fork server
        is gone, say) counts as a death: `h` backs off and is tried again later."""
        assert self._inputs is not None
        out_layout = self._outputs.layout if self._outputs else None
        try:
            h.start(self._ctx, self.spec, self._inputs.layout, out_layout,
                    self._lock_dir, self.cache_dir)
        except Exception as exc:
            wait_s = h.restart_state.record_death(time.monotonic(), self.restart_policy)
            log.error("restarting worker %s failed (%s: %s); trying again in %.1f s",
                      h.label, type(exc).__name__, exc, max(wait_s, RETRY_FAILED_START_S))
            h.restart_state.next_restart_at = max(h.restart_state.next_restart_at,
                                                  time.monotonic() + RETRY_FAILED_START_S)
            h.state = "backoff"
            return
        h.stats.restarts += 1
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _revive_due(self) -> None:
        """Restart instances whose crash-loop back-off is over; fail work that waited too
        long for a restarting worker (503: the client may retry)."""
        now = time.monotonic()
        with self._changed:
            if self._state != "running":
                return
            for h in self._handles:
                if h.state == "backoff" and h.restart_state.due(now):
                    log.info("restarting worker %s after its back-off", h.label)
                    self._restart(h)
            for member, backlog in list(self._backlog.items()):
                # new work only: work retried after a crash waits for the restart (bounded by
                # start_timeout_s and the request's deadline)
                expired = [c for c in backlog if c.attempts == 0 and now - c.parked_at > MAX_PARK_S]
                for chunk in expired:
                    if chunk.batch.error is not None:
                        continue  # failing its batch already took it out of the backlogs
                    self._backlog[member].remove(chunk)
                    self._fail_batch(chunk.batch, f"member '{member}' is restarting and was not "
                                                  f"ready within {MAX_PARK_S:g} s; retry later",
                                     UnavailableError)
                    self._drop(chunk)

    # ----------------------------------------------------------------- batches
    def _fold(self, batch: _Batch, unit: str) -> None:
        """Fold the logits of the members `unit` computes into the batch's combination, as
        soon as that unit has answered every row (the collector thread only)."""
        assert self._outputs is not None and batch.running is not None
        try:
            for member in self.units[unit]:
                i = self._member_names.index(member)
                batch.running.add(i, self._outputs.view(output_field(i), batch.slot)[:batch.rows])
        except Exception as exc:
            with self._lock:
                self._fail_batch(batch, f"combiner failed: {exc}")

    def _complete(self, batch: _Batch) -> None:
        """Finish a batch whose members have all answered (and been folded in) and resolve
        its requests."""
        assert self._outputs is not None and batch.running is not None
        try:
            probs, agree = batch.running.result()
        except Exception as exc:
            with self._lock:
                self._fail_batch(batch, f"combiner failed: {exc}")
            return
        now, offset = time.perf_counter(), 0
        with self._lock:
            for r in batch.requests:
                rows = slice(offset, offset + r.rows)
                offset += r.rows
                logits = ({m: self._outputs.view(output_field(i), batch.slot)[rows].copy()
                           for i, m in enumerate(self._member_names)}
                          if r.want_member_logits else {})
                with contextlib.suppress(InvalidStateError):
                    r.future.set_result(EnsembleResult(probs[rows], agree[rows], logits))
                self._counters.completed += 1
                self._counters.latencies.append(now - r.submitted)

    def _fail_batch(self, batch: _Batch, message: str,
                    kind: type[InferenceError] = MemberFailedError) -> None:
        """Fail the batch's requests with `kind` (by default: a member's fault, a 500)."""
        if batch.error is not None:
            return
        batch.error = message
        for r in batch.requests:
            if _fail_future(r.future, kind(message)):
                self._counters.failed += 1
        for member, backlog in self._backlog.items():
            keep = deque(c for c in backlog if c.batch is not batch)
            batch.outstanding -= len(backlog) - len(keep)
            self._backlog[member] = keep
        self._maybe_retire(batch)

    def _drop(self, chunk: _Chunk) -> None:
        chunk.batch.outstanding -= 1
        self._maybe_retire(chunk.batch)

    def _maybe_retire(self, batch: _Batch) -> None:
        """Free the batch's slot once no chunk of it can still touch the arenas."""
        if batch.outstanding > 0 or batch.batch_id not in self._batches:
            return
        if batch.error is None and any(batch.remaining.values()):
            return
        del self._batches[batch.batch_id]
        self._inflight -= 1
        self._free_slots.put(batch.slot)
        self._changed.notify_all()

    # ----------------------------------------------------------------- shutdown
    def _shutdown(self, drain_timeout_s: float) -> None:
        with self._changed:
            was = self._state
            self._state = "stopping"
        if was == "running":
            self._requests.close(timeout=drain_timeout_s)
            deadline = time.monotonic() + drain_timeout_s
            for t in self._threads:
                if t.name == "enserve-dispatcher":
                    t.join(timeout=max(0.0, deadline - time.monotonic()))
            with self._changed:
                self._changed.wait_for(lambda: self._inflight == 0,
                                       timeout=max(0.0, deadline - time.monotonic()))
        with self._changed:
            stop_workers(self._handles)
            self._state = "stopped"
            for batch in list(self._batches.values()):
                self._fail_batch(batch, "engine stopped before the batch finished", UnavailableError)
            while True:
                try:
                    r = self._requests.get_nowait()
                except queue.Empty:
                    break
                if r is not None and _fail_future(r.future, UnavailableError("engine stopped")):
                    self._counters.failed += 1
        os.write(self._wake_w, b"x")
        self._free_slots.put(0)  # wake a dispatcher blocked on a slot
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=2.0)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        remove_lock_dir(self._lock_dir)
        for arena in (self._inputs, self._outputs):
            if arena is not None:
                arena.unlink()
                arena.close()


def _fail_future(future: Future[Any], error: BaseException) -> bool:
    try:
        future.set_exception(error)
        return True
    except InvalidStateError:
        return False


def _plan_from_profile(profile: Any, fusion: str = "auto") -> Any:
    """Plan with the planner's greedy algorithm, choosing fused groups per `fusion`."""
    from enserve.plan.fusion import plan_with_fusion

    if isinstance(profile, (str, Path)):
        from enserve.formats.profile import load_profile

        profile = load_profile(profile)
    return plan_with_fusion(profile, fusion, algorithm="greedy")


def _stop_at_exit(ref: weakref.ref[Engine]) -> None:
    """Stop an engine its owner forgot to stop, so no worker or segment outlives us."""
    engine = ref()
    if engine is not None and engine._state not in ("stopped", "new"):
        engine.stop(timeout_s=5.0)


def _has_key(mapping: Mapping[int, float], key: int) -> Any:
    return lambda: key in mapping


def load_plan_file(path: str | Path) -> Any:
    """A plan file through the planner's `load_plan` (validated), else as plain JSON."""
    try:
        from enserve.formats.plan import load_plan
    except ImportError:
        import json

        return json.loads(Path(path).read_text())
    return load_plan(path)
