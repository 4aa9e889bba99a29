"""Throughput of the same engine plan under two source trees, interleaved (A/B).

Each tree gets one long-lived process that starts an `Engine` for the spec and then, on
command, drives it with a closed loop for `--seconds`; the two processes take turns for
`--rounds` rounds, so on a shared machine both see the same background load. Reports
requests/s per round and the median ratio B/A.

  .venv/bin/python benchmarks/ab_throughput.py --a /tmp/before/src --b src \\
      --spec three/ensemble.yaml --variant eager --rounds 4 --seconds 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from typing import Any

CHILD = textwrap.dedent('''
    import json, sys, threading, time
    import numpy as np
    from enserve.runtime import Engine
    from enserve.spec import load_spec

    args = json.loads(sys.argv[1])
    spec = load_spec(args["spec"])
    insts = [{"member": m.name, "variant": args["variant"], "device": "cpu",
              "batch_size": args["batch"], "share": 1, "memory_bytes": 0} for m in spec.members]
    try:  # newer trees take a validated Plan only, older ones a dict
        from enserve.formats.plan import Plan
        plan = Plan.of(insts)
    except ImportError:
        plan = {"instances": insts}
    engine = Engine(spec, plan, max_batch=args["batch"]).start()
    x = np.random.default_rng(0).standard_normal((1, *spec.inputs[0].shape[1:])).astype(np.float32)
    engine.infer_sync(x, timeout=600)
    print("READY", flush=True)
    for line in sys.stdin:
        seconds = float(line)
        stop = time.perf_counter() + seconds
        done = [0] * args["concurrency"]
        def caller(i):
            while time.perf_counter() < stop:
                engine.infer_sync(x, timeout=600)
                done[i] += 1
        threads = [threading.Thread(target=caller, args=(i,)) for i in range(args["concurrency"])]
        t0 = time.perf_counter()
        for t in threads: t.start()
        for t in threads: t.join()
        print("RESULT " + json.dumps(sum(done) / (time.perf_counter() - t0)), flush=True)
    engine.stop()
''')


def start(pythonpath: str, payload: dict[str, Any]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": pythonpath}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(payload)], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    return proc


def wait_line(proc: subprocess.Popen[str], prefix: str) -> str:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    raise RuntimeError(f"child exited before printing {prefix!r}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", required=True, help="src folder of tree A (e.g. before)")
    p.add_argument("--b", required=True, help="src folder of tree B (e.g. after)")
    p.add_argument("--spec", required=True)
    p.add_argument("--variant", default="eager")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--json")
    args = p.parse_args()
    payload = {"spec": args.spec, "variant": args.variant, "batch": args.batch,
               "concurrency": args.concurrency}
    procs = {"A": start(args.a, payload), "B": start(args.b, payload)}
    try:
        for proc in procs.values():
            wait_line(proc, "READY")
        rates: dict[str, list[float]] = {"A": [], "B": []}
        for r in range(args.rounds):
            order = ["A", "B"] if r % 2 == 0 else ["B", "A"]
            for name in order:
                proc = procs[name]
                assert proc.stdin is not None
                proc.stdin.write(f"{args.seconds}\n")
                proc.stdin.flush()
                rates[name].append(float(wait_line(proc, "RESULT ")))
                print(f"round {r + 1} {name}: {rates[name][-1]:.3f} req/s", flush=True)
        ratios = [b / a for a, b in zip(rates["A"], rates["B"], strict=True) if a]
        report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  "load_avg": os.getloadavg(), "args": vars(args), "rates": rates,
                  "median_ratio_b_over_a": statistics.median(ratios) if ratios else None}
        print(json.dumps(report))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1)
    finally:
        for proc in procs.values():
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
