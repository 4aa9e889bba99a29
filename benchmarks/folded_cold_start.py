"""Cold start of a fused fx group from its folded-weights file, two source trees side by
side in one invocation (e.g. before/after a change to how the file stores graphs).

Each tree first writes its folded file into a shared cache (untimed; the file format is
in the key, so trees with different formats keep separate files), then fresh processes
alternate between the trees, `--rounds` each: import, `load_fused(..., channels_last=True)`
from the file, first batch-1 answer. The weight file stays in the page cache (warm).

  .venv/bin/python benchmarks/folded_cold_start.py --a /tmp/before/src --b src \\
      --spec examples/imagenet6/ensemble.yaml --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
t0 = time.perf_counter()
import numpy as np
from enserve.fusion import load_fused
from enserve.spec import load_spec
t1 = time.perf_counter()
spec = load_spec(sys.argv[1])
names = [m.name for m in spec.members]
fused = load_fused(spec, names, "fx", int(sys.argv[3]), channels_last=True, cache_dir=Path(sys.argv[2]))
t2 = time.perf_counter()
shape = [1, *spec.inputs[0].shape[1:]]
fused.infer(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_s": t3 - t2, "total_s": t3 - t0,
                  "torchvision": "torchvision" in sys.modules,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _run(src: str, spec: str, cache: str, threads: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
    done = subprocess.run([sys.executable, "-c", CHILD, spec, cache, str(threads)], env=env,
                          capture_output=True, text=True, timeout=900)
    if done.returncode:
        raise SystemExit(f"{src}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", required=True, help="first source tree (its src folder)")
    p.add_argument("--b", required=True, help="second source tree")
    p.add_argument("--spec", default="examples/imagenet6/ensemble.yaml")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="folded-cold-") as cache:
        for src in (args.a, args.b):  # writes each tree's folded file (untimed)
            _run(src, args.spec, cache, args.threads)
        runs: dict[str, list[dict[str, float]]] = {args.a: [], args.b: []}
        for _ in range(args.rounds):
            for src in runs:
                runs[src].append(_run(src, args.spec, cache, args.threads))
    summary = {}
    for src, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "torchvision"}
        summary[src] = {**med, "torchvision": any(r["torchvision"] for r in rs), "runs": rs}
        print(f"{src}: " + ", ".join(f"{k} {v:.2f}" for k, v in med.items())
              + f", torchvision imported: {summary[src]['torchvision']}")
    a, b = summary[args.a], summary[args.b]
    print("b/a (medians): " + ", ".join(f"{k} {b[k] / a[k]:.2f}x" for k in
                                        ("import_s", "load_s", "first_s", "total_s", "peak_rss_mib")))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
