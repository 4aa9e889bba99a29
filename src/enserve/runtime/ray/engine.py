"""`RayEngine`: a plan's instances as Ray actors on a cluster, behind one ensemble batcher.

Same API as the local `Engine` (`start`, `submit`, `infer`, `infer_sync`, `stats`,
`reset_stats`, `stop`), so the server and `enserve bench` drive either. Threads here:
- the dispatcher gathers queued requests into one batch (`Gatherer`), puts it into the
  object store ONCE (`ray.put`) and hands every member's instances chunks of that same
  reference (an actor on a node reads the arrays zero-copy);
- the collector takes answers (and actor readiness) as they arrive and folds each member
  into the batch's `RunningCombination`; the last one answers the batch's requests;
- the supervisor restarts dead actors, kills hung ones, watches the nodes and re-plans
  when one leaves or returns (`enserve.plan.replan`), and (re)builds the compiled graph.

Default (`fast_lane=True`): an actor on this process's node gets small batches (up to
`inline_bytes`) over a fast lane of its own (`enserve.runtime.ray.lane`: a Unix socket it
opened for this process alone) instead of a Ray call; Ray still places, restarts and watches
it, and whatever a lane had outstanding when it closed is sent by plain calls.

Opt-in (`compiled_graph=True`, which turns the lanes off): when every ready actor runs on
this process's node, batches go to them through one Ray Compiled Graph
(`enserve.runtime.ray.graph`: one shared-memory `execute` per batch, all answers in one
read) instead of one actor call per instance. Plain actor
calls (the batch `ray.put` once when larger than `inline_bytes`) serve actors on other
nodes, and any actor set without a working graph (starting, restarting, lost, a graph that
failed); never both at once on one actor. (Across nodes, Ray 2.60's compiled graph hung in
our 3-node test: a read timed out and a raylet died, so it is kept to one node.)

Placement: an instance on `node-2/cpu` is an actor pinned to that node
(`NodeAffinitySchedulingStrategy`, hard) with `share` intra-op threads (CPU shares are
threads, as in the local engine; the actor reserves no Ray CPU so time-shared plans still
schedule); an instance on `node-3/cuda:1` runs in a placement group bundle holding one GPU
of that node (one bundle per planned GPU, so the device is honoured) with `num_gpus` =
share / 100, scaled down where the plan time-shares the GPU (and MPS's thread percentage
set).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import numpy as np

from enserve.cluster import cluster_devices, node_of, qualify, split_device_id
from enserve.combine import RunningCombination
from enserve.devices import Device
from enserve.errors import EnserveError, InferenceError, ModelLoadError
from enserve.formats.plan import Instance, Plan, Predicted
from enserve.formats.profile import Profile
from enserve.plan.replan import diff_instances, replan
from enserve.result import EnsembleResult, ValidInputs, output_names, validate_inputs
from enserve.runtime.batcher import (
    Gatherer,
    PendingRequest,
    RequestQueue,
    fail_expired,
    may_launch_alone,
)
from enserve.runtime.placement import WorkerConfig, configs_from_plan, execution_units
from enserve.runtime.ray.graph import CompiledPath, graph_signature
from enserve.runtime.ray.lane import Lanes
from enserve.runtime.ray.nodes import NODE_ID_LABEL, LiveNode, connect, live_nodes
from enserve.runtime.stats import EngineCounters, member_summary, percentiles
from enserve.spec import EnsembleSpec, load_spec

log = logging.getLogger("enserve.runtime.ray")


@dataclass
class _Stats:
    tasks: int = 0
    rows: int = 0
    compute_s: float = 0.0
    failures: int = 0
    chunk_rows: deque[int] = field(default_factory=lambda: deque(maxlen=5000))
    compute_samples: deque[float] = field(default_factory=lambda: deque(maxlen=5000))


@dataclass
class _Actor:
    """One planned instance and the Ray actor running it (replaced on restart)."""

    key: int
    instance: Instance
    cfg: WorkerConfig
    gpu_fraction: float
    handle: Any = None
    state: str = "starting"  # starting → ready → (dead → starting) | retiring → stopped
    started_at: float = field(default_factory=time.monotonic)
    generation: int = 0
    inflight: dict[int, _Chunk] = field(default_factory=dict)
    outstanding_rows: int = 0
    last_progress: float = field(default_factory=time.monotonic)
    restarts: int = 0
    pid: int | None = None
    lane: int | None = None  # its fast lane (enserve.runtime.ray.lane), if it has one
    error: str | None = None
    stats: _Stats = field(default_factory=_Stats)

    @property
    def node(self) -> str:
        return node_of(self.instance.device) or ""

    @property
    def label(self) -> str:
        return f"{self.cfg.member}#{self.key}@{self.instance.device}"


@dataclass
class _Batch:
    batch_id: int
    requests: list[PendingRequest]
    rows: int
    ref: Any
    remaining: dict[str, int]
    running: RunningCombination
    logits: dict[str, np.ndarray] = field(default_factory=dict)
    error: str | None = None
    done: bool = False
    started: float = field(default_factory=time.perf_counter)
    member_s: dict[str, float] = field(default_factory=dict)  # member -> seconds until done


@dataclass
class _Chunk:
    task_id: int
    batch: _Batch
    unit: str
    start: int
    stop: int
    attempts: int = 0
    token: int = 0  # bumped on every dispatch: answers of an earlier dispatch are ignored
    path_failures: int = 0  # a failed graph or lane retries it once by a plain call, free
    queued_at: float = field(default_factory=time.monotonic)

    @property
    def rows(self) -> int:
        return self.stop - self.start


class _Sent(NamedTuple):
    """A chunk as sent to an actor, whichever way (a plain call, the compiled graph, a
    fast lane): it comes back with the answer, which counts only while `token` is still
    the chunk's and `generation` its actor's."""

    actor: _Actor
    generation: int
    token: int
    chunk: _Chunk


class RayEngine:
    """Serve `spec` with the instances of `plan` as Ray actors (see the module docstring).

    `plan`: a `Plan`, plan dict or JSON path; device ids name nodes (`node-1/cpu`), a plan
    without node names runs on the driver's node. None: planned from `profile` on the
    cluster's devices when given, else one instance per member, members spread over the
    nodes' CPUs. `address`: the cluster (see `enserve.runtime.ray.nodes.connect`).
    """

    def __init__(
        self,
        spec: EnsembleSpec | str | Path,
        plan: Plan | None = None,
        *,
        profile: Profile | None = None,
        address: str | None = None,
        max_batch: int = 32,
        max_delay_s: float = 0.002,
        max_queue: int = 1024,
        inflight_batches: int = 2,
        max_restarts: int = 3,
        start_timeout_s: float = 600.0,
        task_timeout_s: float | None = 120.0,
        backlog_timeout_s: float = 60.0,
        check_interval_s: float = 0.5,
        default_batch_size: int = 8,
        inline_bytes: int = 100 * 1024,
        compiled_graph: bool = False,
        fast_lane: bool = True,
    ) -> None:
        self.spec = spec if isinstance(spec, EnsembleSpec) else load_spec(spec)
        self.profile = profile
        self._given_plan: Plan | None = plan
        self.address = address
        self.max_batch = max_batch
        self.max_restarts = max_restarts
        self.start_timeout_s = start_timeout_s
        self.task_timeout_s = task_timeout_s
        self.backlog_timeout_s = backlog_timeout_s
        self.check_interval_s = check_interval_s
        self.default_batch_size = default_batch_size
        self.inline_bytes = inline_bytes  # batches up to this size travel inside the tasks
        self.compiled_graph = compiled_graph  # batches through one compiled graph (one node)
        self._graph: CompiledPath | None = None
        self.fast_lane = fast_lane and not compiled_graph  # same-node actors: own transport
        self._lanes: Lanes | None = None
        self._graph_refused: set[tuple[Any, ...]] = set()  # signatures that failed
        self._graph_builds = 0
        self._graph_building = False  # a graph is being built: dispatch waits
        self._graph_retry_at = 0.0
        self._old_graphs: list[CompiledPath] = []  # closed, their loops still leaving
        self._inflight_batches = max(1, inflight_batches)
        self.plan: Plan | None = None  # the full plan (all nodes), node-qualified
        self.current: Plan | None = None  # what runs now (re-planned while nodes are lost)
        self._member_names = [m.name for m in self.spec.members]
        self._weights = self.spec.member_weights()
        self._requests = RequestQueue(max_queue)
        self._slots = threading.BoundedSemaphore(max(1, inflight_batches))
        self._inflight = 0
        self._last_batch_requests = 0  # requests the last answered batch held
        self._gatherer = Gatherer(self._requests, max_batch, max_delay_s,
                                  busy=lambda: self._inflight > 0)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._events: queue.Queue[tuple[str, Any, Future[Any]] | None] = queue.Queue()
        self._actors: list[_Actor] = []
        self._keys = itertools.count()
        self._ids = itertools.count()
        self.units: dict[str, tuple[str, ...]] = {}
        self._backlog: dict[str, deque[_Chunk]] = {}
        self._node_ids: dict[str, str] = {}  # plan node name -> live Ray node id
        self._lost: dict[str, float] = {}  # plan node name -> when it was lost
        self._bundles: dict[tuple[str, str], Any] = {}  # (node id, cuda:i) -> placement group
        self._events_log: deque[dict[str, Any]] = deque(maxlen=200)
        self._counters = EngineCounters()
        self._replans = 0
        self._nodes_due = False  # an actor died: look at the nodes on the next round
        self._state = "new"
        self._threads: list[threading.Thread] = []
        self._classes: tuple[int, ...] | None = None
        self._remote_cls: Any = None
        self._here = ""  # this process's Ray node id

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> RayEngine:
        """Connect, plan if needed, start every actor and wait until all are ready."""
        if self._state != "new":
            raise EnserveError(f"engine already {self._state}")
        self._state = "starting"
        try:
            import ray

            from enserve.runtime.ray.actor import InstanceActor

            connect(self.address)
            self._here = str(ray.get_runtime_context().get_node_id())
            self._remote_cls = ray.remote(InstanceActor)
            if self.fast_lane:
                self._lanes = Lanes(self._on_result, self._path_broken)
            nodes = live_nodes()
            if not nodes:
                raise ModelLoadError("the Ray cluster has no node with a CPU or GPU")
            self.plan = self._full_plan(nodes)
            self.units = execution_units(configs_from_plan(self.spec, self.plan))
            self._backlog = {u: deque() for u in self.units}
            self._node_ids = self._match_nodes(nodes, {})
            alive = self._alive_devices()
            target = self.plan if len(alive) == len(self.plan.devices) else replan(
                self.plan, alive, self.profile)
            with self._lock:
                self._apply(target)
            self._spawn(self._collect_loop, "collector")
            self._wait_ready()
            self._check_graph()
            self._counters.reset()
            self._state = "running"
            self._spawn(self._dispatch_loop, "dispatcher")
            self._spawn(self._supervise_loop, "supervisor")
        except BaseException:
            self._shutdown(0.0)
            raise
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop accepting, answer what is queued or in flight (up to `timeout_s`), kill the
        actors and remove the placement groups. Safe to call twice."""
        if self._state in ("stopped", "new"):
            self._state = "stopped"
            return
        self._shutdown(timeout_s)

    def __enter__(self) -> RayEngine:
        if self._state == "new":
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ----------------------------------------------------------------- requests
    def submit(self, inputs: Mapping[str, np.ndarray] | np.ndarray,
               outputs: Sequence[str] | None = None,
               deadline: float | None = None) -> Future[EnsembleResult]:
        """Queue one request batch; the future resolves to its EnsembleResult (or raises
        InferenceError naming what failed). OverloadedError when the queue is full.
        `outputs` and `deadline` as in `enserve.runtime.Engine.submit`."""
        if self._state != "running":
            raise InferenceError(f"engine is {self._state}, not accepting requests")
        if outputs is None:
            logits = tuple(self._member_names)
        else:
            unknown = sorted(set(outputs) - set(output_names(self.spec)))
            if unknown:
                raise InferenceError(f"unknown output(s) {unknown}; available: "
                                     f"{output_names(self.spec)}")
            logits = tuple(m for m in self._member_names if f"logits_{m}" in outputs)
        if isinstance(inputs, ValidInputs):
            arrays = inputs
            if inputs.rows > self.max_batch:
                raise InferenceError(f"batch {inputs.rows} exceeds the limit {self.max_batch}")
        else:
            arrays = validate_inputs(self.spec, inputs, max_batch=self.max_batch)
        future: Future[EnsembleResult] = Future()
        request = PendingRequest(arrays, arrays.rows, future, logits, deadline)
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
        """Launch a lone request from the caller's thread where `may_launch_alone` allows
        it (the local engine's rule); False: queue it for the dispatcher thread."""
        if not may_launch_alone(self._state == "running", self._inflight,
                                self._requests.depth(), self._last_batch_requests):
            return False
        if not self._slots.acquire(blocking=False):
            return False
        try:
            self._launch([request])
        except Exception as exc:  # as in the dispatcher: answer, never lose the request
            log.exception("launch failed")
            _fail_future(request.future, InferenceError(f"dispatch failed: {exc}"))
            self._slots.release()
        return True

    async def infer(self, inputs: Mapping[str, np.ndarray] | np.ndarray,
                    outputs: Sequence[str] | None = None,
                    deadline: float | None = None) -> EnsembleResult:
        return await asyncio.wrap_future(self.submit(inputs, outputs, deadline))

    def infer_sync(self, inputs: Mapping[str, np.ndarray] | np.ndarray,
                   outputs: Sequence[str] | None = None,
                   timeout: float | None = None) -> EnsembleResult:
        try:
            return self.submit(inputs, outputs).result(timeout=timeout)
        except TimeoutError:
            raise InferenceError(f"no answer within {timeout} s") from None

    # ----------------------------------------------------------------- introspection
    @property
    def predicted_throughput(self) -> float | None:
        plan = self.current or self.plan
        predicted = plan.predicted if plan else None
        return predicted.throughput if predicted and predicted.throughput > 0 else None

    @property
    def configs(self) -> list[WorkerConfig]:
        with self._lock:
            return [a.cfg for a in self._actors]

    def worker_pids(self) -> dict[str, int]:
        with self._lock:
            return {a.label: a.pid for a in self._actors if a.pid is not None}

    def memory(self) -> dict[str, Any]:
        """RSS/PSS/USS of the actors on this machine's node (`workers`; actors on other
        nodes are not measured from here) and of this process's tree (`tree`)."""
        from enserve.runtime.memory import pids_memory, tree_memory

        with self._lock:
            here = {name for name, nid in self._node_ids.items() if nid == self._here}
            pids = [a.pid for a in self._actors if a.pid is not None and a.node in here]
            elsewhere = sum(1 for a in self._actors if a.node not in here)
        return {"workers": pids_memory(pids).as_dict(), "tree": tree_memory().as_dict(),
                "actors_on_other_nodes": elsewhere}

    def events(self) -> list[dict[str, Any]]:
        """Node losses and returns, re-plans and actor restarts, oldest first."""
        with self._lock:
            return list(self._events_log)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            uptime = time.perf_counter() - self._counters.started
            instances = [self._instance_summary(a, uptime) for a in self._actors]
            c = self._counters
            return {
                "backend": "ray",
                "state": self._state,
                "uptime_s": uptime,
                "requests": {"completed": c.completed, "failed": c.failed,
                             "rejected": c.rejected},
                "queue_depth": self._requests.depth(),
                "inflight_batches": self._inflight,
                "batches": c.batches,
                "mean_batch_rows": float(np.mean(c.batch_rows)) if c.batch_rows else 0.0,
                "latency": percentiles(c.latencies),
                "restarts": sum(a.restarts for a in self._actors),
                "replans": self._replans,
                "compiled_graph": self._graph_summary(),
                "fast_lane": None if self._lanes is None else {
                    "lanes": self._lanes.open,
                    "tasks": self._lanes.tasks, "broken": self._lanes.broken},
                "nodes": {name: ("lost" if name in self._lost else "alive")
                          for name in self._plan_nodes()},
                "members": member_summary(instances) if instances else {},
                "instances": instances,
            }

    def _graph_summary(self) -> dict[str, Any] | None:
        g = self._graph
        if g is None:
            return None if not self._graph_builds else {"builds": self._graph_builds,
                                                        "usable": False}
        return {"actors": len(g.keys), "executions": g.executions, "builds": self._graph_builds,
                "usable": g.usable, "broken": g.broken}

    def reset_stats(self) -> None:
        with self._lock:
            self._counters.reset()
            for a in self._actors:
                a.stats = _Stats()

    def _instance_summary(self, a: _Actor, uptime: float) -> dict[str, Any]:
        s = a.stats
        return {
            "label": a.label, "member": a.cfg.member, "variant": a.cfg.variant,
            "framework": "ray", "device": a.instance.device, "node": a.node,
            "batch_size": a.cfg.batch_size, "share": a.instance.share,
            "threads": a.cfg.threads, "gpu_fraction": a.gpu_fraction, "cores": None,
            "pid": a.pid if a.state == "ready" else None, "state": a.state,
            "tasks": s.tasks, "rows": s.rows,
            "mean_chunk_rows": float(np.mean(s.chunk_rows)) if s.chunk_rows else 0.0,
            "compute": percentiles(s.compute_samples),
            "utilization": s.compute_s / uptime if uptime > 0 else 0.0,
            "failures": s.failures, "restarts": a.restarts,
        }

    # ----------------------------------------------------------------- planning
    def _full_plan(self, nodes: Sequence[LiveNode]) -> Plan:
        """The plan over every node: given (qualified with the driver's node where it names
        none), planned from the profile, or one instance per member over the nodes' CPUs."""
        if self._given_plan is not None:
            return _qualify_plan(self._given_plan, _driver_node(nodes))
        devices = cluster_devices([n.node for n in nodes])
        if self.profile is not None:
            from enserve.plan import plan as make_plan

            return make_plan(self.profile, "greedy", devices=devices)
        cpus = [d for d in devices if d.kind == "cpu"] or devices
        instances = tuple(
            Instance(m.name, None, cpus[i % len(cpus)].id, self.default_batch_size,
                     1.0 if cpus[i % len(cpus)].kind == "cpu" else 100.0, 0)
            for i, m in enumerate(self.spec.members))
        return Plan("default", "throughput", tuple(devices), instances, Predicted(0.0, 0.0),
                    members=tuple(self._member_names))

    def _plan_nodes(self) -> list[str]:
        assert self.plan is not None
        return list(dict.fromkeys(node_of(d.id) or "" for d in self.plan.devices))

    def _match_nodes(self, nodes: Sequence[LiveNode], current: Mapping[str, str]
                     ) -> dict[str, str]:
        """Plan node -> live node id: kept while alive; a missing one takes a live node of
        the same name, else an unclaimed unlabelled node with room for its devices."""
        assert self.plan is not None
        alive = {n.node_id: n for n in nodes}
        mapping = {name: nid for name, nid in current.items() if nid in alive}
        claimed = set(mapping.values())
        by_node: dict[str, list[Device]] = {}
        for d in self.plan.devices:
            by_node.setdefault(node_of(d.id) or "", []).append(d)
        for name in self._plan_nodes():
            if name in mapping:
                continue
            same = [n for n in nodes if n.name == name and n.node_id not in claimed]
            room = [n for n in nodes if n.node_id not in claimed
                    and "enserve-node" not in n.node.labels
                    and _has_room(n, by_node.get(name, []))]
            for pick in (same or room)[:1]:
                mapping[name] = pick.node_id
                claimed.add(pick.node_id)
        return mapping

    def _alive_devices(self) -> list[Device]:
        assert self.plan is not None
        return [d for d in self.plan.devices if (node_of(d.id) or "") in self._node_ids]

    def _check_nodes(self) -> None:
        """Notice lost and returned nodes; re-plan when the set of alive nodes changed."""
        try:
            nodes = live_nodes()
        except Exception as exc:  # the GCS briefly unreachable: try again next round
            log.warning("cannot list Ray nodes: %s", exc)
            return
        with self._lock:
            before = dict(self._node_ids)
            mapping = self._match_nodes(nodes, before)
            if mapping == before:
                return
            now = time.monotonic()
            for name in self._plan_nodes():
                if name in before and name not in mapping:
                    self._lost[name] = now
                    self._note("node-lost", node=name)
                elif name in mapping and before.get(name) != mapping[name] and name in self._lost:
                    del self._lost[name]
                    self._note("node-returned", node=name)
            for (node_id, gpu), pg in list(self._bundles.items()):
                if node_id not in mapping.values():
                    self._remove_bundle(node_id, gpu, pg)
            self._node_ids = mapping
            assert self.plan is not None
            alive = self._alive_devices()
            try:
                target = self.plan if len(alive) == len(self.plan.devices) else replan(
                    self.plan, alive, self.profile)
            except EnserveError as exc:
                self._note("replan-failed", error=str(exc))
                log.error("re-planning on the remaining nodes failed: %s", exc)
                return
            self._replans += 1
            self._note("replanned", instances=len(target.instances),
                       nodes=sorted(mapping))
            self._apply(target)

    def _apply(self, target: Plan) -> None:
        """Start and stop actors to run `target`, keeping those already running it (lock
        held). Actors being replaced by new ones keep serving until those are ready."""
        fractions = _gpu_fractions(target)
        live = [a for a in self._actors if a.state in ("starting", "ready", "dead")]
        current = [a.instance for a in live]
        diff = diff_instances(current, list(target.instances))
        keep = set()
        for i, j in diff.keep:
            if abs(live[i].gpu_fraction - fractions[j]) > 1e-9:
                continue  # the GPU's split changed: replace it
            keep.add(i)
        starts = [j for j in range(len(target.instances))
                  if j not in {jj for ii, jj in diff.keep if ii in keep}]
        configs = [replace(c, device=split_device_id(c.device)[1])  # local id: cpu, cuda:1
                   for c in configs_from_plan(self.spec, target)]
        for i, a in enumerate(live):
            if i in keep:
                continue
            if a.state == "ready" and node_of(a.instance.device) in self._node_ids:
                a.state = "replaced"  # serves until its unit's new actors are ready
            else:
                self._retire(a)
        for j in starts:
            actor = _Actor(next(self._keys), target.instances[j], configs[j], fractions[j])
            self._actors.append(actor)
            self._launch_actor(actor)
        self.current = target
        self._changed.notify_all()

    # ----------------------------------------------------------------- actors
    def _launch_actor(self, a: _Actor) -> None:
        """Create the Ray actor for `a` on its node (lock held); readiness arrives later."""
        from ray.util.scheduling_strategies import (
            NodeAffinitySchedulingStrategy,
            PlacementGroupSchedulingStrategy,
        )

        node_id = self._node_ids.get(a.node)
        if node_id is None:
            a.state, a.error = "dead", f"node {a.node!r} is not alive"
            return
        options: dict[str, Any] = {"num_cpus": 0, "max_restarts": 0, "max_task_retries": 0,
                                   "max_concurrency": 1}
        local = a.cfg.device
        if a.cfg.is_cpu:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=False)
        else:
            pg = self._bundle(node_id, local)
            options["num_gpus"] = a.gpu_fraction
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                pg, placement_group_bundle_index=0)
        a.generation += 1
        a.state, a.started_at, a.error, a.pid = "starting", time.monotonic(), None, None
        self._close_lane(a, "its actor is restarted")
        from enserve.members.trust import trusted_entries
        from enserve.runtime.ray.actor import ActorConfig

        c = a.cfg
        a.handle = self._remote_cls.options(**options).remote(self.spec, ActorConfig(
            c.index, c.member, c.variant, c.device, c.batch_size, c.share, c.covers,
            tuple(trusted_entries())))
        probe = {t.name: np.random.default_rng(0).standard_normal(
            (1, *(d if d > 0 else 1 for d in t.shape[1:]))).astype(np.float32)
            for t in self.spec.inputs}
        probe = {k: v.astype(_dtype(self.spec, k)) for k, v in probe.items()}
        lane = None  # a fast lane for an actor on this node (the folder is on this machine)
        if self._lanes is not None and node_id == self._here:
            lane = (self._lanes.folder, self._lanes.token)
        ref = a.handle.ready.remote(probe, lane)
        generation = a.generation
        ref.future().add_done_callback(
            lambda f: self._events.put(("ready", (a, generation), f)))

    def _bundle(self, node_id: str, gpu: str) -> Any:
        """The placement group holding GPU `gpu` of node `node_id` (one bundle, one GPU)."""
        from ray.util import placement_group

        key = (node_id, gpu)
        if key not in self._bundles:
            self._bundles[key] = placement_group(
                [{"GPU": 1.0}], strategy="STRICT_PACK",
                bundle_label_selector=[{NODE_ID_LABEL: node_id}])
        return self._bundles[key]

    def _remove_bundle(self, node_id: str, gpu: str, pg: Any) -> None:
        from ray.util import remove_placement_group

        self._bundles.pop((node_id, gpu), None)
        with contextlib.suppress(Exception):
            remove_placement_group(pg)

    def _retire(self, a: _Actor) -> None:
        """Stop using `a` and kill its actor (lock held); its in-flight chunks fail over."""
        a.state = "stopped"
        self._kill(a)
        if a in self._actors:
            self._actors.remove(a)

    def _kill(self, a: _Actor) -> None:
        self._close_lane(a, f"actor {a.label} killed")
        if a.handle is None:
            return
        import ray

        with contextlib.suppress(Exception):
            ray.kill(a.handle, no_restart=True)

    def _close_lane(self, a: _Actor, why: str) -> None:
        """Stop using `a`'s fast lane (lock held); what it had outstanding goes by plain
        calls (chunks already sent again elsewhere are skipped)."""
        if a.lane is None or self._lanes is None:
            return
        outstanding = self._lanes.close_lane(a.lane)
        a.lane = None
        if outstanding:
            self._path_broken(outstanding, why)

    def _open_lane(self, a: _Actor, generation: int, info: Mapping[str, Any]) -> int | None:
        """Connect to the fast lane `a` opened (no lock held: a socket handshake)."""
        path = info.get("lane")
        if info.get("lane_error"):
            log.warning("%s opened no fast lane (plain calls): %s", a.label, info["lane_error"])
        if self._lanes is None or not isinstance(path, str) or generation != a.generation:
            return None
        return self._lanes.connect(path)

    def _on_ready(self, a: _Actor, generation: int, future: Future[Any]) -> None:
        lane = None
        with contextlib.suppress(Exception):
            lane = self._open_lane(a, generation, future.result())
        try:
            self._mark_ready(a, generation, future, lane)
        finally:
            if lane is not None and a.lane != lane and self._lanes is not None:
                self._lanes.close_lane(lane)  # not taken (not ready after all): nothing sent

    def _mark_ready(self, a: _Actor, generation: int, future: Future[Any],
                    lane: int | None) -> None:
        with self._changed:
            if generation != a.generation or a.state != "starting":
                return
            try:
                info = future.result()
            except Exception as exc:
                a.error = _reason(exc)
                a.state = "dead"
                self._note("actor-failed", actor=a.label, error=a.error)
                if self._state == "starting":
                    self._changed.notify_all()
                return
            shape = tuple(info["output_shape"][1:])
            if self._classes is None:
                self._classes = shape
            elif shape != self._classes:
                a.error = (f"{a.label} returns logits {list(info['output_shape'])}, other "
                           f"members {[-1, *self._classes]}: output shapes must agree")
                a.state = "dead"
                a.restarts = self.max_restarts
                self._changed.notify_all()
                return
            a.state, a.pid, a.last_progress = "ready", int(info["pid"]), time.monotonic()
            a.lane = lane
            backlog = self._backlog.get(a.cfg.member, deque())
            while backlog:
                self._assign(backlog.popleft())
            self._retire_replaced(a.cfg.member)
            self._changed.notify_all()

    def _retire_replaced(self, unit: str) -> None:
        """Once no new actor of `unit` is still starting, the ones it replaced go."""
        mine = [a for a in self._actors if a.cfg.member == unit]
        if any(a.state == "starting" for a in mine):
            return
        for a in mine:
            if a.state == "replaced":
                if a.inflight:
                    a.state = "draining"
                else:
                    self._retire(a)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        with self._changed:
            while True:
                live = [a for a in self._actors if a.state != "stopped"]
                failed = [a for a in live if a.state == "dead"]
                if failed:
                    raise ModelLoadError("; ".join(f"{a.label}: {a.error}" for a in failed))
                if all(a.state == "ready" for a in live):
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    waiting = [a.label for a in live if a.state != "ready"]
                    raise ModelLoadError(f"Ray actors not ready after {self.start_timeout_s:g}"
                                         f" s: {', '.join(waiting)} (not enough resources "
                                         "on their node?)")
                self._changed.wait(timeout=min(left, 0.5))

    # ----------------------------------------------------------------- dispatcher
    def _dispatch_loop(self) -> None:
        while True:
            first = self._gatherer.first()
            if first is None:
                return
            self._slots.acquire()
            batch = self._gatherer.fill([first])
            if self._state == "stopped":
                for r in batch:
                    _fail_future(r.future, InferenceError("engine stopped"))
                self._slots.release()
                continue
            try:
                self._launch(batch)
            except Exception as exc:  # never let the dispatcher die silently
                log.exception("dispatch failed")
                for r in batch:
                    _fail_future(r.future, InferenceError(f"dispatch failed: {exc}"))
                self._slots.release()

    def _launch(self, requests: list[PendingRequest]) -> None:
        import ray

        requests, late = fail_expired(requests)
        if late:
            with self._lock:
                self._counters.failed += late
        if not requests:
            self._slots.release()
            return
        rows = sum(r.rows for r in requests)
        if len(requests) == 1:
            arrays = dict(requests[0].inputs)
        else:
            arrays = {name: np.concatenate([r.inputs[name] for r in requests])
                      for name in requests[0].inputs}
        with self._changed:  # a graph being built: its actors must be idle meanwhile
            self._changed.wait_for(lambda: not self._graph_building)
            graph = self._graph if self._graph is not None and self._graph.usable else None
        if sum(a.nbytes for a in arrays.values()) <= self.inline_bytes:
            ref: Any = arrays  # small: inside each task or the graph's channel, no store trip
        else:  # once: every member's actors read this one copy (also through the graph)
            ref = ray.put(arrays)
        with self._lock:
            batch = _Batch(next(self._ids), requests, rows, ref, {u: rows for u in self.units},
                           RunningCombination(self.spec.combiner, self._weights,
                                              len(self._member_names)))
            self._inflight += 1
            self._counters.batches += 1
            self._counters.batch_rows.append(rows)
            sent = self._graph_chunks(batch, graph) if graph is not None else None
            if graph is not None and sent is None:  # a unit lost its graph actors: drop it
                self._drop_graph(graph)
            if sent is None:
                for unit in self.units:
                    # one task per serving actor (it runs its rows in pieces of its planned
                    # batch size): a batch costs a task per instance, not per planned batch;
                    # rows in proportion to the instances' shares (a half-share replica
                    # gets half the rows, so no batch waits on its slowest replica)
                    actors = self._serving(unit)
                    if not actors:
                        self._assign(_Chunk(next(self._ids), batch, unit, 0, rows))
                        continue
                    spans = split_rows(rows, [a.instance.share for a in actors])
                    for a, (start, stop) in zip(actors, spans, strict=True):
                        if stop > start:
                            self._assign(_Chunk(next(self._ids), batch, unit, start, stop), a)
        if graph is not None and sent is not None:
            graph_spans = {key: (c.chunk.start, c.chunk.stop) for key, c in sent.items()}
            if not graph.submit(ref, sent, graph_spans):  # not taken: plain calls instead
                self._path_broken(list(sent.values()), "compiled graph not usable", free=True)

    def _graph_chunks(self, batch: _Batch, graph: CompiledPath
                      ) -> dict[int, _Sent] | None:
        """Split `batch` over the graph's ready actors, one chunk each, and mark them sent
        (lock held); None when a unit has no ready actor in the graph."""
        if not graph.usable:
            return None
        keys = set(graph.keys)
        per_unit = {u: [a for a in self._actors if a.key in keys and a.cfg.member == u
                        and a.state in ("ready", "replaced")] for u in self.units}
        if not all(per_unit.values()):
            return None
        sent: dict[int, _Sent] = {}
        for unit, actors in per_unit.items():
            spans = split_rows(batch.rows, [a.instance.share for a in actors])
            for a, (start, stop) in zip(actors, spans, strict=True):
                if stop <= start:
                    continue
                chunk = _Chunk(next(self._ids), batch, unit, start, stop)
                self._mark_sent(a, chunk)
                sent[a.key] = _Sent(a, a.generation, chunk.token, chunk)
        return sent

    def _mark_sent(self, a: _Actor, chunk: _Chunk) -> None:
        if not a.inflight:
            a.last_progress = time.monotonic()
        a.inflight[chunk.task_id] = chunk
        a.outstanding_rows += chunk.rows
        chunk.token += 1

    def _path_broken(self, outstanding: list[_Sent], why: str,
                     free: bool = False) -> None:
        """The compiled graph or a fast lane failed: its outstanding chunks go by plain
        calls (the first time free of the retry budget; a second failure counts as a
        retry)."""
        with self._lock:
            self._nodes_due = True
            for a, _generation, token, chunk in outstanding:
                if token != chunk.token or a.inflight.pop(chunk.task_id, None) is None:
                    continue  # answered already, or sent again when its actor died
                chunk.token += 1  # a late answer from the graph no longer counts
                a.outstanding_rows -= chunk.rows
                if not free:
                    chunk.path_failures += 1
                if chunk.path_failures > 1:
                    self._retry(chunk, why)
                else:
                    self._assign(chunk)

    def _check_graph(self) -> None:
        """Keep the compiled graph in step with the ready actors (every unit must have one,
        all on this process's node: see the module doc). A graph that no longer matches is
        dropped at once (plain calls meanwhile). Building one pauses dispatch until no chunk
        is in flight (an actor inside a graph does not run plain calls: Ray 2.60 stalled
        when we mixed them), then compiles (~1 s) and resumes."""
        if not self.compiled_graph:
            return
        with self._changed:
            ready = sorted((a for a in self._actors if a.state == "ready"), key=lambda a: a.key)
            signature = graph_signature([(a.key, a.generation) for a in ready])
            current = self._graph
            if current is not None and current.signature == signature and current.usable:
                return
            if current is not None:  # stale or broken: stop using it now
                self._drop_graph(current)
            if (signature in self._graph_refused or not ready
                    or time.monotonic() < self._graph_retry_at
                    or any(self._node_ids.get(a.node) != self._here for a in ready)
                    or not all(any(a.cfg.member == u for a in ready) for u in self.units)):
                return
            self._graph_building = True  # the dispatcher waits
            deadline = time.monotonic() + 10.0
            while any(a.inflight for a in self._actors) and time.monotonic() < deadline:
                self._changed.wait(0.02)
            if any(a.inflight for a in self._actors):  # still out (slow or hung): later
                self._graph_building = False
                self._graph_retry_at = time.monotonic() + 30.0
                self._changed.notify_all()
                return
            handles = {a.key: a.handle for a in ready}
            old_graphs, self._old_graphs = self._old_graphs, []
        graph: CompiledPath | None = None
        try:
            for old in old_graphs:  # their loops leave the actors first
                old.join(timeout_s=30.0)
            graph = CompiledPath.build(handles, signature, self._on_result, self._path_broken,
                                       max_inflight=self._inflight_batches,
                                       read_timeout_s=self.task_timeout_s or 3600.0)
        except Exception as exc:
            self._graph_refused.add(signature)
            log.warning("compiled graph not built (plain actor calls): %s", _reason(exc))
        finally:
            with self._changed:
                if graph is not None and self._state in ("starting", "running"):
                    self._graph, graph = graph, None
                    self._graph_builds += 1
                self._graph_building = False
                self._changed.notify_all()
            if graph is not None:  # stopping meanwhile: not used
                graph.close()

    def _drop_graph(self, graph: CompiledPath) -> None:
        """Stop using `graph` (lock held): it is torn down once its executions are read."""
        if self._graph is graph:
            self._graph = None
        self._old_graphs = [g for g in self._old_graphs if g.alive] + [graph]
        graph.close()

    def _serving(self, unit: str) -> list[_Actor]:
        return [a for a in self._actors if a.cfg.member == unit and a.state == "ready"] or [
            a for a in self._actors if a.cfg.member == unit and a.state in ("replaced",)]

    def _assign(self, chunk: _Chunk, to: _Actor | None = None) -> None:
        """Send a chunk to actor `to`, else to the least-loaded ready actor of its unit (lock
        held); with none ready it waits in the backlog (up to `backlog_timeout_s`) for a
        restart or re-plan."""
        if chunk.batch.error is not None or chunk.batch.done:
            return
        ready = [a for a in self._actors if a.cfg.member == chunk.unit
                 and a.state in ("ready", "replaced")]
        if not ready:
            self._backlog[chunk.unit].append(chunk)
            return
        a = to if to is not None and to in ready else min(
            ready, key=lambda x: (x.state != "ready", x.outstanding_rows))
        self._mark_sent(a, chunk)
        sent = _Sent(a, a.generation, chunk.token, chunk)
        inputs = chunk.batch.ref
        if (a.lane is not None and self._lanes is not None and isinstance(inputs, dict)
                and self._lanes.send(a.lane, chunk.task_id, sent,
                                     {k: v[chunk.start:chunk.stop] for k, v in inputs.items()},
                                     0, chunk.rows)):
            return  # a small batch to an actor on this node: its rows through its fast lane
        ref = a.handle.run.remote(inputs, chunk.start, chunk.stop)
        ref.future().add_done_callback(lambda f: self._answered(sent, f))

    def _answered(self, sent: _Sent, future: Future[Any]) -> None:
        """Ray's callback thread: hand the answer to the collector and return at once. (No
        lock is taken here: a thread holding the engine's lock may be inside a Ray call that
        needs this very thread to make progress.)"""
        self._events.put(("result", sent, future))

    # ----------------------------------------------------------------- collector
    def _collect_loop(self) -> None:
        while True:
            event = self._events.get()
            if event is None:
                return
            kind, who, future = event
            try:
                if kind == "ready":
                    actor, generation = who
                    self._on_ready(actor, generation, future)
                else:
                    self._on_result(who, future)
            except Exception:  # keep collecting: one bad event must not hang the rest
                log.exception("collector failed on a %s event", kind)

    def _on_result(self, sent: _Sent, future: Future[Any]) -> None:
        """An actor's answer to a chunk, whichever way it was sent (a plain call's on the
        collector thread, the compiled graph's or a lane's on their reader threads)."""
        a, generation, token, chunk = sent
        with self._lock:
            if token != chunk.token:
                return  # this dispatch was already given up (its actor died): retried elsewhere
        try:
            logits, compute_s = future.result()
        except Exception as exc:
            self._on_failure(a, generation, chunk, exc)
            return
        batch = chunk.batch
        with self._lock:
            if token != chunk.token or a.inflight.pop(chunk.task_id, None) is None:
                return  # given up meanwhile (a broken graph, a dead actor): sent again
            chunk.token += 1  # answered: nothing later may count these rows again
            a.outstanding_rows -= chunk.rows
            a.last_progress = time.monotonic()
            s = a.stats
            s.tasks += 1
            s.rows += chunk.rows
            s.compute_s += compute_s
            s.chunk_rows.append(chunk.rows)
            s.compute_samples.append(compute_s)
            if batch.error is not None or batch.done:
                return
            for member, arr in logits.items():
                out = batch.logits.get(member)
                if out is None:
                    out = batch.logits[member] = np.empty((batch.rows, *arr.shape[1:]),
                                                          dtype=np.float32)
                out[chunk.start:chunk.stop] = arr
            batch.remaining[chunk.unit] -= chunk.rows
            if batch.remaining[chunk.unit] > 0:
                return
            elapsed = time.perf_counter() - batch.started
            try:  # this member answered every row: fold it in (under the lock: one at a time)
                for member in self.units[chunk.unit]:
                    batch.member_s[member] = elapsed
                    batch.running.add(self._member_names.index(member), batch.logits[member])
            except Exception as exc:
                self._fail_batch(batch, f"combiner failed: {exc}")
                return
            if not any(batch.remaining.values()):
                self._complete(batch)

    def _on_failure(self, a: _Actor, generation: int, chunk: _Chunk, exc: BaseException) -> None:
        import ray.exceptions as rex

        with self._lock:
            if a.inflight.pop(chunk.task_id, None) is None:
                return  # already retried when its actor's death was first noticed
            a.outstanding_rows -= chunk.rows
            a.stats.failures += 1
            self._nodes_due = True
            if not isinstance(exc, rex.RayActorError):  # the member itself raised
                self._fail_batch(chunk.batch, f"member '{chunk.unit}' failed: {_reason(exc)}")
                return
            why = a.error or f"actor {a.label} died ({_reason(exc)})"
            if generation == a.generation and a.state in ("ready", "replaced", "draining"):
                self._declare_dead(a, why)
            self._retry(chunk, why)

    def _declare_dead(self, a: _Actor, why: str) -> None:
        """`a` is gone (lock held): everything it held is sent again (or failed, if it was
        already retried once); its late answers no longer count."""
        a.state, a.error = "dead", why
        self._note("actor-died", actor=a.label, error=why)
        for other in list(a.inflight.values()):
            a.inflight.pop(other.task_id, None)
            self._retry(other, why)
        a.outstanding_rows = 0

    def _retry(self, chunk: _Chunk, why: str) -> None:
        chunk.attempts += 1
        if chunk.attempts >= 2:
            self._fail_batch(chunk.batch, f"member '{chunk.unit}': {why} while running this "
                                          "batch (already retried once)")
            return
        chunk.queued_at = time.monotonic()
        self._assign(chunk)

    def _complete(self, batch: _Batch) -> None:
        try:
            probs, agree = batch.running.result()
        except Exception as exc:
            with self._lock:
                self._fail_batch(batch, f"combiner failed: {exc}")
            return
        now, offset = time.perf_counter(), 0
        with self._lock:
            if batch.done or batch.error is not None:
                return
            batch.done = True
            for r in batch.requests:
                rows = slice(offset, offset + r.rows)
                offset += r.rows
                logits = {m: batch.logits[m][rows].copy() for m in r.logits}
                result = EnsembleResult(probs[rows], agree[rows], logits,
                                        member_s=dict(batch.member_s),
                                        queue_s=max(0.0, batch.started - r.submitted))
                with contextlib.suppress(InvalidStateError):
                    r.future.set_result(result)
                self._counters.completed += 1
                self._counters.latencies.append(now - r.submitted)
            self._last_batch_requests = len(batch.requests)
            self._finish(batch)

    def _fail_batch(self, batch: _Batch, message: str) -> None:
        if batch.error is not None or batch.done:
            return
        batch.error = message
        for r in batch.requests:
            if _fail_future(r.future, InferenceError(message)):
                self._counters.failed += 1
        for unit, backlog in self._backlog.items():
            self._backlog[unit] = deque(c for c in backlog if c.batch is not batch)
        self._finish(batch)

    def _finish(self, batch: _Batch) -> None:
        batch.ref = None  # the object store may free it
        self._inflight -= 1
        self._slots.release()
        self._changed.notify_all()

    # ----------------------------------------------------------------- supervisor
    def _supervise_loop(self) -> None:
        next_nodes = 0.0
        while self._state in ("running", "stopping"):
            time.sleep(self.check_interval_s)
            if self._state != "running":
                return
            try:
                if time.monotonic() >= next_nodes or self._nodes_due:
                    self._nodes_due = False
                    self._check_nodes()
                    next_nodes = time.monotonic() + max(1.0, self.check_interval_s)
                self._check_actors()
                self._check_graph()
            except Exception:
                log.exception("supervisor round failed")

    def _check_actors(self) -> None:
        """Restart dead actors on alive nodes, kill hung or slow-starting ones, retire
        replaced ones that have drained, and fail work that has waited too long for an
        actor (never a hung request)."""
        now = time.monotonic()
        with self._lock:
            for a in list(self._actors):
                if a.state == "draining" and not a.inflight:
                    self._retire(a)
                    continue
                if a.state == "ready" and a.inflight and self.task_timeout_s is not None \
                        and now - a.last_progress > self.task_timeout_s:
                    a.error = (f"actor {a.label} answered nothing for {self.task_timeout_s:g} s "
                               "(hung) and was killed")
                    self._note("actor-hung", actor=a.label)
                    # retried now, not when a plain call's RayActorError comes back: a
                    # chunk sent through the compiled graph or a lane has no call of its
                    # own to fail
                    self._declare_dead(a, a.error)
                    self._kill(a)
                elif a.state == "starting" and now - a.started_at > self.start_timeout_s:
                    a.error = f"actor {a.label} not ready after {self.start_timeout_s:g} s"
                    self._kill(a)
                    a.state = "dead"
                    a.generation += 1
                if a.state == "dead" and a.node in self._node_ids:
                    if a.restarts < self.max_restarts:
                        a.restarts += 1
                        self._note("actor-restarted", actor=a.label, why=a.error)
                        self._kill(a)
                        self._launch_actor(a)
                    else:
                        a.state = "failed"
                        self._note("actor-gave-up", actor=a.label, why=a.error)
            for unit, backlog in self._backlog.items():
                alive = any(a.cfg.member == unit and a.state in ("starting", "ready", "dead")
                            and a.node in self._node_ids for a in self._actors)
                while backlog and (not alive or now - backlog[0].queued_at
                                   > self.backlog_timeout_s):
                    chunk = backlog.popleft()
                    reason = ("no actor of it is running or starting" if not alive else
                              f"no actor of it became ready within {self.backlog_timeout_s:g} s")
                    self._fail_batch(chunk.batch, f"member '{unit}': {reason}")

    def _note(self, event: str, **fields: Any) -> None:
        entry = {"t": time.time(), "event": event, **fields}
        self._events_log.append(entry)
        log.warning("%s %s", event, fields)

    # ----------------------------------------------------------------- shutdown
    def _spawn(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=f"enserve-ray-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _shutdown(self, drain_timeout_s: float) -> None:
        with self._changed:
            was = self._state
            self._state = "stopping"
        if was == "running":
            self._requests.close(timeout=drain_timeout_s)
            deadline = time.monotonic() + drain_timeout_s
            for t in self._threads:
                if t.name == "enserve-ray-dispatcher":
                    t.join(timeout=max(0.0, deadline - time.monotonic()))
            with self._changed:
                self._changed.wait_for(lambda: self._inflight == 0,
                                       timeout=max(0.0, deadline - time.monotonic()))
        if self._lanes is not None:  # before the actors go: their lanes' ends close
            self._lanes.close()
        graphs = [g for g in (self._graph, *self._old_graphs) if g is not None]
        self._graph, self._old_graphs = None, []
        for graph in graphs:  # their loops leave the actors before they are killed
            graph.close()
            graph.join(timeout_s=5.0)
        with self._changed:
            self._state = "stopped"
            for r in _drain(self._requests):
                if _fail_future(r.future, InferenceError("engine stopped")):
                    self._counters.failed += 1
            for backlog in self._backlog.values():
                while backlog:
                    self._fail_batch(backlog.popleft().batch, "engine stopped")
            for a in list(self._actors):
                for chunk in list(a.inflight.values()):
                    self._fail_batch(chunk.batch, "engine stopped before the batch finished")
                self._retire(a)
            for (node_id, gpu), pg in list(self._bundles.items()):
                self._remove_bundle(node_id, gpu, pg)
        self._events.put(None)
        with contextlib.suppress(ValueError):
            self._slots.release()  # wake a dispatcher waiting for a slot
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=2.0)


