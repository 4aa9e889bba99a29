"""Speed targets that used to be asserted in tests (timings belong here, not in pytest):

1. the greedy planner plans each big scenario (benchmarks/scenarios/pochelu_12x4.json,
   pochelu_1x16.json) in under a second (best of `--tries`, the machine may be shared),
   with time-sharing and with hard shares (time-sharing disabled: the share search runs);
2. `enserve demo --train` trains the four digits members in under 60 s in total
   (`--train`; takes about 10-60 s).

    .venv/bin/python benchmarks/planning_time.py [--tries 3] [--train]

Prints one line per target and exits 1 if one is missed.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from enserve.formats.profile import load_profile
from enserve.plan import Constraints, plan

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
DIGITS = Path(__file__).resolve().parents[1] / "examples" / "digits"
PLAN_TARGET_S = 1.0
TRAIN_TARGET_S = 60.0


def planning_times(tries: int) -> list[tuple[str, float, float]]:
    """(target name, seconds, limit) for the greedy planner on each big scenario."""
    rows = []
    for name in ("pochelu_12x4", "pochelu_1x16"):
        profile = load_profile(SCENARIOS / f"{name}.json")
        for hard in (False, True):
            best = float("inf")
            for _ in range(tries):
                start = time.perf_counter()
                plan(profile, "greedy", constraints=Constraints(time_sharing=not hard))
                best = min(best, time.perf_counter() - start)
            what = ", hard shares" if hard else ""
            rows.append((f"greedy plans {name}{what}", best, PLAN_TARGET_S))
    return rows


def training_time() -> tuple[str, float, float]:
    from enserve.demo.digits import train

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "digits"
        shutil.copytree(DIGITS, folder)
        for weights in folder.glob("*.safetensors"):
            weights.unlink()
        timings = train(folder / "ensemble.yaml")
    return ("demo --train, four members", sum(timings.values()), TRAIN_TARGET_S)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tries", type=int, default=3)
    parser.add_argument("--train", action="store_true", help="also time the digits training")
    args = parser.parse_args()
    rows = planning_times(args.tries)
    if args.train:
        rows.append(training_time())
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f}")
    missed = 0
    for name, seconds, limit in rows:
        ok = seconds < limit
        missed += not ok
        print(f"{'ok  ' if ok else 'MISS'} {name}: {seconds:.3f} s (target < {limit:g} s)")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
