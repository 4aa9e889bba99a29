"""Scale-out on Ray, measured on this machine (docs/scale-out.md, docs/status.md).

Every part runs Ray inside a loopback-only network namespace (the script re-executes itself
under `ip netns exec`; needs root) on a local `ray.cluster_utils.Cluster`:

  overhead    per-request time of a tiny ensemble (two 1-layer members), one request at a
              time: the Ray backend vs the local engine, same plan, blocks interleaved
  one-node    throughput of one node, same plan, Ray backend vs local engine, in one
              invocation (--spec: examples/digits by default, examples/imagenet6 with its
              plan.json for the target's figure)
  simulated   simulated members (sleeping their profiled latency) on a simulated cluster of
              4 nodes x 4 GPUs (fake GPU resources): Pochelu's 12 members x 4 GPUs and
              1 member x 16 GPUs, measured vs the plan's prediction, and 1 -> 2 -> 4 nodes
  node-loss   a node removed under load and returned: requests answered / failed / hung,
              and how long until the service is whole again
  idle        CPU the engine's processes (driver and actors) use while no request comes,
              fast lanes (the default) vs plain actor calls vs the compiled graph (2 tiny
              members, one node)

usage: python benchmarks/scale_out.py [PART ...] [--out FILE] [--duration S]

SCALE_OUT_GRAPH=1 sends one-node's and simulated's batches through the compiled graph
(`RayEngine(compiled_graph=True)`); SCALE_OUT_PLAIN=1 turns one-node's fast lanes off
(plain actor calls only); without either, the default (fast lanes on this node).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from enserve.formats.plan import Plan

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("ENSERVE_TRUSTED_CODE", "models.py")  # the tiny members' and digits' code
PARTS = ("overhead", "one-node", "simulated", "node-loss", "idle")
TINY_MODELS = """
import torch
from torch import nn


def _layer(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 5))


def one():
    return _layer(1)


def two():
    return _layer(2)


def _net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 5))


def net_a():
    return _net(1)


def net_b():
    return _net(2)


def net_c():
    return _net(3)
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write_tiny(folder: Path, members: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "models.py").write_text(TINY_MODELS)
    lines = "\n".join(f"  - {{name: {m}, source: 'python:models.py:{m}'}}" for m in members)
    (folder / "ensemble.yaml").write_text(
        "name: tiny\ninputs: [{name: x, datatype: FP32, shape: [-1, 3, 2, 2]}]\n"
        f"members:\n{lines}\ncombiner: mean_prob\n")
    return folder


def cpu_plan(members: list[str], nodes: list[str], batch: int) -> Plan:
    devices = [{"id": f"{n}/cpu" if n else "cpu", "kind": "cpu", "memory_bytes": 2**30,
                "compute_units": 1} for n in nodes]
    instances = [{"member": m, "variant": None, "device": devices[i % len(devices)]["id"],
                  "batch_size": batch, "share": 1, "memory_bytes": 0}
                 for i, m in enumerate(members)]
    return Plan.from_dict({"algorithm": "manual", "objective": "throughput", "devices": devices,
                           "instances": instances,
                           "predicted": {"throughput": 1.0, "latency_s": 1.0}})


