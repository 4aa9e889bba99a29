"""What the kernels allow: ensemble throughput bounds computed from a profile.

For each member, the fastest fp32 variant's per-sample time at 1 thread (best batch size)
and at all cores; the sum over members is the time one sample needs. With N cores and a
perfect split, the engine can do at most N / sum(1-thread times); the sequential baselines
do 1 / sum(all-core times) (eager: `sequential`, fastest variant: `sequential-fast`).

    .venv/bin/python benchmarks/throughput_bound.py benchmarks/results/imagenet6-profile.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

REDUCED = {"bf16"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("profile")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with open(args.profile) as f:
        profile = json.load(f)
    cores = max(int(d["compute_units"]) for d in profile["devices"] if d["kind"] == "cpu")
    per_sample: dict[tuple[str, str, float], float] = defaultdict(lambda: float("inf"))
    for e in profile["entries"]:
        variant = e.get("variant") or "eager"
        if variant in REDUCED or not str(e["device"]).startswith("cpu"):
            continue
        key = (e["member"], variant, float(e["share"]))
        per_sample[key] = min(per_sample[key], e["latency_s"] / e["batch_size"])
    members = sorted({m for m, _, _ in per_sample})

    def best(member: str, share: float, variants: set[str] | None = None) -> tuple[float, str]:
        options = [(t, v) for (m, v, s), t in per_sample.items()
                   if m == member and s == share and (variants is None or v in variants)]
        return min(options)

    rows = {m: {"one_thread": best(m, 1.0), "all_cores_fast": best(m, float(cores)),
                "all_cores_eager": best(m, float(cores), {"eager"})} for m in members}
    one = sum(r["one_thread"][0] for r in rows.values())
    fast = sum(r["all_cores_fast"][0] for r in rows.values())
    eager = sum(r["all_cores_eager"][0] for r in rows.values())
    result = {
        "cores": cores,
        "members": {m: {k: {"s_per_sample": v[0], "variant": v[1]} for k, v in r.items()}
                    for m, r in rows.items()},
        "engine_bound_samples_per_s": cores / one,
        "sequential_samples_per_s": 1 / eager,
        "sequential_fast_samples_per_s": 1 / fast,
        "max_ratio_vs_sequential": (cores / one) * eager,
        "max_ratio_vs_sequential_fast": (cores / one) * fast,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for m, r in rows.items():
        print(f"{m:<20} 1 thread {r['one_thread'][0] * 1e3:7.1f} ms ({r['one_thread'][1]}), "
              f"{cores} threads fastest {r['all_cores_fast'][0] * 1e3:7.1f} ms "
              f"({r['all_cores_fast'][1]}), eager {r['all_cores_eager'][0] * 1e3:7.1f} ms")
    print(f"engine bound ({cores} x 1 thread, perfect split): "
          f"{result['engine_bound_samples_per_s']:.2f} samples/s")
    print(f"sequential (eager, {cores} threads): {result['sequential_samples_per_s']:.2f}; "
          f"sequential-fast: {result['sequential_fast_samples_per_s']:.2f}")
    print(f"largest possible ratio: {result['max_ratio_vs_sequential']:.2f}x sequential, "
          f"{result['max_ratio_vs_sequential_fast']:.2f}x sequential-fast")


if __name__ == "__main__":
    main()
