"""Worked example (docs/scale-out.md): a 3-node Ray cluster on this machine, a plan across
it, `enserve serve --backend ray`, a node killed under load, the service whole again.

Runs inside a loopback-only network namespace it creates (needs root and iproute2), so the
cluster is reachable from nothing but itself. Every step is a real command:

    python examples/scale_out/demo.py
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


def inside() -> None:
    from enserve.runtime.ray.sandbox import NodeSpec, add_node, local_cluster

    step("start a 3-node cluster: a head and two workers, one CPU each (no dashboard)")
    nodes = [NodeSpec(f"node-{i}", num_cpus=1) for i in range(3)]
    cluster = local_cluster(nodes)
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
        server = subprocess.Popen(
            [*ENSERVE, "serve", str(repo), "--backend", "ray", "--ray-address",
             cluster.address, "--http-port", "0", "--grpc-port", "-1", "--metrics-port", "-1",
             "--port-file", str(ports), "--log-level", "warning"], env=env)
        deadline = time.monotonic() + 300
        while not ports.exists():
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.5)
        url = f"http://127.0.0.1:{json.loads(ports.read_text())['http']}"
        print(f"serving on {url}", flush=True)

        import httpx
        import numpy as np

        rng = np.random.default_rng(0)
        body = {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                            "data": rng.random(64).astype(float).tolist()}]}
        counts = {"ok": 0, "error": 0}
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(timeout=60) as http:
                while not stop.is_set():
                    r = http.post(f"{url}/v2/models/digits/infer", json=body)
                    counts["ok" if r.status_code == 200 else "error"] += 1

        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(3)
        step(f"under load ({counts}): remove node-1")
        victim = cluster.worker_nodes and sorted(cluster.worker_nodes,
                                                 key=lambda n: n.unique_id)[0]
        t0 = time.monotonic()
        cluster.remove_node(victim)
        time.sleep(10)
        print(f"10 s after the loss: {counts} (re-planned onto the other nodes)", flush=True)
        step("node-1 returns")
        add_node(cluster, nodes[1])
        time.sleep(15)
        stop.set()
        for t in threads:
            t.join()
        print(f"done after {time.monotonic() - t0:.0f} s: {counts}", flush=True)
        stats = httpx.get(f"{url}/v2/models/digits/stats", timeout=30)
        print(f"GET /v2/models/digits/stats -> {stats.status_code}", flush=True)
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
        import ray

        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    if "--inside" in sys.argv:
        from enserve.runtime.ray.sandbox import exit_on_sigterm

        exit_on_sigterm()
        inside()
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
        sys.exit(call_in_namespace(ns, [sys.executable, __file__, "--inside"], env))


if __name__ == "__main__":
    main()
