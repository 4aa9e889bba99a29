"""Driver for the Ray integration test: run inside a loopback-only network namespace by
`test_ray_cluster.py` (`ip netns exec`), it starts a 3-node local Ray cluster and checks
the Ray backend end to end; prints one JSON object with what it measured.

usage: python ray_driver.py TINY_SPEC_DIR SIM_SPEC_DIR
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from enserve.formats.plan import Plan
from enserve.reference import ReferenceExecutor
from enserve.runtime.ray.engine import RayEngine
from enserve.runtime.ray.sandbox import NodeSpec, add_node, local_cluster
from enserve.spec import load_spec

NODES = [NodeSpec("node-0"), NodeSpec("node-1"), NodeSpec("node-2", num_gpus=2)]


def _device(node: str, local: str = "cpu") -> dict[str, Any]:
    kind = "cpu" if local == "cpu" else "cuda"
    return {"id": f"{node}/{local}", "kind": kind, "memory_bytes": 2**30,
            "compute_units": 1 if kind == "cpu" else 100}


def _inst(member: str, device: str, batch: int, share: float = 1) -> dict[str, Any]:
    return {"member": member, "variant": None, "device": device, "batch_size": batch,
            "share": share, "memory_bytes": 0}


def tiny_plan(members: list[str]) -> Plan:
    """An instance on every node, two replicas of one member, batch sizes 1, 4 and 8."""
    a, b, c = members
    return Plan.from_dict({"algorithm": "manual", "objective": "throughput",
            "devices": [_device(f"node-{i}") for i in range(3)],
            "instances": [_inst(a, "node-0/cpu", 4), _inst(b, "node-1/cpu", 1),
                          _inst(b, "node-2/cpu", 1), _inst(c, "node-1/cpu", 8)],
            "predicted": {"throughput": 1.0, "latency_s": 1.0}})


def one_node_plan(members: list[str]) -> Plan:
    """Every instance on the driver's node (node-0): fast lanes, or the compiled graph."""
    a, b, c = members
    return Plan.from_dict({"algorithm": "manual", "objective": "throughput",
            "devices": [_device("node-0")],
            "instances": [_inst(a, "node-0/cpu", 4), _inst(b, "node-0/cpu", 1),
                          _inst(b, "node-0/cpu", 1, 0.5), _inst(c, "node-0/cpu", 8)],
            "predicted": {"throughput": 1.0, "latency_s": 1.0}})


def sim_plan(members: list[str]) -> Plan:
    """Simulated members on node-2's two (fake) GPUs: one shared 50/50, one whole."""
    a, b, c = members
    return Plan.from_dict({"algorithm": "manual", "objective": "throughput",
            "devices": [_device("node-2", "cuda:0"), _device("node-2", "cuda:1")],
            "instances": [_inst(a, "node-2/cuda:0", 8, 50), _inst(b, "node-2/cuda:0", 8, 50),
                          _inst(c, "node-2/cuda:1", 8, 100)],
            "predicted": {"throughput": 1.0, "latency_s": 1.0}})


def max_diff(engine: RayEngine, reference: ReferenceExecutor, shape: tuple[int, ...],
             seeds: range) -> float:
    """Largest difference from the reference over concurrent random requests (probabilities
    and every member's logits)."""
    inputs = [np.random.default_rng(s).standard_normal((1 + s % 5, *shape)).astype(np.float32)
              for s in seeds]
    futures = [engine.submit(x) for x in inputs]
    worst = 0.0
    for x, f in zip(inputs, futures, strict=True):
        got, want = f.result(timeout=60), reference.infer(x)
        worst = max(worst, float(np.abs(got.probabilities - want.probabilities).max()))
        for name, logits in want.member_logits.items():
            worst = max(worst, float(np.abs(got.member_logits[name] - logits).max()))
    return worst


