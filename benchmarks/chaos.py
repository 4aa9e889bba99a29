"""Chaos: the reliability targets of the server, measured against a real `enserve serve`.

    python benchmarks/chaos.py kills   # under load: kill -9 one member's worker >= 10 times, the fork server
    python benchmarks/chaos.py pgroup  # SIGTERM to the server's whole process group under load (3 runs)
    python benchmarks/chaos.py fuzz    # >= 10,000 schema-generated + mutated HTTP and mutated gRPC requests
    python benchmarks/chaos.py slow    # 300 slowloris connections + 8 x 60 MB JSON bodies: health p99, RSS
    python benchmarks/chaos.py soak --seconds 600   # steady load, RSS sampled every 5 s
    python benchmarks/chaos.py all     # everything but the soak

Each prints one JSON line of figures (and appends it to `--out` when given). The server is
the embedded digits ensemble (`examples/`) on the multi-process engine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from enserve.bench import local_server
from enserve.bench.local_server import RunningServer
from enserve.runtime.worker import PROCESS_NAME

ROOT = Path(__file__).resolve().parents[1]
REPO = ROOT / "examples"
SERVE = ("--backend", "engine", "--trust-code", "models.py")
local_server.START_TIMEOUT_S = 600.0  # the engine starts slowly on a busy machine
HUNG_S = 30.0  # a request without an answer this long counts as hung


def _body(rows: int = 1, seed: int = 0) -> bytes:
    x = np.random.default_rng(seed).random((rows, 1, 8, 8), dtype=np.float32)
    return json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                   "data": x.reshape(-1).tolist()}]}).encode()


def start(workdir: Path, *extra: str) -> RunningServer:
    return local_server.start_server(REPO, workdir, *SERVE, *extra, models=["digits"])


def wait_ready(server: RunningServer, timeout: float = 300.0) -> float:
    started = time.monotonic()
    while not server.ready():
        if time.monotonic() - started > timeout:
            raise RuntimeError("server not ready")
        time.sleep(0.05)
    return time.monotonic() - started


class Load:
    """`threads` clients sending inference requests in a loop (at most `rate` per second in
    all, when given); every outcome recorded."""

    def __init__(self, server: RunningServer, threads: int = 4, rate: float | None = None) -> None:
        self.url = f"http://{server.http_url}/v2/models/digits/infer"
        self.period = None if rate is None else threads / rate  # seconds between one client's sends
        self.outcomes: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(HUNG_S + 5)

    def _run(self, seed: int) -> None:
        body = _body(2, seed)
        with httpx.Client(timeout=HUNG_S) as client:
            next_at = time.monotonic()
            while not self._stop.is_set():
                if self.period is not None:
                    next_at += self.period
                    self._stop.wait(max(0.0, next_at - time.monotonic()))
                at = time.monotonic()
                try:
                    outcome = str(client.post(self.url, content=body).status_code)
                except httpx.TimeoutException:
                    outcome = "hung"
                except httpx.ConnectError:
                    outcome = "refused"  # never reached the server: not in flight
                    time.sleep(0.05)
                except httpx.HTTPError as exc:
                    outcome = f"lost:{type(exc).__name__}"
                self.outcomes.append((at, outcome))

    def summary(self) -> dict[str, Any]:
        counts = Counter(o for _, o in self.outcomes)
        return {"requests": len(self.outcomes), "by_outcome": dict(counts),
                "hung": counts.get("hung", 0),
                "lost": sum(n for o, n in counts.items() if o.startswith("lost")),
                "unclear_failures": sum(n for o, n in counts.items()
                                        if o.isdigit() and o not in ("200", "500", "503", "504"))}


_SEEN: dict[int, set[int]] = {}  # server pid -> worker pids seen (orphans of a killed fork server)


def workers(server: RunningServer) -> list[psutil.Process]:
    """The server's live workers: its descendants, and those a killed fork server orphaned."""
    seen = _SEEN.setdefault(server.process.pid, set())
    candidates = {p.pid: p for p in psutil.Process(server.process.pid).children(recursive=True)}
    for pid in seen - set(candidates):
        with contextlib.suppress(psutil.Error):
            candidates[pid] = psutil.Process(pid)
    out = []
    for p in candidates.values():
        try:
            if p.name() == PROCESS_NAME and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
                seen.add(p.pid)
        except psutil.Error:
            continue
    return out


