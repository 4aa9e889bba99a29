"""Deadline answers with a straggler: one member slowed on purpose, requests with a deadline.

Starts the engine on a spec with `ENSERVE_SLOW_MEMBERS` (the test hook: the member sleeps
before every batch), sends requests of one row at Poisson arrival times (open loop) with
`answer_by` = arrival + deadline and `min_members`, and reports the latency from submit
to answer (the engine's future resolving), how many requests were answered with at least
`min_members`, how many of those were partial, and the tasks the slowed member skipped or
finished late. Targets (issue 14): p99 <= deadline + 5 ms, >= 99% answered. Usage:

    ENSERVE_TRUSTED_CODE=models.py .venv/bin/python benchmarks/deadline_answers.py \\
        examples/digits32 --slow wide=0.1 --deadline-ms 30 --min-members 3 \\
        --rate 100 --duration 20 [--json] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from concurrent.futures import Future
from typing import Any

import numpy as np

from enserve.bench.runner import machine_info, make_payloads
from enserve.members.slowed import SLOW_ENV
from enserve.spec import load_spec


class Tally:
    """Outcomes of the requests, recorded by the engine's threads as they resolve."""

    def __init__(self, members: int, min_members: int) -> None:
        self.members, self.min_members = members, min_members
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.answered = self.partial = 0
        self.errors: dict[str, int] = {}

    def record(self, submitted: float, future: Future[Any]) -> None:
        elapsed = time.perf_counter() - submitted
        with self.lock:
            self.latencies.append(elapsed)
            error = future.exception()
            if error is not None:
                text = str(error)
                why = (" (too few members)" if "min_members" in text else
                       " (not started in time)" if "in the queue" in text else "")
                name = type(error).__name__ + why
                self.errors[name] = self.errors.get(name, 0) + 1
                return
            used = future.result().members
            count = self.members if used is None else len(used)
            if count >= self.min_members:
                self.answered += 1
            if count < self.members:
                self.partial += 1


def run(spec_path: str, slow: str, deadline_ms: float, min_members: int, rate: float,
        duration_s: float, warmup_s: float, seed: int) -> dict[str, Any]:
    os.environ[SLOW_ENV] = slow  # read by the engine when it starts its workers
    from enserve.runtime import Engine

    spec = load_spec(spec_path)
    payloads = make_payloads(spec, 1, seed)
    name = spec.inputs[0].name
    rng = np.random.default_rng(seed)
    with Engine(spec) as engine:
        for phase, seconds in (("warmup", warmup_s), ("measured", duration_s)):
            tally = Tally(len(spec.members), min_members)
            if phase == "measured":
                engine.reset_stats()
            start = next_at = time.perf_counter()
            sent = 0
            while time.perf_counter() < start + seconds:
                submitted = time.perf_counter()
                future = engine.submit({name: payloads[sent % len(payloads)]}, ["probabilities"],
                                       answer_by=time.monotonic() + deadline_ms / 1000,
                                       min_members=min_members)
                future.add_done_callback(lambda f, t=submitted, k=tally: k.record(t, f))
                sent += 1
                next_at += rng.exponential(1 / rate)  # Poisson arrivals, on a fixed schedule
                time.sleep(max(0.0, next_at - time.perf_counter()))
            time.sleep(deadline_ms / 1000 + 1.0)  # every answer is in by then
        stats = engine.stats()
    lat = np.array(tally.latencies) * 1000
    with tally.lock:
        done = len(lat)
    return {
        "spec": spec.name, "machine": machine_info(), "load_average": os.getloadavg(),
        "slow": slow, "deadline_ms": deadline_ms, "min_members": min_members,
        "rate": rate, "duration_s": duration_s, "requests": sent, "resolved": done,
        "answered_share": tally.answered / sent if sent else 0.0,
        "partial_share": tally.partial / sent if sent else 0.0,
        "errors": tally.errors,
        "latency_ms": {f"p{q}": float(np.percentile(lat, q)) for q in (50, 90, 99, 99.9)}
        | {"max": float(lat.max()) if done else 0.0},
        "p99_over_deadline_ms": float(np.percentile(lat, 99)) - deadline_ms if done else None,
        "late_tasks": stats["late_tasks"], "skipped_tasks": stats["skipped_tasks"],
        "mean_batch_rows": stats["mean_batch_rows"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("spec")
    p.add_argument("--slow", default="wide=0.1", help="MEMBER=SECONDS per batch (the test hook)")
    p.add_argument("--deadline-ms", type=float, default=30.0)
    p.add_argument("--min-members", type=int, default=3)
    p.add_argument("--rate", type=float, default=100.0, help="requests/s (Poisson)")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--out")
    a = p.parse_args()
    os.environ.setdefault("ENSERVE_TRUSTED_CODE", "models.py")
    report = run(a.spec, a.slow, a.deadline_ms, a.min_members, a.rate, a.duration, a.warmup,
                 a.seed)
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
    if a.json:
        print(json.dumps(report, indent=1))
        return
    lat = report["latency_ms"]
    print(f"{report['spec']}: {report['slow']} slowed, deadline {a.deadline_ms:g} ms, "
          f"min_members {a.min_members}, {a.rate:g} requests/s for {a.duration:g} s; "
          f"{report['machine']['cpu']} ({report['machine']['cores']} cores), load average "
          f"{report['load_average'][0]:.2f}")
    print(f"requests {report['requests']}: answered with >= min_members "
          f"{report['answered_share']:.2%} (partial {report['partial_share']:.2%}), "
          f"errors {report['errors'] or 'none'}")
    print(f"latency ms: p50 {lat['p50']:.1f}, p90 {lat['p90']:.1f}, p99 {lat['p99']:.1f}, "
          f"p99.9 {lat['p99.9']:.1f}, max {lat['max']:.1f} "
          f"(p99 - deadline = {report['p99_over_deadline_ms']:+.1f} ms)")
    print(f"slowed work: skipped {report['skipped_tasks']}, finished late {report['late_tasks']}")


if __name__ == "__main__":
    main()