def split_rows(rows: int, weights: Sequence[float]) -> list[tuple[int, int]]:
    """Rows [0, rows) as consecutive spans in proportion to `weights` (largest remainders
    rounded up; a span may be empty, at most one per weight)."""
    total = sum(max(0.0, w) for w in weights)
    if rows <= 0 or not weights:
        return []
    shares = [max(0.0, w) / total if total > 0 else 1 / len(weights) for w in weights]
    exact = [rows * s for s in shares]
    counts = [int(x) for x in exact]
    for i in sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])[:rows - sum(counts)]:
        counts[i] += 1
    spans, start = [], 0
    for n in counts:
        spans.append((start, start + n))
        start += n
    return spans


def _drain(requests: RequestQueue) -> list[PendingRequest]:
    out: list[PendingRequest] = []
    while True:
        try:
            r = requests.get_nowait()
        except queue.Empty:
            return out
        if r is not None:
            out.append(r)


def _fail_future(future: Future[Any], error: BaseException) -> bool:
    try:
        future.set_exception(error)
        return True
    except InvalidStateError:
        return False


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    tail = [line for line in text if line.strip()][-1:] or [type(exc).__name__]
    return f"{type(exc).__name__}: {tail[0][:300]}"


def _dtype(spec: EnsembleSpec, name: str) -> np.dtype[Any]:
    from enserve.datatypes import numpy_dtype

    tensor = next(t for t in spec.inputs if t.name == name)
    return np.dtype(numpy_dtype(tensor.datatype))


