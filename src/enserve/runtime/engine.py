"""The engine: runs a plan as worker processes behind one ensemble-level batcher.

`Engine` owns the lifecycle (start, stop) and submission; the work around the workers
runs on three threads in the calling process:
- the caller's thread validates a request and queues it (a full queue rejects it);
- the dispatcher (`runtime.dispatcher`) gathers queued requests into one batch, writes it
  once into a free slot of the shared input arena and hands every unit its chunks;
- the collector (`runtime.collector`) reads what the workers send and notices their
  deaths; a batch's requests are answered when its last unit is in.
Batch bookkeeping is `runtime.batches`, calibration and pinning `runtime.placement`,
crashed and hung workers `runtime.faults`.
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
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from enserve.datatypes import numpy_dtype
from enserve.errors import (
    DeadlineError,
    EnserveError,
    InferenceError,
    ModelLoadError,
    SpecError,
    UnavailableError,
)
from enserve.formats.plan import Plan
from enserve.formats.profile import Profile
from enserve.members.slowed import slow_members
from enserve.result import EnsembleResult, ValidInputs, output_names, validate_inputs
from enserve.runtime.batcher import Gatherer, PendingRequest, RequestQueue
from enserve.runtime.batches import BatchBook, fail_future
from enserve.runtime.calibration import remembered_costs
from enserve.runtime.collector import Collector
from enserve.runtime.corelocks import create_lock_dir, remove_lock_dir
from enserve.runtime.dispatcher import Dispatcher
from enserve.runtime.faults import Faults
from enserve.runtime.messages import Pin, Task
from enserve.runtime.placement import (
    WorkerConfig,
    available_cores,
    balance_cores,
    calibration_inputs,
    configs_from_plan,
    default_configs,
    execution_units,
)
from enserve.runtime.prefetch import OrderedRead, start_ordered_read
from enserve.runtime.restarts import RestartPolicy
from enserve.runtime.shm import Arena, ArrayField
from enserve.runtime.stats import EngineCounters, instance_summary, member_summary, percentiles
from enserve.runtime.supervisor import WorkerHandle, stop_workers, worker_context
from enserve.spec import EnsembleSpec, load_spec

log = logging.getLogger("enserve.runtime")

CALIBRATION_TIMEOUT_S = 60.0


class Engine:
    """Serve `spec` with the instances of `plan` (or a default plan), one process each.

    `plan`: a validated `Plan` (`enserve.plan.load_plan` reads a file, `Plan.of` writes one
    by hand); None plans automatically (from `profile` through the planner where given,
    else one instance per member with members spread over the cores by their measured
    cost). `fusion` ("auto", "on", "off") applies when planning from a profile that
    carries fused groups (see `enserve.plan.fusion.plan_with_fusion`); a plan instance
    whose `group` is set runs that fused group as one unit. `inflight_batches` batches
    run at once; a batch whose requests all have a deadline (`answer_by`) takes one of
    `deadline_slots` more slots first, as it may hold its slot until its deadline while
    a slowed member's work waits.
    """

    def __init__(
        self,
        spec: EnsembleSpec | str | Path,
        plan: Plan | None = None,
        *,
        profile: Profile | None = None,
        max_batch: int = 32,
        max_delay_s: float = 0.002,
        max_queue: int = 1024,
        inflight_batches: int = 2,
        deadline_slots: int = 8,
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
            from enserve.plan.fusion import plan_with_fusion

            plan = plan_with_fusion(profile, fusion, algorithm="greedy")
        self.plan = plan
        self.cores = tuple(cores) if cores else available_cores()
        if plan is not None:
            configs = configs_from_plan(self.spec, plan)
        else:
            configs = default_configs(self.spec, default_batch_size, self.cores)
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.start_timeout_s = start_timeout_s
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._auto_pin = pin and any(c.is_cpu and c.cores is None for c in configs)
        self._handles = [WorkerHandle(c) for c in configs]
        # A unit is what the dispatcher hands chunks to: a member, or a fused group that
        # computes several members at once (writing each one's logits into its own slot).
        self.units = execution_units(configs)
        self._by_unit: dict[str, list[WorkerHandle]] = {u: [] for u in self.units}
        for h in self._handles:
            self._by_unit[h.cfg.member].append(h)
        self._member_names = [m.name for m in self.spec.members]
        self._outputs_known = output_names(self.spec)
        slow = slow_members()  # test hook: ENSERVE_SLOW_MEMBERS
        delays = {u: max((slow.get(m, 0.0) for m in covered), default=0.0)
                  for u, covered in self.units.items()}
        self._ctx = worker_context(start_method)
        self._exclusive_cores = exclusive_cores and pin
        self._lock_dir: str | None = None
        self._slots = max(1, inflight_batches)
        self._spare_slots = max(0, deadline_slots)
        self._requests = RequestQueue(max_queue)
        self._gatherer = Gatherer(self._requests, max_batch, max_delay_s,
                                  busy=lambda: self._book.inflight > 0)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._counters = EngineCounters()
        self._book = BatchBook(self.spec, self.units, 0, self._counters, self._changed)
        self._state = "new"  # new → starting → running → stopping → stopped
        self._wake_r, self._wake_w = os.pipe()
        self._dispatcher = Dispatcher(self._book, self._by_unit, self._requests, self._gatherer,
                                      self._lock, self._counters, delays, self._engine_state,
                                      self._wake)
        self._faults = Faults(self._handles, self._by_unit, self._book, self._changed,
                              self._start_worker, self._dispatcher.assign, self._engine_state,
                              self._wake, max_restarts, restart_policy or RestartPolicy(),
                              start_timeout_s, task_timeout_s)
        self._collector = Collector(self._handles, self._book, self._faults, self._dispatcher,
                                    self._changed, self._engine_state, self._wake_r,
                                    len(self._member_names), max_batch,
                                    self._slots + self._spare_slots)
        self._calibration_ids = itertools.count(1)
        self._inputs: Arena | None = None
        self._threads: list[threading.Thread] = []
        self._prefetch: OrderedRead | None = None

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> Engine:
        """Start every worker in parallel and wait until all have loaded and warmed up."""
        if self._state != "new":
            raise EnserveError(f"engine already {self._state}")
        self._state = "starting"
        atexit.register(_stop_at_exit, weakref.ref(self))
        try:
            self._inputs = Arena.create(self._input_fields(), self._slots + self._spare_slots)
            self._dispatcher.inputs = self._inputs
            if self._exclusive_cores:
                self._lock_dir = create_lock_dir(self.cores)
            from enserve.runtime.launch import weight_files

            self._prefetch = start_ordered_read([  # biggest member's weights first
                weight_files(self.spec, c.member, c.variant, c.device, self.cache_dir)
                for c in self.configs])
            self._launch_all()
            self._spawn_thread(self._collector.run, "collector")
            self._wait_ready()
            if self._auto_pin:
                self._pin_balanced()
            self._book.normal_slots = self._slots
            for slot in range(self._slots + self._spare_slots):
                self._book.release_slot(slot)
            self._counters.reset()
            self._state = "running"
            self._spawn_thread(self._dispatcher.run, "dispatcher")
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
               outputs: Sequence[str] | None = None,
               deadline: float | None = None, *,
               members: Sequence[str] | None = None,
               answer_by: float | None = None,
               min_members: int = 1) -> Future[EnsembleResult]:
        """Queue one request batch; the future resolves to its EnsembleResult.

        `outputs`: the output names wanted (None: all); a member's logits are copied out of
        shared memory only when `logits_<member>` is among them. `deadline`
        (`time.monotonic()`): a request whose batch has not started by then fails with
        DeadlineError without running. Inputs already checked by `validate_inputs`
        (a `ValidInputs`) are not checked again. Raises InferenceError for bad inputs or a
        stopped engine, OverloadedError when the queue is full.

        `members`: run and combine only these (batched apart from other subsets; the result
        names them in `members`). `answer_by` (`time.monotonic()`): answer then with the
        members done if at least `min_members` are (`result.members` names them), else fail
        with DeadlineError; work not started by then is dropped."""
        if self._state != "running":
            raise UnavailableError(f"engine is {self._state}, not accepting requests")
        subset = self._subset(members, min_members)
        if outputs is None:
            logits = subset or tuple(self._member_names)
        else:
            unknown = sorted(set(outputs) - set(self._outputs_known))
            if unknown:
                raise InferenceError(f"unknown output(s) {unknown}; available: "
                                     f"{self._outputs_known}")
            logits = tuple(m for m in self._member_names if f"logits_{m}" in outputs)
        if isinstance(inputs, ValidInputs):
            arrays = inputs
            if inputs.rows > self.max_batch:
                raise InferenceError(f"batch {inputs.rows} exceeds the limit {self.max_batch}")
        else:
            arrays = validate_inputs(self.spec, inputs, max_batch=self.max_batch)
        if subset is not None:
            logits = tuple(m for m in logits if m in subset)
        if answer_by is not None:
            deadline = answer_by if deadline is None else min(deadline, answer_by)
        future: Future[EnsembleResult] = Future()
        request = PendingRequest(arrays, arrays.rows, future, logits, deadline, members=subset,
                                 answer_by=answer_by, min_members=min_members)
        if self._dispatcher.launch_now(request):
            return future
        try:
            self._requests.put(request)
        except InferenceError:
            with self._lock:
                self._counters.rejected += 1
            raise
        return future

    async def infer(self, inputs: Mapping[str, np.ndarray] | np.ndarray,
                    outputs: Sequence[str] | None = None,
                    deadline: float | None = None, *,
                    members: Sequence[str] | None = None,
                    answer_by: float | None = None,
                    min_members: int = 1) -> EnsembleResult:
        return await asyncio.wrap_future(self.submit(
            inputs, outputs, deadline, members=members, answer_by=answer_by,
            min_members=min_members))

    def _subset(self, members: Sequence[str] | None, min_members: int) -> tuple[str, ...] | None:
        """The members asked for in spec order (None: all of them); InferenceError if bad."""
        chosen: tuple[str, ...] | None = None
        if members is not None:
            unknown = sorted(set(members) - set(self._member_names))
            if unknown or not members:
                raise InferenceError(f"unknown member(s) {unknown}; '{self.spec.name}' has "
                                     f"{self._member_names}" if unknown else "no members asked for")
            chosen = tuple(m for m in self._member_names if m in set(members))
            if len(chosen) == len(self._member_names):
                chosen = None  # every member: batched with plain requests
        available = len(chosen) if chosen is not None else len(self._member_names)
        if not 1 <= min_members <= available:
            raise InferenceError(f"min_members must be in [1, {available}], got {min_members}")
        return chosen

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
        """The plan's predicted throughput (samples/s), where it was planned."""
        if self.plan is None or self.plan.predicted is None:
            return None
        return self.plan.predicted.throughput

    @property
    def configs(self) -> list[WorkerConfig]:
        return [h.cfg for h in self._handles]

    @property
    def output_shape(self) -> tuple[int, ...] | None:
        """Logits shape `(-1, classes)` the workers reported when they started."""
        if self._book.outputs is None:
            return None
        return (-1, *self._book.outputs.layout.fields[0].shape[1:])

    def unhealthy(self) -> str | None:
        """Why the engine cannot answer every request now, or None when it can: it is not
        running, or some member has no ready worker (restarting or backing off)."""
        with self._lock:
            if self._state != "running":
                return f"engine is {self._state}"
            down = [u for u, hs in self._by_unit.items() if not any(h.state == "ready" for h in hs)]
        return f"no ready worker for {', '.join(down)}" if down else None

    def member_health(self) -> dict[str, tuple[bool, int]]:
        """Per unit (member or fused group): (has a ready worker, restarts so far)."""
        with self._lock:
            return {u: (any(h.state == "ready" for h in hs), sum(h.stats.restarts for h in hs))
                    for u, hs in self._by_unit.items()}

    def worker_pids(self) -> dict[str, int]:
        with self._lock:
            return {h.label: h.process.pid for h in self._handles if h.process is not None}

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
                "inflight_batches": self._book.inflight,
                "batches": c.batches,
                "mean_batch_rows": float(np.mean(c.batch_rows)) if c.batch_rows else 0.0,
                "latency": percentiles(c.latencies),
                "restarts": sum(i["restarts"] for i in instances),
                "members": member_summary(instances),
                "instances": instances,
                **self._book.policy_counts,
                "late_tasks": dict(self._book.late_tasks),
                "skipped_tasks": dict(self._book.skipped_tasks),
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

    def _launch_all(self) -> None:
        """Start every worker process, the fork requests in parallel: each waits ~10 ms on
        its fork server, and six in a row were a third of a cold start (imagenet6)."""
        assert self._inputs is not None
        layout = self._inputs.layout

        def launch(h: WorkerHandle) -> None:
            h.start(self._ctx, self.spec, layout, None, self._lock_dir, self.cache_dir)

        if len(self._handles) == 1:
            launch(self._handles[0])
            return
        with ThreadPoolExecutor(len(self._handles), thread_name_prefix="enserve-launch") as pool:
            list(pool.map(launch, self._handles))  # re-raises the first failure

    def _spawn_thread(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=f"enserve-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        with self._changed:
            while not all(h.state == "ready" for h in self._handles):
                if self._faults.startup_errors:
                    raise ModelLoadError("; ".join(self._faults.startup_errors))
                left = deadline - time.monotonic()
                if left <= 0:
                    waiting = [h.label for h in self._handles if h.state != "ready"]
                    raise ModelLoadError(f"workers not ready after {self.start_timeout_s:g} s: "
                                         f"{', '.join(waiting)}")
                self._changed.wait(timeout=min(left, 0.5))

    def _pin_balanced(self) -> None:
        """Time one batch of each instance, alone (unless timed before on this machine:
        `runtime.calibration`), then pin instances to cores (LPT)."""
        assert self._inputs is not None
        inputs = self._inputs
        filled = False

        def time_rows(cfg: WorkerConfig, rows: int) -> float | None:
            nonlocal filled
            if not filled:  # random inputs only when something is timed (not when remembered)
                fields = [(f.name, f.dtype, f.shape) for f in inputs.layout.fields]
                for name, arr in calibration_inputs(fields).items():
                    inputs.view(name, 0)[...] = arr
                filled = True
            return self._time_rows(cfg, rows)

        costs, timed = remembered_costs(self.spec, self.configs, time_rows, self.max_batch,
                                        self.cache_dir)
        log.info("placement calibration: %d of %d instances timed", timed, len(costs))
        balanced = balance_cores(self.configs, costs, self.cores)
        for h, cfg in zip(self._handles, balanced, strict=True):
            if cfg.cores and cfg.cores != h.cfg.cores:
                h.cfg = cfg
                h.send(Pin(cfg.cores))
        log.info("pinned: %s", {h.label: h.cfg.cores for h in self._handles})

    def _time_rows(self, cfg: WorkerConfig, rows: int) -> float | None:
        """Run rows [0, rows) of slot 0 on one instance, alone; its compute seconds."""
        h = self._handles[cfg.index]
        task_id = -next(self._calibration_ids)  # negative ids: calibration, not a batch
        with self._changed:
            h.send(Task(task_id, 0, 0, rows))
            calibration = self._collector.calibration
            if self._changed.wait_for(lambda: task_id in calibration,
                                      timeout=CALIBRATION_TIMEOUT_S):
                return calibration.pop(task_id)
        return None

    # ----------------------------------------------------------------- workers
    def _start_worker(self, h: WorkerHandle) -> None:
        """Start a new process for a dead instance (lock held); raises if it cannot."""
        assert self._inputs is not None
        out_layout = self._book.outputs.layout if self._book.outputs else None
        h.start(self._ctx, self.spec, self._inputs.layout, out_layout, self._lock_dir,
                self.cache_dir)

    def _engine_state(self) -> str:
        return self._state

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

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
                self._changed.wait_for(lambda: self._book.inflight == 0,
                                       timeout=max(0.0, deadline - time.monotonic()))
        with self._changed:
            stop_workers(self._handles)
            self._state = "stopped"
            self._book.fail_all("engine stopped before the batch finished")
            while True:
                try:
                    r = self._requests.get_nowait()
                except queue.Empty:
                    break
                if r is not None and fail_future(r.future, UnavailableError("engine stopped")):
                    self._counters.failed += 1
        os.write(self._wake_w, b"x")
        self._book.free_slots.put(0)  # wake a dispatcher blocked on a slot
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=2.0)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        remove_lock_dir(self._lock_dir)
        if self._prefetch is not None:
            self._prefetch.close()
        for arena in (self._inputs, self._book.outputs):
            if arena is not None:
                arena.unlink()
                arena.close()


def _stop_at_exit(ref: weakref.ref[Engine]) -> None:
    """Stop an engine its owner forgot to stop, so no worker or segment outlives us."""
    engine = ref()
    if engine is not None and engine._state not in ("stopped", "new"):
        engine.stop(timeout_s=5.0)
