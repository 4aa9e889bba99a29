"""Cold start (request for an unloaded ensemble -> answer) vs reading its weights from disk.

For each round: the packed weights file is dropped from the page cache, then
  read     = seconds to read the file from disk (the floor a load can't beat),
and after dropping it again,
  cold     = a pre-imported warm worker loads the ensemble from the packed file
             (meta-device skeletons + zero-copy mmap + assign) and answers a batch of 1,
  cold_fx  = the same, loading it as one fx-fused, Conv-BN-folded graph,
  naive    = a fresh Python process: import torch, build the members normally from the
             spec (random init, then their weights), answer a batch of 1.
Ratios are to `read`, medians over rounds.

  .venv/bin/python benchmarks/swap_bench.py --spec examples/imagenet6/ensemble.yaml
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from enserve.members.packed import drop_page_cache, pack_ensemble, read_seconds
from enserve.members.warm import WarmWorker
from enserve.spec import load_spec

NAIVE = (
    "import sys, numpy as np\n"
    "from enserve.members.warm import load_runner\n"
    "run = load_runner(sys.argv[1], None, fused=False)\n"
    "run(np.load(sys.argv[2]))\n"
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", default="examples/imagenet6/ensemble.yaml")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    spec_path = Path(args.spec)
    spec = load_spec(spec_path)
    work = Path(tempfile.mkdtemp(prefix="swap_bench_"))
    packed = pack_ensemble(spec, work / f"{spec.name}.safetensors")
    shape = [d if d > 0 else 1 for d in spec.inputs[0].shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    np.save(work / "x.npy", x)
    rows: dict[str, list[float]] = {"read": [], "cold": [], "cold_fx": [], "naive": [], "load_worker": []}
    worker = WarmWorker(args.threads)
    try:
        worker.wait_ready()
        for _ in range(args.rounds):
            drop_page_cache(packed)
            rows["read"].append(read_seconds(packed))
            for key, fused in (("cold", False), ("cold_fx", True)):
                drop_page_cache(packed)
                start = time.perf_counter()
                load_s = worker.load(spec_path, packed, fused=fused)
                worker.infer(x)
                rows[key].append(time.perf_counter() - start)
                if not fused:
                    rows["load_worker"].append(load_s)
                worker.unload()
            for member in spec.members:  # the naive path reads the members' own files
                if member.kind != "torchvision":
                    drop_page_cache(spec.resolve_path(member.target, "source"))
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", NAIVE, str(spec_path), str(work / "x.npy")],
                           check=True, timeout=600)
            rows["naive"].append(time.perf_counter() - start)
    finally:
        worker.stop()
    med = {k: statistics.median(v) for k, v in rows.items()}
    size_mb = packed.stat().st_size / 2**20
    print(f"{spec.name}: packed weights {size_mb:.1f} MB, {args.rounds} rounds, {args.threads} threads")
    print("| path | ms | ratio to read |")
    print("|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {1000 * v:.0f} | {v / med['read']:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"spec": str(spec_path), "mb": size_mb, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