def fork_servers(server: RunningServer) -> list[psutil.Process]:
    return [p for p in psutil.Process(server.process.pid).children()
            if "forkserver" in " ".join(p.cmdline())]


def recovery(server: RunningServer, fault: Callable[[], None]) -> float:
    """Seconds from `fault()` until the server is ready and answers a request again."""
    body = _body(1, 99)
    fault()
    started = time.monotonic()
    time.sleep(0.05)
    with httpx.Client(timeout=HUNG_S) as client:
        while True:
            if time.monotonic() - started > 120:
                return float("inf")
            try:
                ok = (client.get(f"http://{server.http_url}/v2/health/ready").status_code == 200
                      and client.post(f"http://{server.http_url}/v2/models/digits/infer",
                                      content=body).status_code == 200)
            except httpx.HTTPError:
                ok = False
            if ok:
                return time.monotonic() - started
            time.sleep(0.02)


def restarts(server: RunningServer) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{server.metrics}/metrics").text
    out = {}
    for line in text.splitlines():
        if line.startswith("enserve_worker_restarts{"):
            labels, value = line.rsplit(" ", 1)
            out[labels.split('member="')[1].split('"')[0]] = float(value)
    return out


def kills(workdir: Path, count: int = 12) -> dict[str, Any]:
    server = start(workdir)
    try:
        wait_ready(server)
        times: list[float] = []
        with Load(server) as load:
            time.sleep(2)
            for _ in range(count):
                youngest = max(workers(server), key=lambda p: p.create_time())  # the one restarted last
                times.append(recovery(server, youngest.kill))
                time.sleep(0.5)
            workers(server)  # remember them: they outlive the fork server
            fork_server = recovery(server, lambda: [p.kill() for p in fork_servers(server)])
            orphans_alive = len(workers(server))
            time.sleep(0.5)
            after_fork = recovery(server, lambda: max(workers(server), key=lambda p: p.create_time()).kill())
            time.sleep(1)
        return {"scenario": "kills", "kills_of_one_member": count,
                "recovery_s": {"max": max(times), "median": statistics.median(times)},
                "fork_server_kill_recovery_s": fork_server,
                "workers_alive_after_fork_server_kill": orphans_alive,
                "kill_after_fork_server_recovery_s": after_fork,
                "restarts_by_member": restarts(server), **load.summary(),
                "server_ready_after": server.ready()}
    finally:
        server.stop(60)


def pgroup(workdir: Path, runs: int = 3) -> dict[str, Any]:
    results = []
    for run in range(runs):
        port_file = workdir / f"pg{run}.json"
        port_file.unlink(missing_ok=True)
        log = workdir / f"pg{run}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "enserve.cli", "serve", str(REPO), *SERVE, "--model", "digits",
                 "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--port-file", str(port_file),
                 "--log-level", "warning"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        while not port_file.exists():
            if process.poll() is not None:
                raise RuntimeError(log.read_text())
            time.sleep(0.1)
        ports = json.loads(port_file.read_text())
        server = RunningServer(process, ports["http"], ports["grpc"], ports["metrics"], log)
        wait_ready(server)
        with Load(server) as load:
            time.sleep(2)
            own_workers = workers(server)
            sent = time.monotonic()
            os.killpg(process.pid, signal.SIGTERM)
            try:
                code = process.wait(120)
            except subprocess.TimeoutExpired:
                process.kill()
                code = None
            stopped_s = time.monotonic() - sent
        results.append({"stop_s": stopped_s, "exit_code": code,
                        "workers_alive_5s_after_exit": _still_alive(own_workers, 5.0),
                        **load.summary()})
    return {"scenario": "pgroup", "runs": results,
            "hung": sum(r["hung"] for r in results), "lost": sum(r["lost"] for r in results),
            "max_stop_s": max(r["stop_s"] for r in results)}


