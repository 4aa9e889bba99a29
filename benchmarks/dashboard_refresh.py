"""How long one dashboard refresh takes while the server is under load.

    .venv/bin/python benchmarks/dashboard_refresh.py [--rate 1000] [--seconds 20] [--procs 2]
        [--plan plan.json] [--screenshot docs/images/dashboard.png]

Starts `enserve serve examples --model digits` (engine backend) on free ports, then:
1. idle: polls `GET /dashboard/state` once a second (as the page does) for a few seconds;
2. loaded: the same while `--procs` load processes send raw binary requests (batch 1,
   keep-alive connections) paced to `--rate` requests/s in total (open loop: a connection
   that falls behind its schedule sends at once, so the offered load is the most the
   clients and server reach when they cannot keep up).
For each refresh it records the round trip seen by the client and the server's own time to
build and encode the snapshot and the CPU time its thread spent on it (`Server-Timing:
snapshot;dur=…, cpu;dur=…`: on a busy machine the wall time grows with the load, the CPU
time does not). Prints one JSON line and a
table; the load reached is reported next to the refresh times (a 2-core machine shared
with the server cannot offer 1,000 requests/s: say what was reached). `--plan` serves digits
from a copy of its folder with that plan; `--screenshot` photographs the page (headless
Chromium) halfway through the loaded phase.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def start_server(workdir: Path, repo: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    port_file = workdir / "ports.json"
    args = [sys.executable, "-m", "enserve.cli", "serve", str(repo), "--model", "digits",
            "--http-port", "0", "--grpc-port", "-1", "--metrics-port", "-1", "--port-file",
            str(port_file), "--log-level", "warning", "--max-pending", "4096",
            "--trust-code", "models.py", *extra]
    log = (workdir / "server.log").open("wb")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not port_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"server did not start: {(workdir / 'server.log').read_text()[-2000:]}")
        time.sleep(0.2)
    return process, int(json.loads(port_file.read_text())["http"])


# --- load: raw binary requests on keep-alive connections ---------------------------------
async def _connection(port: int, interval: float, start: float, stop: float, body: bytes,
                      counts: dict[str, int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (f"POST /v2/models/digits/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Inference-Header-Content-Length: 0\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    due = start
    loop = asyncio.get_running_loop()
    while True:
        now = loop.time()
        if now >= stop:
            break
        if due > now:
            await asyncio.sleep(due - now)
        due += interval
        writer.write(head + body)
        headers = await reader.readuntil(b"\r\n\r\n")
        status = int(headers.split(b" ", 2)[1])
        length = 0
        for line in headers.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        counts["ok" if status == 200 else "failed"] += 1
    writer.close()


def _load_process(port: int, rate: float, connections: int, seconds: float, queue: mp.Queue) -> None:
    body = np.random.default_rng(os.getpid()).random((1, 1, 8, 8), dtype=np.float32).tobytes()
    counts = {"ok": 0, "failed": 0}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.2
        interval = connections / rate
        await asyncio.gather(*(
            _connection(port, interval, start + i * interval / connections, start + seconds, body, counts)
            for i in range(connections)
        ))

    asyncio.run(main())
    queue.put(counts)


# --- the dashboard's refreshes --------------------------------------------------------------
def poll(port: int, seconds: float, out: list[tuple[float, float, float]]) -> None:
    """One `GET /dashboard/state` a second: (round trip ms, server snapshot ms, its CPU ms)."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.perf_counter()
            response = client.get("/dashboard/state")
            rtt = (time.perf_counter() - t0) * 1000
            response.raise_for_status()
            header = response.headers["server-timing"]
            if "reused" in header:  # another caller's snapshot of the last half second
                time.sleep(max(0.0, 1.0 - (time.perf_counter() - t0)))
                continue
            timing = dict(part.strip().split(";dur=") for part in header.split(",") if ";dur=" in part)
            out.append((rtt, float(timing["snapshot"]), float(timing["cpu"])))
            time.sleep(max(0.0, 1.0 - (time.perf_counter() - t0)))


