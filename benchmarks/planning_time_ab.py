"""Greedy planning time on the big scenarios for two source trees, alternating, in one
invocation (each tree in its own process, `--rounds` times, best of `--tries` each):

    python benchmarks/planning_time_ab.py BEFORE_ROOT AFTER_ROOT [--rounds 3] [--tries 3]

BEFORE_ROOT / AFTER_ROOT are checkouts (`git archive REV | tar -x -C DIR`). Prints per
tree and round: scenario -> (best seconds, predicted throughput, instances), so that the
plans can be compared too.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
CHILD = """
import json, sys, time
from pathlib import Path
from enserve.formats.profile import load_profile
from enserve.plan import Constraints, plan
out = {}
for name in ("pochelu_12x4", "pochelu_1x16"):
    profile = load_profile(Path(sys.argv[1]) / f"{name}.json")
    for hard in (False, True):
        times = []
        for _ in range(int(sys.argv[2])):
            start = time.perf_counter()
            result = plan(profile, "greedy", constraints=Constraints(time_sharing=not hard))
            times.append(time.perf_counter() - start)
        out[name + (" hard" if hard else "")] = [round(min(times), 3),
                                                 result.predicted.throughput,
                                                 len(result.instances)]
print(json.dumps(out))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tries", type=int, default=3)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}")
    for _ in range(args.rounds):
        for root in (args.before, args.after):
            env = {**os.environ, "PYTHONPATH": str(root / "src")}
            result = subprocess.run([sys.executable, "-c", CHILD, str(SCENARIOS),
                                     str(args.tries)], env=env, check=True,
                                    capture_output=True, text=True)
            print(root.name, result.stdout.strip(), flush=True)
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