def _driver_node(nodes: Sequence[LiveNode]) -> str:
    """The name of the node this process runs on (else the head's)."""
    import ray

    here = str(ray.get_runtime_context().get_node_id())
    for n in nodes:
        if n.node_id == here:
            return n.name
    return next((n.name for n in nodes if n.is_head), nodes[0].name)


def _qualify_plan(plan: Plan, node: str) -> Plan:
    """A plan whose device ids name no node runs on `node` (ids become `node/cpu`)."""
    if all(node_of(d.id) for d in plan.devices):
        return plan
    ids = {d.id: d.id if node_of(d.id) else qualify(node, d.id) for d in plan.devices}
    devices = tuple(Device(ids[d.id], d.kind, d.memory_bytes, d.compute_units)
                    for d in plan.devices)
    instances = tuple(Instance(i.member, i.variant, ids[i.device], i.batch_size, i.share,
                               i.memory_bytes) for i in plan.instances)
    return Plan(plan.algorithm, plan.objective, devices, instances, plan.predicted,
                plan.planning_time_s, members=plan.members)


def _gpu_fractions(plan: Plan) -> list[float]:
    """Per instance: the fraction of its GPU to request (0 on a CPU): share / 100, scaled
    down so that instances time-sharing one GPU (shares above 100) fit on it."""
    kinds = {d.id: d.kind for d in plan.devices}
    units = {d.id: d.compute_units for d in plan.devices}
    totals: dict[str, float] = {}
    for i in plan.instances:
        totals[i.device] = totals.get(i.device, 0.0) + i.share
    out = []
    for i in plan.instances:
        if kinds.get(i.device) != "cuda":
            out.append(0.0)
            continue
        scale = min(1.0, units[i.device] / totals[i.device])
        out.append(float(np.floor(min(1.0, i.share / units[i.device]) * scale * 1e4) / 1e4))
    return out


def _has_room(node: LiveNode, devices: Sequence[Device]) -> bool:
    """Whether `node` has at least the CPUs and GPUs the plan node's devices need."""
    cpus = sum(d.compute_units for d in node.node.devices if d.kind == "cpu")
    gpus = sum(1 for d in node.node.devices if d.kind == "cuda")
    need_cpu = sum(d.compute_units for d in devices if d.kind == "cpu")
    need_gpu = sum(1 for d in devices if d.kind == "cuda")
    return cpus >= need_cpu and gpus >= need_gpu