# ------------------------------------------------------------------------------ parts
def part_overhead(requests: int) -> dict[str, Any]:
    """Sequential one-row requests, 4 interleaved blocks: the Ray backend (its default: fast
    lanes to the actors on this node), the Ray backend with plain actor calls only, the
    local engine; and one bare Ray actor call. (The compiled graph is left out: its actors
    spin while idle and would slow the others down.)"""
    from enserve.reference import ReferenceExecutor
    from enserve.runtime import Engine
    from enserve.runtime.ray.engine import RayEngine
    from enserve.runtime.ray.sandbox import NodeSpec, local_cluster
    from enserve.runtime.stats import percentiles
    from enserve.spec import load_spec

    spec = load_spec(write_tiny(Path(tempfile.mkdtemp()) / "tiny2", ["one", "two"]))
    plan = cpu_plan(["one", "two"], [""], 8)
    cluster = local_cluster([NodeSpec("node-0", num_cpus=2)])
    try:
        import ray

        @ray.remote(num_cpus=0)
        class Noop:
            def f(self, x: Any) -> Any:
                return x

        noop = Noop.remote()
        ray.get(noop.f.remote(1))
        x = np.random.default_rng(0).standard_normal((1, 3, 2, 2)).astype(np.float32)
        floor = []
        for _ in range(requests):
            t0 = time.perf_counter()
            ray.get(noop.f.remote(x))
            floor.append(time.perf_counter() - t0)
        times: dict[str, list[float]] = {"ray": [], "ray_plain_calls": [], "local": []}
        with RayEngine(spec, plan, max_batch=8) as ray_engine, \
                RayEngine(spec, plan, max_batch=8, fast_lane=False) as plain_engine, \
                Engine(spec, plan, max_batch=8) as local_engine:
            engines = {"ray": ray_engine, "ray_plain_calls": plain_engine,
                       "local": local_engine}
            for e in engines.values():
                for _ in range(20):
                    e.infer_sync(x, timeout=30)
            for _block in range(4):
                for name, e in engines.items():
                    for _ in range(requests // 4):
                        t0 = time.perf_counter()
                        e.infer_sync(x, timeout=30)
                        times[name].append(time.perf_counter() - t0)
            lane = ray_engine.stats()["fast_lane"]
            reference = ReferenceExecutor(spec)  # the answers, too, checked on random rows
            rng = np.random.default_rng(1)
            checks = [rng.standard_normal((k, 3, 2, 2)).astype(np.float32) for k in (1, 3, 8)]
            diff = max(float(np.abs(e.infer_sync(c, timeout=30).probabilities
                                    - reference.infer(c).probabilities).max())
                       for c in checks for e in (ray_engine, plain_engine))
        out = {name: percentiles(v) for name, v in times.items()}
        out["ray_fast_lane"] = lane
        out["max_diff_vs_reference"] = diff
        out["ray_actor_call_floor"] = percentiles(floor)
        out["requests_each"] = len(times["ray"])
        return out
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()


def part_idle(duration: float) -> dict[str, Any]:
    """CPU seconds per second of this process and of each actor over `duration` idle
    seconds, after a few requests: fast lanes (the default), plain actor calls, the
    compiled graph."""
    import psutil

    from enserve.runtime.ray.engine import RayEngine
    from enserve.runtime.ray.sandbox import NodeSpec, local_cluster
    from enserve.spec import load_spec

    spec = load_spec(write_tiny(Path(tempfile.mkdtemp()) / "tiny2", ["one", "two"]))
    plan = cpu_plan(["one", "two"], [""], 8)
    x = np.random.default_rng(0).standard_normal((1, 3, 2, 2)).astype(np.float32)
    cluster = local_cluster([NodeSpec("node-0", num_cpus=2)])
    out: dict[str, Any] = {}
    try:
        for name, lane, graph in (("fast_lane", True, False), ("plain_calls", False, False),
                                  ("compiled_graph", False, True)):
            with RayEngine(spec, plan, max_batch=8, fast_lane=lane,
                           compiled_graph=graph) as engine:
                for _ in range(20):
                    engine.infer_sync(x, timeout=30)
                procs = [psutil.Process()] + [psutil.Process(i["pid"])
                                              for i in engine.stats()["instances"]]
                before = [sum(p.cpu_times()[:2]) for p in procs]
                time.sleep(duration)
                used = [sum(p.cpu_times()[:2]) - b for p, b in zip(procs, before, strict=True)]
                out[name] = {"driver_cpu_per_s": used[0] / duration,
                             "actors_cpu_per_s": [u / duration for u in used[1:]],
                             "compiled_graph": engine.stats()["compiled_graph"],
                             "fast_lane": engine.stats()["fast_lane"]}
        return out
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()


def part_one_node(duration: float, spec_dir: str) -> dict[str, Any]:
    """Closed loop, 16 clients, 1-row requests: `enserve bench --backend ray --baseline
    local-engine` on `spec_dir` (its plan.json when it has one, else one instance per
    member at batch 16), one node of 2 CPUs, 2 interleaved rounds."""
    from enserve.bench.runner import BenchConfig, run_bench
    from enserve.formats.plan import load_plan
    from enserve.runtime.ray.sandbox import NodeSpec, local_cluster
    from enserve.spec import load_spec

    folder = (ROOT / spec_dir) if not Path(spec_dir).is_absolute() else Path(spec_dir)
    spec = load_spec(folder)
    members = [m.name for m in spec.members]
    given = folder / "plan.json"
    plan = load_plan(given) if given.exists() else cpu_plan(members, [""], 16)
    described = (f"{spec_dir}/plan.json" if given.exists()
                 else "one instance per member, batch 16, share 1")
    cluster = local_cluster([NodeSpec("node-0", num_cpus=2)])
    try:
        cfg = BenchConfig(concurrency=16, duration_s=duration, warmup_s=max(2.0, duration / 2), rounds=2,
                          baselines=["local-engine"], backend="ray", fusion="off",
                          max_batch=32,
                          ray_compiled_graph=bool(os.environ.get("SCALE_OUT_GRAPH")),
                          ray_fast_lane=not os.environ.get("SCALE_OUT_PLAIN"))
        report = run_bench(spec, plan, cfg, None, log)
        return {"spec": spec_dir, "plan": described,
                "compiled_graph": cfg.ray_compiled_graph, "fast_lane": cfg.ray_fast_lane,
                "ray": {k: report["enserve"][k] for k in
                                   ("throughput", "p50_s", "p95_s", "rounds")},
                "local": {k: report["baselines"]["local-engine"][k] for k in
                          ("throughput", "p50_s", "p95_s", "rounds")},
                "ratio_ray_over_local": report["ratios"]["local-engine"]}
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()


def sim_spec(folder: Path, profile_path: Path) -> Path:
    profile = json.loads(profile_path.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "profile.json").write_text(json.dumps(profile))
    lines = "\n".join(f"  - {{name: {m['name']}, source: 'simulate:profile.json', "
                      f"num_classes: 10}}" for m in profile["members"])
    (folder / "ensemble.yaml").write_text(
        "name: sim\ninputs: [{name: x, datatype: FP32, shape: [-1, 3, 8, 8]}]\n"
        f"members:\n{lines}\ncombiner: mean_prob\n")
    return folder


def measure_sim(spec: Any, plan: Any, duration: float, pyspy: str | None = None
                ) -> dict[str, Any]:
    """Closed loop on a simulated plan, enough requests in flight to fill every instance.
    `pyspy`: record this process with py-spy during the load (collapsed stacks there)."""
    from enserve.bench.load import run_load
    from enserve.runtime.ray.engine import RayEngine

    per_member: dict[str, int] = {}
    for inst in plan.instances:
        per_member[inst.member] = per_member.get(inst.member, 0) + inst.batch_size
    batch = max(per_member.values())
    rows = max(1, min(64, batch // 4))
    rng = np.random.default_rng(0)
    payloads = [rng.standard_normal((rows, 3, 8, 8)).astype(np.float32) for _ in range(8)]
    t0 = time.monotonic()
    with RayEngine(spec, plan, max_batch=batch, inflight_batches=3, max_queue=4096,
                   start_timeout_s=900,
                   compiled_graph=bool(os.environ.get("SCALE_OUT_GRAPH"))) as engine:
        started = time.monotonic() - t0

        async def call(x: Any) -> Any:
            return await engine.infer(x, outputs=["probabilities"])

        concurrency = 4 * max(1, batch // rows) + 8  # enough in flight to fill 3 batches
        spy_bin = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        spy = None if pyspy is None else subprocess.Popen(
            [spy_bin, "record", "-p", str(os.getpid()), "-d", str(int(duration) + 2), "-r",
             "50", "-t", "--format", "raw", "-o", pyspy],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        result = run_load(call, payloads, "closed", concurrency, 0.0, duration, 3.0)
        if spy is not None:
            spy.wait()
        stats = engine.stats()
    predicted = plan.predicted.throughput
    return {"instances": len(plan.instances), "actors_start_s": started,
            "max_batch": batch, "request_rows": rows, "concurrency": concurrency,
            "measured": result.throughput, "predicted": predicted,
            "measured_over_predicted": result.throughput / predicted,
            "failed": result.failed, "mean_batch_rows": stats["mean_batch_rows"],
            "batches": stats["batches"], "compiled_graph": stats["compiled_graph"],
            "p50_s": float(np.percentile(result.latencies, 50)) if result.latencies else None}


def part_simulated(duration: float, scenarios: list[str] | None = None,
                   pyspy: str | None = None) -> dict[str, Any]:
    from enserve.cluster import cluster_devices, parse_cluster_decl
    from enserve.formats.profile import load_profile
    from enserve.plan import Constraints, plan
    from enserve.runtime.ray.sandbox import NodeSpec, local_cluster
    from enserve.spec import load_spec

    os.environ.setdefault("ENSERVE_SIMULATE_HOLD_MB", "4")
    nodes = [NodeSpec(f"node-{i}", num_cpus=1, num_gpus=4,
                      labels={"enserve-gpu-memory": "16GB"}) for i in range(4)]
    tmp = Path(tempfile.mkdtemp())
    out: dict[str, Any] = {}
    cluster = local_cluster(nodes)
    try:
        no_ts = Constraints(time_sharing=False)
        for name, profile_file, decl in (
                ("12x4", "pochelu_12x4.json", "4x(cuda:16GB)"),
                ("1x16", "pochelu_1x16.json", "4x(4xcuda:16GB)"),
                ("1x16-on-2-nodes", "pochelu_1x16.json", "2x(4xcuda:16GB)"),
                ("1x16-on-1-node", "pochelu_1x16.json", "1x(4xcuda:16GB)")):
            if scenarios and name not in scenarios:
                continue
            path = ROOT / "benchmarks" / "scenarios" / profile_file
            profile = load_profile(path)
            spec = load_spec(sim_spec(tmp / name, path))
            p = plan(profile, "greedy", constraints=no_ts,
                     devices=cluster_devices(parse_cluster_decl(decl)))
            log(f"simulated {name}: {len(p.instances)} instances, predicted "
                f"{p.predicted.throughput:.1f}/s")
            spy = None if pyspy is None else str(Path(pyspy) / f"{name}.txt")
            out[name] = {"devices": decl, **measure_sim(spec, p, duration, spy)}
            log(f"  measured {out[name]['measured']:.1f}/s "
                f"({out[name]['measured_over_predicted']:.2f} of predicted)")
        if not all(n in out for n in ("1x16-on-1-node", "1x16-on-2-nodes", "1x16")):
            return out
        one = out["1x16-on-1-node"]["measured"]
        out["scaling"] = {f"{k}_nodes": {"measured": out[n]["measured"],
                                         "vs_linear": out[n]["measured"] / (k * one)
                                         if one > 0 else None}
                          for k, n in ((1, "1x16-on-1-node"), (2, "1x16-on-2-nodes"),
                                       (4, "1x16"))}
        return out
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()


def part_node_loss(duration: float) -> dict[str, Any]:
    """3 CPU nodes, a tiny ensemble with an instance on each; 4 clients; node-1 removed
    under load, then returned."""
    from enserve.reference import ReferenceExecutor
    from enserve.runtime.ray.engine import RayEngine
    from enserve.runtime.ray.sandbox import NodeSpec, add_node, local_cluster
    from enserve.spec import load_spec

    members = ["net_a", "net_b", "net_c"]
    spec = load_spec(write_tiny(Path(tempfile.mkdtemp()) / "tiny3", members))
    reference = ReferenceExecutor(spec)
    nodes = [NodeSpec(f"node-{i}") for i in range(3)]
    cluster = local_cluster(nodes)
    counts = {"ok": 0, "wrong": 0, "failed": 0, "hung": 0}
    errors: list[str] = []
    stop = threading.Event()

    def client(engine: RayEngine, k: int) -> None:
        rng = np.random.default_rng(k)
        while not stop.is_set():
            x = rng.standard_normal((1, 3, 2, 2)).astype(np.float32)
            try:
                got = engine.submit(x).result(timeout=60)
            except TimeoutError:
                counts["hung"] += 1
                continue
            except Exception as exc:
                counts["failed"] += 1
                errors.append(str(exc)[:200])
                continue
            ok = np.abs(got.probabilities - reference.infer(x).probabilities).max() < 1e-5
            counts["ok" if ok else "wrong"] += 1

    def whole(engine: RayEngine, lost: str | None) -> bool:
        s = engine.stats()
        return all(v == ("lost" if n == lost else "alive") for n, v in s["nodes"].items()) \
            and all(i["state"] == "ready" for i in s["instances"])

    def wait(check: Any, limit: float = 120.0) -> float | None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit:
            if check():
                return time.monotonic() - t0
            time.sleep(0.1)
        return None

    try:
        with RayEngine(spec, cpu_plan(members, ["node-0", "node-1", "node-2"], 8),
                       check_interval_s=0.25) as engine:
            threads = [threading.Thread(target=client, args=(engine, k)) for k in range(4)]
            for t in threads:
                t.start()
            time.sleep(duration / 2)
            victim = next(n for n in cluster.worker_nodes
                          if n.node_id == engine._node_ids["node-1"])
            before = dict(counts)
            cluster.remove_node(victim)
            lost_s = wait(lambda: whole(engine, "node-1"))
            time.sleep(duration / 2)
            during_loss = {k: counts[k] - before[k] for k in counts}
            before = dict(counts)
            add_node(cluster, nodes[1])
            back_s = wait(lambda: whole(engine, None) and any(
                i["node"] == "node-1" for i in engine.stats()["instances"]))
            time.sleep(duration / 2)
            stop.set()
            for t in threads:
                t.join(timeout=120)
            after_return = {k: counts[k] - before[k] for k in counts}
            return {"whole_after_loss_s": lost_s, "whole_after_return_s": back_s,
                    "requests_total": dict(counts), "from_loss": during_loss,
                    "from_return": after_return, "error_samples": errors[:3],
                    "events": [e["event"] for e in engine.events()]}
    finally:
        stop.set()
        import ray

        ray.shutdown()
        cluster.shutdown()


# ------------------------------------------------------------------------------ main
def machine() -> dict[str, Any]:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")),
                 "?")
    import ray

    return {"cpu": model, "cores": len(os.sched_getaffinity(0)), "ray": ray.__version__,
            "load_avg_at_start": os.getloadavg(),
            "note": "shared machine; measurements serialized by /tmp/enserve-cpu.lock"}


def inside(args: argparse.Namespace) -> None:
    out: dict[str, Any] = {"machine": machine(), "command": " ".join(sys.argv), "parts": {}}
    for part in args.parts:
        log(f"part {part}")
        t0 = time.monotonic()
        try:
            if part == "overhead":
                result = part_overhead(args.requests)
            elif part == "one-node":
                result = part_one_node(args.duration, args.spec)
            elif part == "idle":
                result = part_idle(args.duration)
            elif part == "simulated":
                result = part_simulated(args.duration, args.scenarios, args.pyspy)
            else:
                result = part_node_loss(args.duration)
        except Exception as exc:  # one part failing must not lose the others' figures
            import traceback

            traceback.print_exc()
            result = {"error": f"{type(exc).__name__}: {exc}"}
        result["wall_s"] = time.monotonic() - t0
        out["parts"][part] = result
        log(json.dumps(result, default=str)[:2000])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=str) + "\n")
    log(f"written {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="*", default=list(PARTS), choices=PARTS)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/scale_out.json"))
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--spec", default="examples/digits", help="one-node: the ensemble")
    parser.add_argument("--scenarios", nargs="*", default=None,
                        help="simulated: only these (12x4 1x16 1x16-on-2-nodes 1x16-on-1-node)")
    parser.add_argument("--pyspy", default=None,
                        help="simulated: py-spy the driver during each load into this folder")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.parts = args.parts or list(PARTS)
    if args.inside:
        from enserve.runtime.ray.sandbox import exit_on_sigterm

        exit_on_sigterm()
        inside(args)
        return
    from enserve.runtime.ray.sandbox import (
        call_in_namespace,
        exit_on_sigterm,
        loopback_namespace,
        namespaces_unavailable,
    )

    reason = namespaces_unavailable()
    if reason:
        sys.exit(f"scale_out.py runs Ray in a loopback-only network namespace: {reason}")
    exit_on_sigterm()  # `timeout` still removes the cluster and the namespace
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    with loopback_namespace("enserve-bench") as ns:
        code = call_in_namespace(ns, [sys.executable, __file__, "--inside", *args.parts,
                                      "--out", args.out, "--duration", str(args.duration),
                                      "--requests", str(args.requests), "--spec", args.spec,
                                      *(["--scenarios", *args.scenarios] if args.scenarios
                                        else []),
                                      *(["--pyspy", args.pyspy] if args.pyspy else [])], env)
    sys.exit(code)


if __name__ == "__main__":
    main()