class Load:
    """Clients submitting one-row requests in a closed loop; every answer is checked."""

    def __init__(self, engine: RayEngine, reference: ReferenceExecutor, shape: tuple[int, ...],
                 clients: int = 3) -> None:
        self.engine, self.reference, self.shape = engine, reference, shape
        self.ok = self.wrong = self.hung = 0
        self.errors: list[str] = []
        self.last_ok = 0.0
        self._stop = False
        self._threads = [threading.Thread(target=self._run, args=(k,)) for k in range(clients)]
        for t in self._threads:
            t.start()

    def _run(self, k: int) -> None:
        rng = np.random.default_rng(1000 + k)
        while not self._stop:
            x = rng.standard_normal((1, *self.shape)).astype(np.float32)
            try:
                got = self.engine.submit(x).result(timeout=60)
            except TimeoutError:
                self.hung += 1
                continue
            except Exception as exc:
                self.errors.append(str(exc))
                continue
            want = self.reference.infer(x).probabilities
            if np.abs(got.probabilities - want).max() > 1e-5:
                self.wrong += 1
            self.ok += 1
            self.last_ok = time.monotonic()

    def stop(self) -> dict[str, Any]:
        self._stop = True
        for t in self._threads:
            t.join(timeout=120)
        return {"ok": self.ok, "wrong": self.wrong, "hung": self.hung,
                "errors": len(self.errors), "error_samples": self.errors[:3]}


def wait_until(check: Any, timeout_s: float) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if check():
            return time.monotonic() - start
        time.sleep(0.25)
    return None


def whole(engine: RayEngine, lost: str | None) -> bool:
    stats = engine.stats()
    nodes_ok = all(v == ("lost" if n == lost else "alive") for n, v in stats["nodes"].items())
    return nodes_ok and all(i["state"] == "ready" for i in stats["instances"])


def one_node_with_a_kill(spec: Any, reference: ReferenceExecutor, prefix: str, stat: str,
                         path_again: Any, **options: Any) -> dict[str, Any]:
    """Every instance on the driver's node: outputs vs the reference (small batches, then
    every batch by object-store reference), an actor killed under load, recovery (`stat` of
    the engine's stats passing `path_again`), outputs again; keys start with `prefix`."""
    import ray

    out: dict[str, Any] = {}
    shape = tuple(spec.inputs[0].shape[1:])
    with RayEngine(spec, one_node_plan([m.name for m in spec.members]), max_batch=16,
                   check_interval_s=0.25, task_timeout_s=30, backlog_timeout_s=40,
                   **options) as engine:
        out[f"{prefix}_max_diff"] = max_diff(engine, reference, shape, range(12))
        engine.inline_bytes = 0  # every batch through the object store, by reference
        out[f"{prefix}_max_diff_put"] = max_diff(engine, reference, shape, range(40, 46))
        engine.inline_bytes = 100 * 1024
        out[f"{prefix}_initial"] = engine.stats()[stat]
        load = Load(engine, reference, shape)
        time.sleep(1.0)
        ray.kill(engine._actors[1].handle, no_restart=True)
        out[f"{prefix}_kill_recovered_s"] = wait_until(
            lambda: engine.stats()["restarts"] >= 1 and whole(engine, None)
            and path_again(engine.stats()[stat] or {}), 60)
        time.sleep(1.0)
        out[f"{prefix}_kill_load"] = load.stop()
        out[f"{prefix}_max_diff_after"] = max_diff(engine, reference, shape, range(30, 36))
        out[f"{prefix}_final"] = engine.stats()[stat]
    return out


