"""Event-loop time while ensembles are swapped: health-check latency with and without swaps.

A real `enserve serve` holds two ensembles (digits and digits32 from `examples/`) under a
memory budget that fits only one, so every request to the other loads it and evicts the
first (its engine's workers stop). A separate process times `GET /v2/health/ready` every
10 ms, first with no swaps (the quiet phase), then while requests alternate between the two
ensembles. A slow health check during the swaps means the event loop was blocked (loading
and closing engines must run off it).

    .venv/bin/python benchmarks/evict_loop.py [--swaps 10] [--budget-mb 250] [--backend engine]

Prints one JSON line: the probe's p50 / p99 / max in both phases, the swaps and evictions
counted by the server, the time of each swap request.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from enserve.bench import local_server

ROOT = Path(__file__).resolve().parents[1]
local_server.START_TIMEOUT_S = 600.0


def _probe(url: str, out: str, stop: Any, period_s: float = 0.01) -> None:
    """Time `GET url` every `period_s` until `stop` is set; write the seconds to `out`."""
    timings: list[tuple[float, float]] = []
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            t = time.perf_counter()
            client.get(url)
            timings.append((time.monotonic(), time.perf_counter() - t))
            time.sleep(period_s)
    Path(out).write_text(json.dumps(timings))


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    return {"n": len(ordered), "p50_ms": 1000 * statistics.median(ordered),
            "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
            "max_ms": 1000 * ordered[-1]}


def _body(name: str) -> bytes:
    shape = (1, 1, 8, 8) if name == "digits" else (1, 1, 32, 32)
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    return json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(shape),
                                   "data": x.reshape(-1).tolist()}]}).encode()


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--swaps", type=int, default=10)
    p.add_argument("--budget-mb", type=float, default=250.0,
                   help="memory budget: must fit one of the two ensembles, not both")
    p.add_argument("--backend", default="engine")
    p.add_argument("--quiet-s", type=float, default=5.0)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="evict_loop_"))
    server = local_server.start_server(
        ROOT / "examples", work, "--backend", args.backend, "--trust-code", "models.py",
        "--memory-budget-mb", str(args.budget_mb), models=["digits"])
    stop = multiprocessing.Event()
    timings_file = str(work / "probe.json")
    probe = multiprocessing.Process(
        target=_probe, args=(f"http://{server.http_url}/v2/health/ready", timings_file, stop))
    swaps: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 600
        while not server.ready():
            if time.monotonic() > deadline:
                raise RuntimeError("server not ready")
            time.sleep(0.1)
        with httpx.Client(timeout=300) as client:
            base = f"http://{server.http_url}/v2/models"
            first = client.post(f"{base}/digits/infer", content=_body("digits"))
            if first.status_code != 200:
                raise RuntimeError(f"first request: {first.status_code} {first.text[:500]}")
            probe.start()
            time.sleep(args.quiet_s)
            swap_start = time.monotonic()
            for i in range(args.swaps):
                name = "digits32" if i % 2 == 0 else "digits"
                t = time.perf_counter()
                status = client.post(f"{base}/{name}/infer", content=_body(name)).status_code
                swaps.append({"model": name, "status": status, "s": time.perf_counter() - t})
            swap_end = time.monotonic()
            metrics = client.get(f"http://127.0.0.1:{server.metrics}/metrics").text
        stop.set()
        probe.join(60)
    finally:
        stop.set()
        server.stop()
    timings = json.loads(Path(timings_file).read_text())
    quiet = [d for at, d in timings if at < swap_start]
    during = [d for at, d in timings if swap_start <= at <= swap_end]
    out = {"machine": os.uname().machine, "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
           "backend": args.backend, "budget_mb": args.budget_mb,
           "quiet": _percentiles(quiet), "during_swaps": _percentiles(during),
           "swaps": swaps,
           "loads": _metric(metrics, "enserve_swap_loads"),
           "evictions": _metric(metrics, "enserve_swap_evictions"),
           "swap_metrics": [line for line in metrics.splitlines()
                            if line.startswith("enserve_swap") and "bytes" in line]}
    print(json.dumps(out))
    return 0 if all(s["status"] == 200 for s in swaps) else 1


if __name__ == "__main__":
    raise SystemExit(main())
