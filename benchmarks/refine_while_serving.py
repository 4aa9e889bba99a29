"""Serve while the profile is refined in the background (`enserve serve --refine-profile`).

On an empty cache: the engine backend plans imagenet6 from an adaptive profile, serves
it, and a background thread refines the profile (niced children) while a closed loop of
clients keeps sending requests. Prints the refinement's progress lines as they come, the
served throughput in windows, and the final status (plan switches, settings measured).

    python benchmarks/refine_while_serving.py [--spec examples/imagenet6] [--clients 4]
        [--max-s 420] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "examples" / "imagenet6")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--window-s", type=float, default=20.0)
    parser.add_argument("--max-s", type=float, default=420.0, help="stop waiting after this")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="enserve-refine-"))
    os.environ["ENSERVE_CACHE_DIR"] = str(work / "cache")
    folder = work / args.spec.name
    shutil.copytree(args.spec, folder, ignore=shutil.ignore_patterns("plan.json", "profile.json"))

    from enserve.server.engine_backend import EngineBackend
    from enserve.spec import load_spec

    started = time.monotonic()
    lines: list[tuple[float, str]] = []

    def say(line: str) -> None:
        lines.append((time.monotonic() - started, line))
        print(f"[{time.monotonic() - started:6.1f} s] {line}", flush=True)

    spec = load_spec(folder)
    import enserve.server.engine_backend as eb

    eb._say = lambda name: say  # the progress lines, timestamped here
    backend = EngineBackend(spec, max_batch=8, max_queue=64, refine_profile=True)
    first_plan_s = time.monotonic() - started
    say(f"serving the first plan after {first_plan_s:.1f} s")
    shape = [d if d > 0 else 1 for d in spec.inputs[0].shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    done = [0]
    failed = [0]
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                backend.engine.infer_sync(x, timeout=60)
                done[0] += 1
            except Exception:
                failed[0] += 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
    for t in threads:
        t.start()
    windows: list[dict[str, Any]] = []
    refiner = backend.refiner
    assert refiner is not None
    while time.monotonic() - started < args.max_s:
        before, t0 = done[0], time.monotonic()
        time.sleep(args.window_s)
        status = refiner.status()
        rate = (done[0] - before) / (time.monotonic() - t0)
        windows.append({"t_s": round(time.monotonic() - started, 1), "requests_per_s": rate,
                        "refinement": status.to_dict()})
        say(f"window: {rate:.2f} requests/s served; refinement {status.state}, "
            f"{status.measured} measured, {status.switches} switches")
        if status.state not in ("pending", "running"):
            break
    stop.set()
    for t in threads:
        t.join(timeout=70)
    backend.shutdown()  # stops the refinement after the measurement in progress
    final = refiner.status()
    load = os.getloadavg()
    out = {"first_plan_s": first_plan_s, "windows": windows, "final": final.to_dict(),
           "requests": done[0], "failed": failed[0], "lines": lines, "load_average": load}
    say(f"done: {final.state}, {final.rounds} rounds, {final.measured} settings measured, "
        f"{final.switches} switches; {done[0]} requests served, {failed[0]} failed; load "
        f"average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.out is not None:
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
