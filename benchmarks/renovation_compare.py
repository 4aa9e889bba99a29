"""Before/after the renovation (issue 9), side by side in one invocation: throughput and
latency of the engine (in process) and of the server (HTTP, engine backend), old code vs
new code, on the digits ensemble and a tiny two-member ensemble.

    .venv/bin/python benchmarks/renovation_compare.py [--before eeabd70] [--duration 6]
        [--concurrency 8] [--rounds 2] [--out benchmarks/results/renovation-compare.json]

The old code is the `--before` commit exported with `git archive` into a temporary folder
(no checkout is touched; each version reads its own `examples/digits`, the spec format
grew since); each measurement runs in a fresh Python process with that tree's
`src/` first on `PYTHONPATH`, so both versions are measured by the same driver code. Old
and new alternate within each round (order flipped every round) so drift in the machine's
load hits both alike. Bounded: about (4 targets x 2 versions x rounds) x (duration + start).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

TINY_MODELS = textwrap.dedent('''
    import torch
    from torch import nn


    def _seeded(seed, build):
        torch.manual_seed(seed)
        return build()


    def lin():
        return _seeded(1, lambda: nn.Linear(6, 5))


    def mlp():
        return _seeded(2, lambda: nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 5)))
''')
TINY_SPEC = textwrap.dedent('''
    name: tiny
    inputs: [{name: x, datatype: FP32, shape: [-1, 6]}]
    members:
      - {name: lin, source: "python:models.py:lin"}
      - {name: mlp, source: "python:models.py:mlp"}
''')

# Runs in a child process against one version's `src/`; prints one JSON line.
DRIVER = textwrap.dedent('''
    import asyncio, json, os, shutil, signal, subprocess, sys, tempfile, threading, time
    from pathlib import Path

    import numpy as np

    target, spec_dir, duration, concurrency = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])

    def summary(latencies, elapsed):
        lat = np.array(latencies)
        return {"throughput": len(lat) / elapsed, "p50_ms": float(np.percentile(lat, 50) * 1e3),
                "p99_ms": float(np.percentile(lat, 99) * 1e3), "requests": int(len(lat))}

    def inputs(spec):
        t = spec.inputs[0]
        rng = np.random.default_rng(0)
        return [{t.name: rng.standard_normal((1, *t.shape[1:])).astype(np.float32)} for _ in range(64)]

    def engine_run():
        from enserve.runtime import Engine
        from enserve.spec import load_spec

        spec = load_spec(spec_dir)
        payloads = inputs(spec)
        with Engine(spec, max_batch=32) as engine:
            async def loop(stop_at, warm, out):
                i = 0
                while time.perf_counter() < stop_at:
                    t0 = time.perf_counter()
                    await engine.infer(payloads[i % 64], outputs=["probabilities"])
                    if t0 > warm:
                        out.append(time.perf_counter() - t0)
                    i += 1

            async def main():
                out = []
                start = time.perf_counter()
                warm, stop_at = start + 1.0, start + 1.0 + duration
                await asyncio.gather(*(loop(stop_at, warm, out) for _ in range(concurrency)))
                return out, time.perf_counter() - warm

            latencies, elapsed = asyncio.run(main())
        return summary(latencies, elapsed)

    def server_run():
        import tritonclient.http as httpclient
        from enserve.spec import load_spec

        spec = load_spec(spec_dir)
        payloads = inputs(spec)
        with tempfile.TemporaryDirectory() as tmp:
            repo = Path(tmp) / "repo"
            repo.mkdir()
            shutil.copytree(spec_dir, repo / spec.name)
            extra = []
            try:  # a plan shipped in the folder is used as it is (newer versions only)
                import enserve.plan_policy  # noqa: F401
                extra = ["--plan-policy", "reuse"]
            except ImportError:
                pass
            port_file = Path(tmp) / "ports.json"
            log = open(Path(tmp) / "server.log", "wb")
            server = subprocess.Popen(
                [sys.executable, "-m", "enserve.cli", "serve", str(repo), "--backend", "engine",
                 "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
                 "--port-file", str(port_file), "--log-level", "warning", "--model", spec.name,
                 *extra],
                stdout=log, stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + 300
                while not port_file.exists():
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("server did not start: " + (Path(tmp) / "server.log").read_text())
                    time.sleep(0.1)
                url = f"127.0.0.1:{json.loads(port_file.read_text())['http']}"
                name = spec.inputs[0].name
                out, lock = [], threading.Lock()
                start = time.perf_counter()
                warm, stop_at = start + 1.0, start + 1.0 + duration

                def worker(k):
                    client = httpclient.InferenceServerClient(url, network_timeout=60)
                    i = k
                    while time.perf_counter() < stop_at:
                        x = payloads[i % 64][name]
                        tensor = httpclient.InferInput(name, list(x.shape), "FP32")
                        tensor.set_data_from_numpy(x)
                        t0 = time.perf_counter()
                        client.infer(spec.name, [tensor],
                                     outputs=[httpclient.InferRequestedOutput("probabilities")])
                        if t0 > warm:
                            with lock:
                                out.append(time.perf_counter() - t0)
                        i += 1

                threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                if not out:
                    raise RuntimeError("no answers: " + (Path(tmp) / "server.log").read_text()[-2000:])
                return summary(out, time.perf_counter() - warm)
            finally:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(60)
                except subprocess.TimeoutExpired:
                    server.kill()
                log.close()

    print(json.dumps(engine_run() if target == "engine" else server_run()))
''')


def export_tree(commit: str, into: Path) -> Path:
    """The commit's files (no .git) under `into`; nothing else in the repository changes."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def measure(src: Path, target: str, spec_dir: Path, duration: float, concurrency: int,
            timeout_s: float) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(src), "ENSERVE_TRUSTED_CODE": "*"}
    done = subprocess.run([sys.executable, "-c", DRIVER, target, str(spec_dir), str(duration),
                           str(concurrency)], capture_output=True, text=True, env=env,
                          timeout=timeout_s, cwd=src.parent)
    if done.returncode != 0:
        raise RuntimeError(f"{target} on {src}: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def median_of(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in ("throughput", "p50_ms", "p99_ms")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="eeabd70", help="the pre-renovation commit")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="enserve-before-") as tmp:
        old_root = Path(tmp) / "old"
        old_root.mkdir()
        export_tree(args.before, old_root)
        tiny = Path(tmp) / "tiny"
        tiny.mkdir()
        (tiny / "models.py").write_text(TINY_MODELS)
        (tiny / "ensemble.yaml").write_text(TINY_SPEC)
        versions = {"before": old_root / "src", "after": ROOT / "src"}
        # each version reads its own digits spec (the spec format grew since)
        ensembles = {"digits": {"before": old_root / "examples" / "digits",
                                "after": ROOT / "examples" / "digits"},
                     "tiny": {"before": tiny, "after": tiny}}
        runs: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        timeout = args.duration + 360
        for r in range(args.rounds):
            order = list(versions) if r % 2 == 0 else list(reversed(versions))
            for ens, spec_dirs in ensembles.items():
                for target in ("engine", "server"):
                    for version in order:
                        got = measure(versions[version], target, spec_dirs[version], args.duration,
                                      args.concurrency, timeout)
                        runs.setdefault((ens, target, version), []).append(got)
                        print(f"round {r + 1} {ens:<7} {target:<7} {version:<7} "
                              f"{got['throughput']:8.1f} req/s  p50 {got['p50_ms']:7.2f} ms  "
                              f"p99 {got['p99_ms']:7.2f} ms", file=sys.stderr, flush=True)
    rows = []
    for ens in ensembles:
        for target in ("engine", "server"):
            before = median_of(runs[(ens, target, "before")])
            after = median_of(runs[(ens, target, "after")])
            rows.append({"ensemble": ens, "target": target, "before": before, "after": after,
                         "throughput_ratio": after["throughput"] / before["throughput"],
                         "p50_ratio": after["p50_ms"] / before["p50_ms"]})
    report = {"before": args.before, "duration_s": args.duration,
              "concurrency": args.concurrency, "rounds": args.rounds,
              "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "load_average_1min": os.getloadavg()[0], "rows": rows}
    print(f"{'ensemble':<9}{'target':<8}{'before req/s':>13}{'after req/s':>12}{'ratio':>7}"
          f"{'p50 before':>12}{'p50 after':>11}{'ratio':>7}")
    for row in rows:
        b, a = row["before"], row["after"]
        print(f"{row['ensemble']:<9}{row['target']:<8}{b['throughput']:>13.1f}{a['throughput']:>12.1f}"
              f"{row['throughput_ratio']:>7.2f}{b['p50_ms']:>10.2f}ms{a['p50_ms']:>9.2f}ms"
              f"{row['p50_ratio']:>7.2f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
