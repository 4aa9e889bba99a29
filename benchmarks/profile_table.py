"""Print a profile's CPU latencies as markdown tables (one per share), for docs/profiling.md.

    .venv/bin/python benchmarks/profile_table.py benchmarks/results/imagenet6-profile.json
"""

from __future__ import annotations

import sys
from collections import defaultdict

from enserve.formats.profile import load_profile

VARIANTS = ("eager", "channels_last", "torchscript", "onnx")


def main(path: str) -> None:
    profile = load_profile(path)
    lat: dict[tuple[str, int, float, str], float] = {}
    mem: dict[tuple[str, int, float, str], int] = {}
    for e in profile.entries:
        key = (e.member, e.batch_size, e.share, e.variant or "eager")
        lat[key], mem[key] = e.latency_s * 1e3, e.memory_bytes
    members = [m.name for m in profile.members]
    shares = sorted({k[2] for k in lat})
    batches = sorted({k[1] for k in lat})
    for share in shares:
        print(f"\n**{share:g} core(s)** — median ms per batch (speed-up of the best variant "
              "over eager; memory MB eager / onnx)\n")
        print("| member | b | " + " | ".join(VARIANTS) + " | best vs eager | memory MB |")
        print("|---|---|" + "---|" * len(VARIANTS) + "---|---|")
        sums: dict[tuple[int, str], float] = defaultdict(float)
        best_sum: dict[int, float] = defaultdict(float)
        for m in members:
            for b in batches:
                cells = [lat.get((m, b, share, v)) for v in VARIANTS]
                known = [c for c in cells if c is not None]
                if not known:
                    continue
                best = min(known)
                for v, c in zip(VARIANTS, cells, strict=True):
                    sums[(b, v)] += c or 0.0
                best_sum[b] += best
                eager = lat.get((m, b, share, "eager"))
                speed = f"{eager / best:.2f}x" if eager else "-"
                mems = "/".join(f"{mem[(m, b, share, v)] / 2**20:.0f}"
                                for v in ("eager", "onnx") if (m, b, share, v) in mem)
                text = " | ".join(f"{c:.1f}" if c is not None else "-" for c in cells)
                print(f"| {m} | {b} | {text} | {speed} | {mems} |")
        for b in batches:
            text = " | ".join(f"{sums[(b, v)]:.0f}" for v in VARIANTS)
            print(f"| **sum of {len(members)}** | {b} | {text} | best per member "
                  f"{best_sum[b]:.0f} | |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/imagenet6-profile.json")