def main() -> None:
    tiny_dir, sim_dir = Path(sys.argv[1]), Path(sys.argv[2])
    out: dict[str, Any] = {}
    t0 = time.monotonic()
    cluster = local_cluster(NODES)
    out["cluster_start_s"] = time.monotonic() - t0
    try:
        spec = load_spec(tiny_dir)
        members = [m.name for m in spec.members]
        shape = tuple(spec.inputs[0].shape[1:])
        reference = ReferenceExecutor(spec)
        import ray

        # one node, the default: small batches through each actor's fast lane, large ones
        # by plain calls; an actor killed while its lane is in use: nothing hung or wrong
        out.update(one_node_with_a_kill(spec, reference, "lane", "fast_lane",
                                        lambda s: s["lanes"] == 4))
        # one node: small batches through the compiled graph; an actor killed under load
        # breaks it (plain calls take over, nothing lost), then it is rebuilt
        out.update(one_node_with_a_kill(spec, reference, "graph", "compiled_graph",
                                        lambda s: s.get("builds", 0) >= 2, compiled_graph=True))

        engine = RayEngine(spec, tiny_plan(members), max_batch=16, check_interval_s=0.25,
                           task_timeout_s=30, backlog_timeout_s=40)
        t1 = time.monotonic()
        with engine:
            out["engine_start_s"] = time.monotonic() - t1
            out["instance_nodes"] = sorted({i["node"] for i in engine.stats()["instances"]})
            out["max_diff"] = max_diff(engine, reference, shape, range(12))
            out["graph_three_nodes"] = engine.stats()["compiled_graph"]  # none: plain calls
            out["lane_three_nodes"] = engine.stats()["fast_lane"]  # node-0's actor only

            # an actor killed while requests are in flight: restarted, work retried
            load = Load(engine, reference, shape)
            time.sleep(1.0)
            victim = next(a for a in engine._actors if a.node == "node-0")
            ray.kill(victim.handle, no_restart=True)
            out["actor_kill_recovered_s"] = wait_until(
                lambda: engine.stats()["restarts"] >= 1 and whole(engine, None), 60)
            time.sleep(1.0)
            out["actor_kill_load"] = load.stop()
            out["restarts"] = engine.stats()["restarts"]

            # node-1 removed under load: re-planned onto node-0 and node-2
            load = Load(engine, reference, shape)
            time.sleep(1.0)
            gone = next(n for n in cluster.worker_nodes
                        if n.node_id == engine._node_ids["node-1"])
            t_lost = time.monotonic()
            cluster.remove_node(gone)
            out["node_loss_whole_s"] = wait_until(lambda: whole(engine, "node-1"), 60)
            out["nodes_after_loss"] = sorted({i["node"] for i in engine.stats()["instances"]})
            ok_before = load.ok
            wait_until(lambda: load.ok > ok_before + 5, 30)
            out["served_after_loss"] = load.ok - ok_before
            out["node_loss_load"] = load.stop()
            out["node_loss_total_s"] = time.monotonic() - t_lost

            # node-1 returns: the full plan again
            load = Load(engine, reference, shape)
            t_back = time.monotonic()
            add_node(cluster, NODES[1])
            out["node_return_whole_s"] = wait_until(
                lambda: whole(engine, None) and any(
                    i["node"] == "node-1" for i in engine.stats()["instances"]), 90)
            time.sleep(1.0)
            out["node_return_load"] = load.stop()
            out["node_return_total_s"] = time.monotonic() - t_back
            out["instances_after_return"] = sorted(
                (i["member"], i["device"]) for i in engine.stats()["instances"])
            out["events"] = [e["event"] for e in engine.events()]
            out["max_diff_after"] = max_diff(engine, reference, shape, range(20, 26))

        sim = load_spec(sim_dir)
        sim_ref = ReferenceExecutor(sim)
        # inline_bytes=0: every batch goes through the object store (ray.put once)
        with RayEngine(sim, sim_plan([m.name for m in sim.members]), max_batch=16,
                       inline_bytes=0) as engine:
            stats = engine.stats()
            out["sim_gpu_fractions"] = sorted(i["gpu_fraction"] for i in stats["instances"])
            out["sim_max_diff"] = max_diff(engine, sim_ref, tuple(sim.inputs[0].shape[1:]),
                                           range(6))

        # the server's `--backend ray` (no plan file: one instance per member over the nodes)
        import asyncio

        from enserve.server.app import ServerConfig, backend_factory

        config = ServerConfig(repository=tiny_dir.parent, backend="ray")
        backend = backend_factory(config)(spec)
        try:
            x = np.random.default_rng(7).standard_normal((3, *shape)).astype(np.float32)
            from enserve.result import validate_inputs

            checked = validate_inputs(spec, {spec.inputs[0].name: x})
            outcome = asyncio.run(backend.infer(checked, ["probabilities"], None))
            out["server_backend_diff"] = float(np.abs(
                outcome.result.probabilities - reference.infer(x).probabilities).max())
            out["server_backend_nodes"] = sorted({i["node"] for i in backend.stats()["instances"]})
        finally:
            backend.shutdown()
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()
    out["total_s"] = time.monotonic() - t0
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
