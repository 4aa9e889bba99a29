"""A fused group's worker against the separate members' workers, served by the engine:
peak and final memory of the workers and the process tree, and batch-1 latency.

Cases, each in a fresh process, alternated `--rounds` times in one invocation:
  fused     one worker running the whole ensemble as one fx graph (`fused-fx`, folded
            weights mapped from the cache file; the first start on a machine writes it
            from the torch fork server, later ones fork from the fused server)
  separate  one worker per member (`eager`, weights mapped), the same batch size, the
            group's cores divided among them (as `unfuse_plan` does)
Memory: per worker VmHWM (peak RSS) and RSS/PSS/USS from /proc after the requests; the tree
is the case's process with its fork servers and workers. Latency: `--requests` sequential
batch-1 requests after one warm-up request, median and best.

  .venv/bin/python benchmarks/fused_workers.py --spec examples/imagenet6/ensemble.yaml --rounds 2
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
from pathlib import Path
from typing import Any

CHILD = textwrap.dedent('''
    import json, statistics, sys, time
    import numpy as np, psutil
    from enserve.formats.plan import Plan
    from enserve.fusion.candidates import FusionGroup
    from enserve.runtime import Engine
    from enserve.spec import load_spec

    args = json.loads(sys.argv[1])
    spec = load_spec(args["spec"])
    names = [m.name for m in spec.members]
    cores = args["cores"]
    if args["case"] == "fused":
        insts = [{"member": FusionGroup("fx", tuple(names), True).name, "variant": args["fused_variant"],
                  "share": cores}]
    else:
        insts = [{"member": n, "variant": "eager", "share": max(1, cores // len(names))} for n in names]
    plan = Plan.of([dict(i, device="cpu", batch_size=1, memory_bytes=0) for i in insts])
    shape = [d if d > 0 else 1 for d in spec.inputs[0].shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    t0 = time.perf_counter()
    engine = Engine(spec, plan, max_batch=8).start()
    engine.infer_sync(x, timeout=600)
    start_s = time.perf_counter() - t0
    times = []
    for _ in range(args["requests"]):
        t = time.perf_counter()
        engine.infer_sync(x, timeout=600)
        times.append(time.perf_counter() - t)
    def hwm(pid):
        with open(f"/proc/{pid}/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))
    workers = {"processes": 0, "peak_rss": 0, "rss": 0, "pss": 0, "uss": 0}
    for pid in engine.worker_pids().values():
        m = psutil.Process(pid).memory_full_info()
        workers["processes"] += 1
        workers["peak_rss"] += hwm(pid)
        workers["rss"] += m.rss; workers["pss"] += m.pss; workers["uss"] += m.uss
    tree = engine.memory()["tree"]
    engine.stop()
    print("RESULT " + json.dumps({"case": args["case"], "start_s": start_s, "workers": workers,
          "tree": tree, "b1_median_ms": 1e3 * statistics.median(times), "b1_best_ms": 1e3 * min(times)}))
''')


def run_case(case: str, args: argparse.Namespace) -> dict[str, Any]:
    payload = {"case": case, "spec": str(args.spec), "cores": args.cores, "requests": args.requests,
               "fused_variant": args.fused_variant}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(payload)], capture_output=True,
                          text=True, timeout=args.timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[len("RESULT "):]))
    raise RuntimeError(f"{case} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", type=Path, default=Path("examples/imagenet6/ensemble.yaml"))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--fused-variant", default="fused-fx",
                   help="the fused worker's variant, e.g. fused-fx-cl-lanes (members side by side)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    results = []
    for r in range(args.rounds):
        for case in ("fused", "separate"):
            res = run_case(case, args) | {"round": r + 1}
            results.append(res)
            print(json.dumps(res), flush=True)
    mib = 2**20
    print(f"{'round':<6}{'case':<10}{'workers':>8}{'peak RSS':>10}{'RSS':>8}{'PSS':>8}{'tree RSS':>10}"
          f"{'tree PSS':>10}{'b1 med ms':>11}{'b1 best':>9}{'start s':>9}")
    for res in results:
        w, t = res["workers"], res["tree"]
        print(f"{res['round']:<6}{res['case']:<10}{w['processes']:>8}{w['peak_rss'] / mib:>10.0f}"
              f"{w['rss'] / mib:>8.0f}{w['pss'] / mib:>8.0f}{t['rss'] / mib:>10.0f}{t['pss'] / mib:>10.0f}"
              f"{res['b1_median_ms']:>11.1f}{res['b1_best_ms']:>9.1f}{res['start_s']:>9.1f}")
    for key in ("peak_rss", "pss"):
        fused = statistics.median(r["workers"][key] for r in results if r["case"] == "fused")
        sep = statistics.median(r["workers"][key] for r in results if r["case"] == "separate")
        print(f"workers' {key}: fused / separate = {fused / sep:.2f}x")
    fused_ms = statistics.median(r["b1_median_ms"] for r in results if r["case"] == "fused")
    sep_ms = statistics.median(r["b1_median_ms"] for r in results if r["case"] == "separate")
    print(f"batch-1 latency: fused / separate = {fused_ms / sep_ms:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                         "load_avg": os.getloadavg(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
