"""Worked example (docs/scale-out.md): a 3-node Ray cluster on this machine, a plan across
it, `enserve serve --backend ray`, a node killed under load, the service whole again.

Runs inside a loopback-only network namespace it creates (needs root and iproute2), so the
cluster is reachable from nothing but itself. Every step is a real command:

    python examples/scale_out/demo.py [--out summary.json]
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ENSERVE = [sys.executable, "-m", "enserve.cli"]


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def show(cmd: list[str], env: dict[str, str]) -> str:
    print("$ " + " ".join(c if " " not in c else repr(c) for c in cmd), flush=True)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    print(out.rstrip(), flush=True)
    return out


def instances(url: str) -> list[tuple[str, bool]]:
    """(device, up) of every planned instance, from the server's `/metrics`."""
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=10).text
    info: dict[str, str] = {}
    up: dict[str, bool] = {}
    for line in text.splitlines():
        if line.startswith(("enserve_instance_info{", "enserve_instance_up{")):
            labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1:
                                                          line.index("}")].split(","))
            worker = labels["worker"].strip('"')
            if line.startswith("enserve_instance_info"):
                info[worker] = labels.get("device", "").strip('"')
            else:
                up[worker] = float(line.rsplit(" ", 1)[1]) == 1.0
    return [(info.get(w, "?"), ok) for w, ok in sorted(up.items())]


def wait_whole(url: str, check: Any, limit_s: float) -> float | None:
    """Seconds until every instance is up and `check(devices)` holds (None: not in time)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        found = instances(url)
        if found and all(ok for _, ok in found) and check([d for d, _ in found]):
            return time.monotonic() - t0
        time.sleep(0.2)
    return None


def inside(out_file: str | None) -> None:
    from enserve.runtime.ray.sandbox import NodeSpec, add_node, local_cluster

    summary: dict[str, Any] = {}
    step("start a 3-node cluster: a head and two workers, one CPU each (no dashboard)")
    t0 = time.monotonic()
    nodes = [NodeSpec(f"node-{i}", num_cpus=1) for i in range(3)]
    cluster = local_cluster(nodes)
    summary["cluster_start_s"] = round(time.monotonic() - t0, 1)
    env = {**os.environ, "RAY_ADDRESS": cluster.address}
    work = Path(tempfile.mkdtemp())
    server = None
    try:
        repo = work / "repo"
        shutil.copytree(ROOT / "examples" / "digits", repo / "digits")
        step("plan the digits ensemble across the cluster's devices (read from Ray)")
        show([*ENSERVE, "plan", "--profile", str(HERE / "digits-profile.json"),
              "--devices", "ray", "--out", str(repo / "digits" / "plan.json")], env)
        step("serve it: every planned instance is a Ray actor on its node")
        ports = work / "ports.json"
        cmd = [*ENSERVE, "serve", str(repo), "--backend", "ray", "--ray-address",
               cluster.address, "--http-port", "0", "--grpc-port", "-1", "--metrics-port", "0",
               "--port-file", str(ports), "--log-level", "warning",
               "--trust-code", "models.py"]  # the digits members' architectures
        print("$ " + " ".join(cmd), flush=True)
        t0 = time.monotonic()
        server = subprocess.Popen(cmd, env=env)
        deadline = time.monotonic() + 300
        while not ports.exists():
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.5)
        summary["serve_ready_s"] = round(time.monotonic() - t0, 1)
        found = json.loads(ports.read_text())
        url = f"http://127.0.0.1:{found['http']}"
        metrics = f"http://127.0.0.1:{found['metrics']}"
        placed = instances(metrics)
        print(f"serving on {url}; instances (device, up): {placed}", flush=True)
        summary["instances"] = [d for d, _ in placed]

        import httpx
        import numpy as np

        rng = np.random.default_rng(0)
        body = {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                            "data": rng.random(64).astype(float).tolist()}]}
        counts = {"ok": 0, "error": 0}
        slowest = [0.0]
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(timeout=60) as http:
                while not stop.is_set():
                    t = time.monotonic()
                    try:
                        r = http.post(f"{url}/v2/models/digits/infer", json=body)
                        counts["ok" if r.status_code == 200 else "error"] += 1
                    except httpx.HTTPError:
                        counts["error"] += 1
                    slowest[0] = max(slowest[0], time.monotonic() - t)

        def phase(name: str, since: dict[str, int], t_start: float) -> None:
            got: dict[str, float] = {k: counts[k] - since[k] for k in counts}
            got["s"] = round(time.monotonic() - t_start, 1)
            summary[name] = got
            print(f"{name}: {got}", flush=True)

        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        t_load, before = time.monotonic(), dict(counts)
        time.sleep(5)
        phase("steady", before, t_load)
        import ray

        names = {n["NodeID"]: (n.get("Labels") or {}).get("enserve-node") for n in ray.nodes()}
        victim = next(n for n in cluster.worker_nodes if names.get(n.node_id) == "node-1")
        step("under load: remove node-1 (its raylet and workers are killed)")
        t_lost, before = time.monotonic(), dict(counts)
        cluster.remove_node(victim)
        whole = wait_whole(metrics, lambda ds: not any(d.startswith("node-1/") for d in ds), 120)
        summary["whole_after_loss_s"] = None if whole is None else round(whole, 1)
        print(f"re-planned onto node-0 and node-2, every instance up: {whole and round(whole, 1)}"
              f" s after the loss; instances {instances(metrics)}", flush=True)
        time.sleep(5)
        phase("node_lost", before, t_lost)
        step("node-1 returns")
        t_back, before = time.monotonic(), dict(counts)
        add_node(cluster, nodes[1])
        whole = wait_whole(metrics, lambda ds: any(d.startswith("node-1/") for d in ds), 120)
        summary["whole_after_return_s"] = None if whole is None else round(whole, 1)
        print(f"the full plan again: {whole and round(whole, 1)} s after the return; "
              f"instances {instances(metrics)}", flush=True)
        time.sleep(5)
        phase("node_returned", before, t_back)
        stop.set()
        for t in threads:
            t.join()
        summary["requests"] = dict(counts)
        summary["slowest_request_s"] = round(slowest[0], 2)
        print("SUMMARY " + json.dumps(summary), flush=True)
        if out_file:
            Path(out_file).write_text(json.dumps(summary, indent=1) + "\n")
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
        import ray

        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    out_file = sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv else None
    if "--inside" in sys.argv:
        from enserve.runtime.ray.sandbox import exit_on_sigterm

        exit_on_sigterm()
        inside(out_file)
        return
    from enserve.runtime.ray.sandbox import (
        call_in_namespace,
        exit_on_sigterm,
        loopback_namespace,
        namespaces_unavailable,
    )

    reason = namespaces_unavailable()
    if reason:
        sys.exit(f"the demo runs Ray in a loopback-only network namespace: {reason}")
    exit_on_sigterm()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    with loopback_namespace("enserve-demo") as ns:
        extra = ["--out", str(Path(out_file).resolve())] if out_file else []
        sys.exit(call_in_namespace(ns, [sys.executable, __file__, "--inside", *extra], env))


if __name__ == "__main__":
    main()
