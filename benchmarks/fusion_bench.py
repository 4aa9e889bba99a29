"""Fused vs separate execution on CPU: latency at batch 1 and 8, load time, peak memory.

Latency: one process loads every variant and times them interleaved, call by call, so
they share the machine's noise; the best (min) time per variant is reported (medians in
the JSON). Load time and memory: each variant in its own fresh process, `--rounds` times,
median (peak RSS; PSS and USS after the timed batch). Ratios are to `separate` (the
reference executor: members one by one, numpy combine). fx variants map their folded
weights from the cache file that the latency process writes on first use
(`fx-cl-sources`: folded from freshly built sources instead); `separate-mapped`: members
with their weights mapped, as the engine's eager workers load them; `fx-cl-lanes`: one
folded graph per member, run side by side on `--threads` threads of one intra-op thread.

  .venv/bin/python benchmarks/fusion_bench.py --spec examples/imagenet6/ensemble.yaml
  .venv/bin/python benchmarks/fusion_bench.py --deep-resnet18 5 --variants separate,fx,horizontal
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

VARIANTS = ("separate", "separate-mapped", "folded-each", "fx", "fx-cl", "fx-cl-sources", "fx-frozen",
            "fx-cl-lanes", "horizontal", "onnx")


def _deep_spec(count: int) -> Any:
    from enserve.spec import spec_from_dict

    members = [{"name": f"r{i}", "source": "torchvision:resnet18", "seed": i} for i in range(count)]
    data = {"name": f"deep_resnet18_x{count}", "members": members,
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]}]}
    return spec_from_dict(data, where="<deep-resnet18>")


def _load(spec: Any, variant: str, threads: int) -> Callable[[Any], Any]:
    import numpy as np

    from enserve.combine import combine
    from enserve.fusion import load_fused
    from enserve.reference import ReferenceExecutor

    names = [m.name for m in spec.members]
    if variant == "separate":
        return ReferenceExecutor(spec, threads=threads).infer
    if variant == "separate-mapped":  # as the engine's eager workers load them
        from enserve.members import TorchMember
        from enserve.members.mapped import mapped_module
        from enserve.members.preprocess import Preprocessor

        members = {m.name: TorchMember(m.name, mapped_module(spec, m), Preprocessor(m.preprocess))
                   for m in spec.members}
        return ReferenceExecutor(spec, members=members).infer
    if variant == "fx-cl-sources":  # folded from freshly built sources, no folded-weights file
        return load_fused(spec, names, "fx", threads, channels_last=True, mapped=False).infer
    if variant == "fx-cl-lanes":  # one graph per member, `threads` lanes of 1 thread each
        return load_fused(spec, names, "fx", threads, channels_last=True, lanes=True).infer
    if variant == "folded-each":
        parts = [load_fused(spec, [n], "fx", threads) for n in names]
        weights = spec.member_weights()
        return lambda x: combine(np.concatenate([p(x) for p in parts]), spec.combiner, weights)
    kind = {"fx": "fx", "fx-cl": "fx", "fx-frozen": "fx", "horizontal": "horizontal", "onnx": "onnx"}[variant]
    fused = load_fused(spec, names, kind, threads,  # type: ignore[arg-type]
                       channels_last=variant == "fx-cl", frozen=variant == "fx-frozen")
    return fused.infer


def _child(args: argparse.Namespace) -> dict[str, Any]:
    """Runs inside a measuring process. `--variant V`: load V alone, report load time and
    memory. `--variant latency`: load every variant, time them interleaved call by call."""
    import resource

    import numpy as np
    import psutil
    import torch

    from enserve.spec import load_spec

    torch.set_num_threads(args.threads)
    spec = _deep_spec(args.deep_resnet18) if args.deep_resnet18 else load_spec(args.spec)
    shape = [d if d > 0 else 1 for d in spec.inputs[0].shape[1:]]
    rng = np.random.default_rng(0)
    if args.variant != "latency":
        rss0 = psutil.Process().memory_info().rss
        t0 = time.perf_counter()
        run = _load(spec, args.variant, args.threads)
        load_s = time.perf_counter() - t0
        rss_loaded = psutil.Process().memory_info().rss
        run(rng.standard_normal((max(args.batches), *shape)).astype(np.float32))
        full = psutil.Process().memory_full_info()
        return {"variant": args.variant, "load_s": load_s, "load_rss_mb": (rss_loaded - rss0) / 2**20,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "end_pss_mb": full.pss / 2**20, "end_uss_mb": full.uss / 2**20}
    variants = args.variants.split(",")
    runs = {v: _load(spec, v, args.threads) for v in variants}
    out: dict[str, Any] = {}
    for batch in args.batches:
        x = rng.standard_normal((batch, *shape)).astype(np.float32)
        times: dict[str, list[float]] = {v: [] for v in variants}
        for run in runs.values():
            run(x)  # warm-up
        deadline = time.perf_counter() + args.seconds * len(variants)
        while min(len(t) for t in times.values()) < args.min_reps or time.perf_counter() < deadline:
            for v, run in runs.items():
                t = time.perf_counter()
                run(x)
                times[v].append(time.perf_counter() - t)
        for v, ts in times.items():
            out.setdefault(v, {})[f"b{batch}_ms"] = 1000 * min(ts)
            out[v][f"b{batch}_median_ms"] = 1000 * statistics.median(ts)
            out[v][f"b{batch}_reps"] = len(ts)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", default="examples/imagenet6/ensemble.yaml")
    p.add_argument("--deep-resnet18", type=int, default=0, help="N seeded resnet18s instead of --spec")
    p.add_argument("--variants", default="separate,folded-each,fx,fx-cl,fx-frozen")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=float, default=3.0, help="timing budget per batch size")
    p.add_argument("--min-reps", type=int, default=3)
    p.add_argument("--json", type=Path)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        print(json.dumps(_child(args)))
        return 0
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    base_cmd = [sys.executable, __file__, "--spec", args.spec, "--deep-resnet18", str(args.deep_resnet18),
                "--threads", str(args.threads), "--seconds", str(args.seconds),
                "--min-reps", str(args.min_reps), "--variants", args.variants,
                "--batches", *map(str, args.batches)]

    def child(variant: str) -> dict[str, Any] | None:
        done = subprocess.run([*base_cmd, "--variant", variant], capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            print(f"{variant}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            return None
        return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]

    latency = child("latency") or {}
    memory: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for v in variants:
            r = child(v)
            if r:
                memory[v].append(r)
    table: dict[str, dict[str, float]] = {}
    for v in variants:
        row = {k: latency[v][k] for k in latency.get(v, {}) if k.endswith("_ms") and "median" not in k}
        for k in ("load_s", "load_rss_mb", "peak_rss_mb", "end_pss_mb", "end_uss_mb"):
            if memory[v]:
                row[k] = statistics.median(r[k] for r in memory[v])
        table[v] = row
    keys = [k for k in next(iter(table.values()), {})]
    base = table.get("separate")
    print("| variant | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for v, row in table.items():
        cells = []
        for k in keys:
            ratio = f" ({row[k] / base[k]:.2f}x)" if base and base.get(k) and v != "separate" else ""
            cells.append(f"{row.get(k, float('nan')):.3g}{ratio}")
        print(f"| {v} | " + " | ".join(cells) + " |")
    results = {"latency": latency, "memory": memory}
    if args.json:
        settings = {k: str(v) for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"args": settings, "table": table, "runs": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