def take_screenshot(port: int, path: Path) -> None:
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if browser is None:
        raise SystemExit("--screenshot needs Chromium (scripts/setup_browser.sh)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="enserve-chromium-") as profile:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", "--window-size=1400,1300", "--virtual-time-budget=6000",
                        f"--screenshot={path}", f"http://127.0.0.1:{port}/dashboard"],
                       check=True, capture_output=True, timeout=120)


def summary(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values)
    return {"p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99)),
            "max": float(arr.max()), "n": int(arr.size)}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s offered in total")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the loaded phase")
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--procs", type=int, default=2, help="load processes")
    parser.add_argument("--connections", type=int, default=16, help="connections per load process")
    parser.add_argument("--backend", default="engine", choices=("engine", "reference"))
    parser.add_argument("--plan", type=Path, help="serve digits with this plan.json")
    parser.add_argument("--screenshot", type=Path, help="PNG of the page taken under load")
    parser.add_argument("--server-args", default="", help="more `enserve serve` options")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="enserve-dash-bench-") as tmp:
        repo = ROOT / "examples"
        if args.plan is not None:
            repo = Path(tmp) / "repo"
            shutil.copytree(ROOT / "examples" / "digits", repo / "digits")
            shutil.copy(args.plan, repo / "digits" / "plan.json")
            shutil.copytree(ROOT / "examples" / "imagenet6", repo / "imagenet6")  # listed, not loaded
        server, port = start_server(Path(tmp), repo, "--backend", args.backend, *args.server_args.split())
        try:
            warm = httpx.post(f"http://127.0.0.1:{port}/v2/models/digits/infer", timeout=60,
                              json={"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8],
                                                "data": [0.5] * 64}]})
            warm.raise_for_status()
            idle: list[tuple[float, float, float]] = []
            poll(port, args.idle_seconds, idle)

            queue: mp.Queue = mp.Queue()
            procs = [mp.Process(target=_load_process, args=(port, args.rate / args.procs, args.connections,
                                                            args.seconds, queue)) for _ in range(args.procs)]
            loaded: list[tuple[float, float, float]] = []
            t0 = time.monotonic()
            for p in procs:
                p.start()
            poller = threading.Thread(target=poll, args=(port, args.seconds, loaded))
            time.sleep(1.0)  # let the load ramp up before the first loaded refresh
            poller.start()
            if args.screenshot is not None:
                time.sleep(args.seconds / 2)
                take_screenshot(port, args.screenshot)
            counts = [queue.get(timeout=args.seconds + 120) for _ in procs]
            elapsed = time.monotonic() - t0 - 0.2
            for p in procs:
                p.join(10)
            poller.join(60)
        finally:
            server.terminate()
            server.wait(60)
    ok = sum(c["ok"] for c in counts)
    failed = sum(c["failed"] for c in counts)
    result = {
        "machine": f"{cpu_model()}, {os.cpu_count()} cores (shared machine)",
        "backend": args.backend,
        "offered_rate": args.rate,
        "reached_rate": ok / elapsed,
        "failed": failed,
        **{phase: {"round_trip_ms": summary([p[0] for p in polls]),
                   "server_ms": summary([p[1] for p in polls]),
                   "server_cpu_ms": summary([p[2] for p in polls])}
           for phase, polls in (("idle", idle), ("loaded", loaded))},
    }
    print(json.dumps(result))
    print(f"\n{result['machine']}; digits, {args.backend} backend")
    print(f"load: offered {args.rate:.0f} req/s, reached {result['reached_rate']:.0f} req/s "
          f"({ok} answered, {failed} failed, {elapsed:.1f} s)")
    print(f"{'refresh':<10}{'phase':<8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'n':>5}")
    for phase in ("idle", "loaded"):
        rows = (("round_trip_ms", "client"), ("server_ms", "server"), ("server_cpu_ms", "srv CPU"))
        for what, label in rows:
            s = result[phase][what]
            print(f"{label:<10}{phase:<8}{s['p50']:>9.1f}{s['p99']:>9.1f}{s['max']:>9.1f}{s['n']:>5}")


if __name__ == "__main__":
    main()