def _still_alive(processes: list[psutil.Process], grace_s: float) -> list[int]:
    """PIDs of `processes` still running (not zombies) after waiting up to `grace_s`."""
    until = time.monotonic() + grace_s
    while True:
        alive = []
        for p in processes:
            with contextlib.suppress(psutil.Error):
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p.pid)
        if not alive or time.monotonic() >= until:
            return alive
        time.sleep(0.1)


def _mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        at = rng.randrange(len(buf) + 1)
        op = rng.randrange(4)
        if op == 0 and buf:
            buf[min(at, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            del buf[min(at, len(buf) - 1)]
        elif op == 2:
            buf[at:at] = buf[at:at + rng.randint(1, 16)]
        else:
            buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return bytes(buf)


def _infer_seeds() -> list[tuple[dict[str, str], bytes]]:
    """Valid `/infer` requests of every kind to mutate: JSON (flat, nested, with outputs and
    parameters), the binary extension, a raw binary body."""
    x = np.random.default_rng(1).random((2, 1, 8, 8), dtype=np.float32)
    flat = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 1, 8, 8],
                        "data": x.reshape(-1).tolist()}]}
    nested = {"id": "n", "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 1, 8, 8],
                                     "data": x.tolist()}],
              "outputs": [{"name": "top_k_indices"}, {"name": "probabilities",
                                                       "parameters": {"binary_data": True}}],
              "parameters": {"timeout": 5_000_000}}
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 1, 8, 8],
                                     "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    json_type = {"Content-Type": "application/json"}
    return [(json_type, json.dumps(flat).encode()), (json_type, json.dumps(nested).encode()),
            ({"Inference-Header-Content-Length": str(len(header))}, header + x.tobytes()),
            ({"Inference-Header-Content-Length": "0"}, x.tobytes())]


def _swap_value(value: Any, rng: random.Random) -> Any:
    """`value` (JSON) with one random node replaced by a hostile one."""
    hostile = [None, True, -1, 0, 2**63, 1e308, "", "x" * 300, [], {}, [[[]]], {"a": None},
               "NaN", [-1, 0], [4611686018427387904, 0], 1.5, "FP32", "BYTES", "../../etc"]
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = rng.choice(list(value))
        return {**value, key: _swap_value(value[key], rng)}
    if isinstance(value, list) and value and rng.random() < 0.8:
        i = rng.randrange(len(value))
        return [*value[:i], _swap_value(value[i], rng), *value[i + 1:]]
    return rng.choice(hostile)


def _http_mutations(server: RunningServer, count: int, rng: random.Random,
                    statuses: Counter[int], failures: list[str]) -> None:
    """`count` requests over keep-alive connections: byte-mutated bodies and JSON with one
    node swapped for a hostile value, on the infer, metadata and repository paths."""
    seeds = _infer_seeds()
    paths = ["/v2/models/digits/infer", "/v2/models/digits/versions/1/infer", "/v2/models/cnn5/infer",
             "/v2/repository/index", "/v2/models/nope/infer"]
    with httpx.Client(base_url=f"http://{server.http_url}", timeout=HUNG_S) as client:
        for i in range(count):
            headers, body = rng.choice(seeds)
            headers = dict(headers)
            if rng.random() < 0.5 and "Inference-Header-Content-Length" not in headers:
                body = json.dumps(_swap_value(json.loads(body), rng)).encode()
            else:
                body = _mutate(body, rng)
                if "Inference-Header-Content-Length" in headers and rng.random() < 0.3:
                    headers["Inference-Header-Content-Length"] = str(rng.randrange(-5, len(body) + 5))
            if rng.random() < 0.1:
                headers["Content-Encoding"] = rng.choice(["gzip", "deflate", "br", "x"])
            path = paths[0] if rng.random() < 0.7 else rng.choice(paths)
            try:
                reply = client.post(path, content=body, headers=headers)
            except httpx.HTTPError as exc:
                failures.append(f"http mutation {i}: {exc!r}")
                continue
            statuses[reply.status_code] += 1
            if reply.status_code == 500:
                failures.append(f"POST {path} {body[:120]!r}: {reply.text[:200]}")


