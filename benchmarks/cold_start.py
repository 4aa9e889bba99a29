"""Cold start of the 3-member ensemble (resnet18 + mobilenet_v3_large + efficientnet_b0;
`--spec` for another) served by ONNX Runtime workers, against the time to read its
weights from disk, for two source trees side by side in one invocation.

Each tree runs in a fresh Python process per round (rounds alternate between trees). The
process starts an engine once (fork servers up, placement timings remembered) and stops
it, then `--reps` times: drops the page cache of every file a worker could read the
weights from (the ONNX exports and their optimized copies with external data), reads the
optimized copies (`read_s`: the weights as the workers use them), drops them again, and
times `Engine(...).start()` + the first batch-1 answer (`cold_s`). Ratio = cold_s / read_s,
both from the same repetition.

  .venv/bin/python benchmarks/cold_start.py --a /tmp/before/src --b src --rounds 3 --reps 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory_bench import DISK, _prepare, weight_files, write_spec

CHILD = textwrap.dedent('''
    import json, os, sys, time
    import numpy as np
    from enserve.formats.plan import Plan
    from enserve.runtime import Engine
    from enserve.spec import load_spec

    args = json.loads(sys.argv[1])
    spec = load_spec(args["spec"])
    plan = Plan.of([{"member": m, "variant": "onnx", "device": "cpu", "batch_size": 8,
                     "share": 1, "memory_bytes": 0} for m in args["members"]])
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)

''') + DISK + textwrap.dedent('''
    with Engine(spec, plan, max_batch=8) as engine:  # fork servers up, placement remembered
        engine.infer_sync(x, timeout=600)
    out = []
    for _ in range(args["reps"]):
        drop(args["drop"])
        read = read_s(args["read"])
        drop(args["drop"])
        started = time.perf_counter()
        engine = Engine(spec, plan, max_batch=8).start()
        ready = time.perf_counter() - started
        engine.infer_sync(x, timeout=600)
        cold = time.perf_counter() - started
        first = time.perf_counter()
        engine.infer_sync(x, timeout=600)
        warm = time.perf_counter() - first
        engine.stop()
        out.append({"read_s": read, "ready_s": ready, "cold_s": cold, "warm_answer_s": warm})
    print("RESULT " + json.dumps(out))
''')


def optimized_files(exports: list[str]) -> list[str]:
    """The optimized copies (`.onnx` + `.data`) the workers map, where they exist."""
    from enserve.members.onnx_shared import optimized_path

    found = []
    for export in exports:
        model = optimized_path(Path(export))
        found += [str(p) for p in (model, model.with_suffix(".data")) if p.is_file()]
    return found


def run(pythonpath: str, payload: dict[str, object]) -> list[dict[str, float]]:
    env = {**os.environ, "PYTHONPATH": pythonpath}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(payload)], env=env,
                          capture_output=True, text=True, timeout=600)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return list(json.loads(line[len("RESULT "):]))
    raise RuntimeError(f"run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def _members(spec_path: Path) -> list[str]:
    from enserve.spec import load_spec

    return [m.name for m in load_spec(spec_path).members]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", required=True, help="src folder of the first tree (e.g. before)")
    p.add_argument("--b", required=True, help="src folder of the second tree (e.g. after)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--json", type=Path)
    p.add_argument("--spec", type=Path, default=None,
                   help="another ensemble (e.g. examples/imagenet6/ensemble.yaml; one ONNX "
                        "Runtime worker per member) instead of the 3-member one")
    args = p.parse_args()
    spec_path = args.spec or write_spec(Path(tempfile.mkdtemp(prefix="cold_start_")))
    _prepare(spec_path)
    members = _members(spec_path)
    exports = weight_files(spec_path, "onnx")
    optimized = optimized_files(exports)
    if not optimized:  # first use on this machine: let one engine write them
        run(args.b, {"spec": str(spec_path), "members": members, "reps": 0,
                     "drop": [], "read": []})
        optimized = optimized_files(exports)
    payload = {"spec": str(spec_path), "members": members, "reps": args.reps,
               "drop": exports + optimized, "read": optimized}
    results: dict[str, list[dict[str, float]]] = {"a": [], "b": []}
    for r in range(args.rounds):
        for name in ("a", "b"):
            reps = run(getattr(args, name), payload)
            results[name] += reps
            print(f"round {r} {name}: " + "  ".join(
                f"cold {x['cold_s']:.3f} s (ready {x['ready_s']:.3f}) read {x['read_s']:.3f} s "
                f"= {x['cold_s'] / x['read_s']:.2f}x" for x in reps), flush=True)
    print(f"{'tree':<5}{'cold s (median)':>16}{'read s':>8}{'ratio':>7}  ratios (min–max)   "
          f"warm answer s")
    for name in ("a", "b"):
        reps = results[name]
        ratios = [x["cold_s"] / x["read_s"] for x in reps]
        print(f"{name:<5}{statistics.median(x['cold_s'] for x in reps):>16.3f}"
              f"{statistics.median(x['read_s'] for x in reps):>8.3f}{statistics.median(ratios):>7.2f}"
              f"  {min(ratios):.2f}–{max(ratios):.2f}"
              f"{statistics.median(x['warm_answer_s'] for x in reps):>14.3f}")
    if args.json:
        args.json.write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_avg": os.getloadavg(),
            "a": args.a, "b": args.b, "files": optimized, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
