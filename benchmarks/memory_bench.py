"""Memory, throughput and cold start of the 3-member ensemble (resnet18 + mobilenet_v3_large
+ efficientnet_b0, seeded random weights), this tree against an older one, in one
invocation.

Every case runs in a fresh Python process (`PYTHONPATH` = the tree under test), so the
process tree measured is exactly that case's: the process itself, its fork servers and
its workers. Memory is summed over the tree from `/proc/<pid>/smaps_rollup` (psutil):
RSS counts shared pages once per process, PSS divides them among their sharers.

  cases    single          one process holding the three members (reference executor,
                           eager PyTorch): the lower bound a multi-process server pays more than
           engine-eager    Engine, one worker per member, eager PyTorch
           engine-onnx     Engine, one worker per member, ONNX Runtime
  measures start_s         Engine(...).start() in a fresh process (imports, fork servers,
                           loads, warm-up, placement calibration)
           tree_*_start    process-tree memory right after start
           tree_*          process-tree memory after the load
           throughput      closed loop, `--concurrency` callers, batches of 1, `--duration` s
  --cold   after the case's first engine stopped: page cache of the weight files dropped,
           read them (`read_s`), drop again, time a second Engine start + first answer
           (fork servers already running, as for a server loading a second ensemble);
           ONNX workers map their optimized copies, which this does not drop: use
           `benchmarks/cold_start.py` for their cold start
  --second the same engine with a second resnet18 instance: what the tree's PSS grows by,
           and the PSS of resnet18's weight file mapping in each of its workers

  .venv/bin/python benchmarks/memory_bench.py --before /tmp/before/src --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

MEMBERS = [("resnet18", 1), ("mobilenet_v3_large", 2), ("efficientnet_b0", 3)]

# Page-cache helpers for the children: drop files from the cache, time reading them.
DISK = textwrap.dedent('''
    def drop(paths):
        for p in paths:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    def read_s(paths):
        start = time.perf_counter()
        for p in paths:
            with open(p, "rb", buffering=0) as f:
                buf = bytearray(16 << 20)
                while f.readinto(buf):
                    pass
        return time.perf_counter() - start

''')

CHILD = textwrap.dedent('''
    import json, os, sys, threading, time
    import numpy as np, psutil

    def tree():
        me = psutil.Process()
        procs = [me] + [c for c in me.children(recursive=True)]
        out = {"processes": 0, "rss": 0, "pss": 0, "uss": 0}
        for p in procs:
            try:
                if p.status() == psutil.STATUS_ZOMBIE:
                    continue
                m = p.memory_full_info()
            except psutil.Error:
                continue
            out["processes"] += 1
            out["rss"] += m.rss; out["pss"] += m.pss; out["uss"] += m.uss
        return out

    def mapping_pss(pid, needle):
        rss = pss = 0; inside = False
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                head = line.split()
                if head and "-" in head[0] and not head[0].endswith(":"):
                    inside = len(head) >= 6 and needle in head[-1]
                elif inside and head[0] == "Rss:":
                    rss += int(head[1]) * 1024
                elif inside and head[0] == "Pss:":
                    pss += int(head[1]) * 1024
        return rss, pss

    def closed_loop(call, x, concurrency, duration, warmup):
        stop = time.perf_counter() + warmup + duration
        begin = time.perf_counter() + warmup
        done = [0] * concurrency
        def caller(i):
            while True:
                call(x)
                now = time.perf_counter()
                if now >= stop:
                    return
                if now >= begin:
                    done[i] += 1
        threads = [threading.Thread(target=caller, args=(i,)) for i in range(concurrency)]
        for t in threads: t.start()
        for t in threads: t.join()
        return sum(done) / duration

''') + DISK + textwrap.dedent('''
    args = json.loads(sys.argv[1])
    from enserve.spec import load_spec
    spec = load_spec(args["spec"])
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    result = {"case": args["case"]}
    if args["case"] == "single":
        started = time.perf_counter()
        from enserve.reference import ReferenceExecutor
        import torch
        torch.set_num_threads(args["threads"])
        ex = ReferenceExecutor(spec)
        ex.infer(x)
        result["start_s"] = time.perf_counter() - started
        result["tree_start"] = tree()
        lock = threading.Lock()
        def call(batch):
            with lock:
                ex.infer(batch)
        result["throughput"] = closed_loop(call, x, 1, args["duration"], args["warmup"])
        result["tree"] = tree()
        print("RESULT " + json.dumps(result)); sys.exit(0)

    from enserve.runtime import Engine
    variant = args["variant"]
    def plan(extra=()):
        inst = [{"member": m, "variant": variant, "device": "cpu", "batch_size": 8, "share": 1,
                 "memory_bytes": 0} for m in list(args["members"]) + list(extra)]
        try:  # newer trees take a validated Plan only
            from enserve.formats.plan import Plan
        except ImportError:
            return {"instances": inst}
        return Plan.of(inst)
    started = time.perf_counter()
    engine = Engine(spec, plan(), max_batch=8).start()
    engine.infer_sync(x, timeout=600)
    result["start_s"] = time.perf_counter() - started
    result["tree_start"] = tree()
    result["throughput"] = closed_loop(lambda b: engine.infer_sync(b, timeout=600), x,
                                       args["concurrency"], args["duration"], args["warmup"])
    result["tree"] = tree()
    pids = engine.worker_pids()
    engine.stop()
    if args.get("second"):
        base = tree()
        engine = Engine(spec, plan(["resnet18"]), max_batch=8).start()
        for _ in range(4):
            engine.infer_sync(np.repeat(x, 8, axis=0), timeout=600)
        with_second = tree()
        engine.stop()
        engine = Engine(spec, plan(), max_batch=8).start()
        engine.infer_sync(np.repeat(x, 8, axis=0), timeout=600)
        one = tree()
        r18 = [pid for label, pid in engine.worker_pids().items() if label.startswith("resnet18")]
        engine.stop()
        result["second"] = {"tree_pss_one": one["pss"], "tree_pss_two": with_second["pss"],
                            "tree_rss_one": one["rss"], "tree_rss_two": with_second["rss"],
                            "added_pss": with_second["pss"] - one["pss"]}
        engine = Engine(spec, plan(["resnet18"]), max_batch=8).start()
        for _ in range(4):
            engine.infer_sync(np.repeat(x, 8, axis=0), timeout=600)
        maps = []
        for label, pid in engine.worker_pids().items():
            if label.startswith("resnet18"):
                maps.append(mapping_pss(pid, args.get("weights_needle") or "resnet18-"))
        engine.stop()
        result["second"]["resnet18_weight_mappings"] = maps
    if args.get("cold_files"):
        files = args["cold_files"]
        drop(files)
        result["read_s"] = read_s(files)
        drop(files)
        started = time.perf_counter()
        engine = Engine(spec, plan(), max_batch=8).start()
        engine.infer_sync(x, timeout=600)
        result["cold_start_s"] = time.perf_counter() - started
        engine.stop()
    print("RESULT " + json.dumps(result))
''')


def write_spec(folder: Path) -> Path:
    lines = ["name: three", "inputs:", "  - {name: input, datatype: FP32, shape: [-1, 3, 224, 224]}",
             "members:"]
    lines += [f"  - {{name: {n}, source: \"torchvision:{n}\", seed: {s}}}" for n, s in MEMBERS]
    lines.append("combiner: mean_prob")
    path = folder / "ensemble.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_case(pythonpath: str, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": pythonpath}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(payload)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[len("RESULT "):]))
    raise RuntimeError(f"case {payload['case']} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def _prepare(spec_path: Path) -> None:
    """Write the cached artifacts both trees use (ONNX exports, weight files), untimed."""
    from enserve.spec import load_spec
    from enserve.variants.load import cached_onnx, load_variant

    spec = load_spec(spec_path)
    for m in spec.members:
        if cached_onnx(spec, m, None) is None:
            print(f"exporting {m.name} to ONNX (once; cached)", flush=True)
            load_variant(spec, m, "onnx")
    weight_files(spec_path, "eager")


def weight_files(spec_path: Path, variant: str) -> list[str]:
    """The files this tree's workers read the members' weights from."""
    from enserve.members.mapped import weights_file
    from enserve.spec import load_spec
    from enserve.variants.load import cached_onnx

    spec = load_spec(spec_path)
    if variant == "onnx":
        found = [cached_onnx(spec, m, None) for m in spec.members]
        return [str(p) for p in found if p is not None]
    return [str(weights_file(spec, m)) for m in spec.members]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", help="src folder of the tree to compare with (e.g. a git archive)")
    p.add_argument("--after", help="src folder of the tree under test (default: this checkout's)")
    p.add_argument("--cases", default="single,engine-eager,engine-onnx")
    p.add_argument("--duration", type=float, default=15.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    here = args.after or str(Path(__file__).resolve().parent.parent / "src")
    folder = Path(tempfile.mkdtemp(prefix="memory_bench_"))
    spec_path = write_spec(folder)
    _prepare(spec_path)
    trees = {"after": here, **({"before": args.before} if args.before else {})}
    results: list[dict[str, Any]] = []
    for case in args.cases.split(","):
        for tree_name, pythonpath in trees.items():
            if case == "single" and tree_name == "before":
                continue  # the reference executor did not change
            variant = {"engine-eager": "eager", "engine-onnx": "onnx"}.get(case)
            payload: dict[str, Any] = {
                "case": case, "spec": str(spec_path), "variant": variant,
                "members": [n for n, _ in MEMBERS], "duration": args.duration,
                "warmup": args.warmup, "concurrency": args.concurrency, "threads": args.threads,
            }
            if variant and tree_name == "after":
                payload["second"] = True
                payload["weights_needle"] = "resnet18-" + ("onnx" if variant == "onnx" else "weights")
            if variant:
                try:
                    payload["cold_files"] = weight_files(spec_path, variant)
                except Exception as exc:
                    print(f"no weight files for {case}: {exc}", file=sys.stderr)
            t0 = time.perf_counter()
            res = run_case(pythonpath, payload, args.timeout)
            res["tree"] = res.get("tree")
            res["source"] = tree_name
            res["wall_s"] = time.perf_counter() - t0
            results.append(res)
            print(json.dumps(res), flush=True)
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "cpu": _cpu(), "load_avg": os.getloadavg(), "args": vars(args) | {"json": str(args.json)},
              "results": results}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    _table(results)
    return 0


def _cpu() -> str:
    with open("/proc/cpuinfo") as f:
        return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")


def _table(results: list[dict[str, Any]]) -> None:
    mib = 2**20
    print(f"{'case':<14}{'tree':<8}{'procs':>6}{'RSS MiB':>9}{'PSS MiB':>9}{'start RSS':>10}"
          f"{'start s':>8}{'req/s':>8}{'cold s':>8}{'read s':>8}")
    for r in results:
        t, s = r["tree"], r["tree_start"]
        cold = f"{r['cold_start_s']:.2f}" if "cold_start_s" in r else ""
        read = f"{r['read_s']:.3f}" if "read_s" in r else ""
        print(f"{r['case']:<14}{r['source']:<8}{t['processes']:>6}{t['rss'] / mib:>9.0f}"
              f"{t['pss'] / mib:>9.0f}{s['rss'] / mib:>10.0f}{r['start_s']:>8.1f}"
              f"{r['throughput']:>8.2f}{cold:>8}{read:>8}")
        if "second" in r:
            sec = r["second"]
            print(f"  second resnet18 instance: tree PSS +{sec['added_pss'] / mib:.0f} MiB; "
                  f"weight mapping (RSS, PSS) MiB per worker: "
                  f"{[(round(a / mib, 1), round(b / mib, 1)) for a, b in sec['resnet18_weight_mappings']]}")


if __name__ == "__main__":
    raise SystemExit(main())