def _grpc_seeds() -> list[tuple[str, bytes]]:
    from tritonclient.grpc import service_pb2 as pb

    request = pb.ModelInferRequest(model_name="digits", id="fuzz")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 1, 8, 8])
    tensor.contents.fp32_contents.extend([0.5] * 64)
    request.outputs.add(name="probabilities")
    request.parameters["timeout"].int64_param = 5_000_000
    raw = pb.ModelInferRequest(model_name="digits")
    raw.inputs.add(name="input", datatype="FP32", shape=[1, 1, 8, 8])
    raw.raw_input_contents.append(np.zeros(64, np.float32).tobytes())
    service = "/inference.GRPCInferenceService/"
    messages = [("ModelInfer", request), ("ModelInfer", raw),
                ("ModelMetadata", pb.ModelMetadataRequest(name="digits", version="1")),
                ("ModelReady", pb.ModelReadyRequest(name="digits")),
                ("ModelStatistics", pb.ModelStatisticsRequest(name="digits")),
                ("RepositoryIndex", pb.RepositoryIndexRequest())]
    return [(service + method, message.SerializeToString()) for method, message in messages]


def _grpc_mutations(server: RunningServer, count: int, rng: random.Random,
                    codes: Counter[str], failures: list[str]) -> None:
    import grpc

    seeds = _grpc_seeds()
    with grpc.insecure_channel(server.grpc_url) as channel:
        calls = {method: channel.unary_unary(method) for method, _ in seeds}
        for _ in range(count):
            method, seed = seeds[0] if rng.random() < 0.6 else rng.choice(seeds)
            message = _mutate(seed, rng)
            try:
                calls[method](message, timeout=HUNG_S)
                codes["OK"] += 1
            except grpc.RpcError as exc:
                codes[exc.code().name] += 1
                if exc.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                    failures.append(f"{method} {message[:80]!r}: {exc.details()}")


def fuzz(workdir: Path, http_examples: int = 60, http_mutations: int = 5000,
         grpc_requests: int = 5000) -> dict[str, Any]:
    """Schema-generated calls to every operation of `/openapi.json` (`http_examples` each),
    mutated HTTP infer/repository requests and mutated gRPC messages, counted."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    server = start(workdir)
    try:
        wait_ready(server)
        statuses: Counter[int] = Counter()
        codes: Counter[str] = Counter()
        failures: list[str] = []
        seconds: dict[str, float] = {}
        started = time.monotonic()
        schema = schemathesis.openapi.from_url(f"http://{server.http_url}/openapi.json")
        operations = 0
        for result in schema.get_all_operations():
            operation = result.ok()
            operations += 1

            @given(case=operation.as_strategy())
            @settings(max_examples=http_examples, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def run(case: Any) -> None:
                try:
                    response = case.call(timeout=HUNG_S)
                except Exception as exc:  # a crash or hang shows here
                    failures.append(f"{case.method} {case.formatted_path}: {exc!r}")
                    return
                statuses[response.status_code] += 1
                if response.status_code == 500:
                    failures.append(f"{case.method} {case.formatted_path} {case.body!r:.200}: "
                                    f"{response.text[:200]}")

            run()
        schema_requests = sum(statuses.values())
        seconds["schemathesis"] = time.monotonic() - started
        rng = random.Random(10)
        at = time.monotonic()
        _http_mutations(server, http_mutations, rng, statuses, failures)
        seconds["http_mutations"] = time.monotonic() - at
        at = time.monotonic()
        _grpc_mutations(server, grpc_requests, rng, codes, failures)
        seconds["grpc_mutations"] = time.monotonic() - at
        http_requests = sum(statuses.values())
        return {"scenario": "fuzz", "total_requests": http_requests + sum(codes.values()),
                "http_operations": operations, "http_schema_requests": schema_requests,
                "http_mutated_requests": http_requests - schema_requests, "http_status": dict(statuses),
                "http_500": statuses.get(500, 0), "grpc_requests": sum(codes.values()),
                "grpc_codes": dict(codes),
                "grpc_internal_or_unknown": codes.get("INTERNAL", 0) + codes.get("UNKNOWN", 0),
                "seconds": seconds, "failures": failures[:10], "failure_count": len(failures),
                "server_alive": server.process.poll() is None, "server_ready_after": server.ready()}
    finally:
        server.stop(60)


def _rss(pid: int) -> int:
    """Resident memory of the server process and any decoder processes (not the workers)."""
    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children():
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                total += child.memory_info().rss
        except psutil.Error:
            continue
    return total


def _probe_health(url: str, out: Path, stop: Any) -> None:
    """Time `GET url` every 20 ms until `stop` is set; write the seconds to `out` (JSON)."""
    timings: list[float] = []
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            t = time.perf_counter()
            client.get(url)
            timings.append(time.perf_counter() - t)
            time.sleep(0.02)
    out.write_text(json.dumps(timings))


def slow(workdir: Path, connections: int = 300, bodies: int = 8, body_mb: int = 60,
         budget_mb: int = 256) -> dict[str, Any]:
    server = start(workdir, "--body-budget-mb", str(budget_mb), "--max-body-mb", "64",
                   "--max-connections", "2048")
    try:
        wait_ready(server)
        pid = server.process.pid
        baseline = _rss(pid)
        socks = []
        for _ in range(connections):
            s = socket.create_connection(("127.0.0.1", server.http))
            s.sendall(b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        time.sleep(1.0)  # the server has taken every connection and its first bytes
        with_connections = _rss(pid)  # what the slow connections alone hold, before any body
        rows = body_mb * 1024 * 1024 // (4 * 64)  # "0.5," is 4 bytes; 64 values a digit
        data = ",".join(["0.5"] * (rows * 64))
        # real tensor data: decoded in full (a 60 MB float32 array), then refused with 400
        # because the batch exceeds --max-batch: the heaviest path a body can take
        big = (f'{{"inputs":[{{"name":"input","datatype":"FP32","shape":[{rows},1,8,8],'
               f'"data":[{data}]}}]}}').encode()
        del data
        rss: list[int] = []
        done = threading.Event()
        ctx = multiprocessing.get_context("spawn")
        probe_done = ctx.Event()
        timings = workdir / "health.json"
        # the health client is a process of its own: in a thread here it would wait for
        # this process's GIL behind the eight senders, and that wait is not the server's
        prober = ctx.Process(target=_probe_health, args=(f"http://{server.http_url}/v2/health/live",
                                                         timings, probe_done))

        def sample_rss() -> None:
            while not done.is_set():
                rss.append(_rss(pid))
                time.sleep(0.02)

        statuses: list[int] = []
        retried: list[int] = []

        def send() -> None:
            """Send, and after a 503 wait its Retry-After and send again (within 180 s)."""
            until = time.monotonic() + 180
            while True:
                try:
                    reply = httpx.post(f"http://{server.http_url}/v2/models/digits/infer",
                                       content=big, timeout=120)
                except httpx.HTTPError as exc:
                    statuses.append(-1)
                    print("big body:", exc, file=sys.stderr)
                    return
                if reply.status_code != 503 or time.monotonic() > until:
                    statuses.append(reply.status_code)
                    return
                retried.append(1)
                time.sleep(float(reply.headers.get("retry-after", "1")))

        prober.start()
        sampler = threading.Thread(target=sample_rss)
        sampler.start()
        started = time.monotonic()
        senders = [threading.Thread(target=send) for _ in range(bodies)]
        for t in senders:
            t.start()
        for s in socks:  # keep trickling, as slowloris does
            with contextlib.suppress(OSError):
                s.sendall(b"X")
        for t in senders:
            t.join()
        elapsed = time.monotonic() - started
        done.set()
        probe_done.set()
        prober.join(60)
        sampler.join()
        health = json.loads(timings.read_text())
        open_after = 0
        for s in socks:
            s.settimeout(0.01)
            try:
                s.recv(1)  # data (a 408) or b"" (closed): the server let it go
            except TimeoutError:
                open_after += 1
            except OSError:
                pass
            s.close()
        ordered = sorted(health)
        return {"scenario": "slow", "slow_connections": connections, "bodies": bodies,
                "body_mb": len(big) / 2**20,
                "body_status": dict(Counter(statuses)), "body_503_retries": len(retried),
                "seconds": elapsed,
                "health_p50_ms": 1000 * ordered[len(ordered) // 2],
                "health_p99_ms": 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
                "health_samples": len(ordered), "rss_baseline_mb": baseline / 2**20,
                "rss_peak_over_baseline_mb": (max(rss) - baseline) / 2**20, "body_budget_mb": budget_mb,
                "rss_slow_connections_mb": (with_connections - baseline) / 2**20,
                "rss_peak_over_connections_mb": (max(rss) - with_connections) / 2**20,
                "slow_connections_still_open": open_after}
    finally:
        server.stop(60)


def soak(workdir: Path, seconds: float = 600.0, rate: float = 100.0) -> dict[str, Any]:
    server = start(workdir)
    try:
        wait_ready(server)
        pid = server.process.pid
        samples: list[tuple[float, int]] = []
        with Load(server, threads=4, rate=rate) as load:
            started = time.monotonic()
            while time.monotonic() - started < seconds:
                total = psutil.Process(pid).memory_info().rss
                for p in workers(server):
                    with contextlib.suppress(psutil.Error):
                        total += p.memory_info().rss
                samples.append((time.monotonic() - started, total))
                time.sleep(5)
        first = [r for t, r in samples if 60 <= t < 120] or [samples[0][1]]
        last = [r for t, r in samples if t >= seconds - 60] or [samples[-1][1]]
        summary = load.summary()
        errors = summary["requests"] - summary["by_outcome"].get("200", 0)
        return {"scenario": "soak", "seconds": seconds, "rate_limit_per_s": rate, **summary, "errors": errors,
                "rss_mb_minute_2": statistics.mean(first) / 2**20,
                "rss_mb_last_minute": statistics.mean(last) / 2**20,
                "rss_growth_pct": 100 * (statistics.mean(last) / statistics.mean(first) - 1),
                "rss_samples": len(samples)}
    finally:
        server.stop(60)


SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {
    "kills": kills, "pgroup": pgroup, "fuzz": fuzz, "slow": slow, "soak": soak,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=[*SCENARIOS, "all"])
    parser.add_argument("--seconds", type=float, default=600.0, help="soak length")
    parser.add_argument("--rate", type=float, default=100.0, help="soak: requests per second in all")
    parser.add_argument("--http-examples", type=int, default=60, help="fuzz: examples per HTTP operation")
    parser.add_argument("--http-mutations", type=int, default=5000, help="fuzz: mutated HTTP requests")
    parser.add_argument("--grpc-requests", type=int, default=5000, help="fuzz: mutated gRPC requests")
    parser.add_argument("--out", type=Path, default=None, help="append each JSON result here")
    args = parser.parse_args()
    names = [n for n in SCENARIOS if n != "soak"] if args.scenario == "all" else [args.scenario]
    for name in names:
        with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
            kwargs: dict[str, Any] = {}
            if name == "soak":
                kwargs = {"seconds": args.seconds, "rate": args.rate}
            if name == "fuzz":
                kwargs = {"http_examples": args.http_examples, "http_mutations": args.http_mutations,
                          "grpc_requests": args.grpc_requests}
            result = SCENARIOS[name](Path(tmp), **kwargs)
        line = json.dumps(result)
        print(line, flush=True)
        if args.out is not None:
            with args.out.open("a") as out:
                out.write(line + "\n")


if __name__ == "__main__":
    main()
