"""`enserve bench --policy cascade`: the calibrated cascade next to the full ensemble, on
labelled data, in one invocation: saturated throughput (closed loop), latency, accuracy,
exit rates, and the planner's prediction with and without the exit rates.

Each policy runs on its own engine: the full ensemble on the plan for every member
reaching every row, the cascade on the plan made with the measured reach of each member
(`enserve.plan.reach`), both from the same profile when one is given (else the engine's
default plan for both, and no prediction). Rounds alternate full, cascade, full, ...
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from enserve.bench.runner import BenchConfig, machine_info
from enserve.errors import EnserveError
from enserve.policies.cascade import Cascade, CascadeRun, Stage
from enserve.policies.policy_file import Policy
from enserve.runtime.stats import percentiles
from enserve.spec import EnsembleSpec


@dataclass
class _Tally:
    rows: int = 0
    correct: int = 0
    latencies: list[float] = field(default_factory=list)
    exits: list[int] = field(default_factory=list)


async def _client(engine: Any, spec: EnsembleSpec, cascade: Cascade | None, data: np.ndarray,
                  labels: np.ndarray, rows: int, start: int, stride: int, until: float,
                  tally: _Tally) -> None:
    name = spec.inputs[0].name
    index = start
    while time.perf_counter() < until:
        pick = np.arange(index, index + rows) % len(data)
        index += stride
        x = {name: data[pick]}
        t0 = time.perf_counter()
        if cascade is None:
            result = await engine.infer(x, ["probabilities"])
            probs = result.probabilities
        else:
            run = CascadeRun(spec, cascade, x)
            while (step := run.next_stage()) is not None:
                stage, part = step
                out = await engine.infer(part, [f"logits_{m}" for m in stage.members],
                                         members=stage.members)
                run.feed(out.member_logits)
            answer = run.result()
            probs = answer.result.probabilities
            exits = answer.exits(len(cascade.stages))
            tally.exits = ([a + b for a, b in zip(tally.exits, exits, strict=True)]
                           if tally.exits else list(exits))
        if time.perf_counter() <= until:
            tally.latencies.append(time.perf_counter() - t0)
            tally.rows += rows
            tally.correct += int((probs.argmax(-1) == labels[pick]).sum())


async def _drive(engine: Any, spec: EnsembleSpec, cascade: Cascade | None, data: np.ndarray,
                 labels: np.ndarray, cfg: BenchConfig, seconds: float, offset: int) -> _Tally:
    tally = _Tally()
    until = time.perf_counter() + seconds
    stride = cfg.concurrency * cfg.request_rows
    await asyncio.gather(*(
        _client(engine, spec, cascade, data, labels, cfg.request_rows,
                offset + i * cfg.request_rows, stride, until, tally)
        for i in range(cfg.concurrency)))
    return tally


def _measure(engine: Any, spec: EnsembleSpec, cascade: Cascade | None, data: np.ndarray,
             labels: np.ndarray, cfg: BenchConfig) -> dict[str, Any]:
    asyncio.run(_drive(engine, spec, cascade, data, labels, cfg, cfg.warmup_s, 0))
    engine.reset_stats()
    cpu0 = time.process_time()
    tally = asyncio.run(_drive(engine, spec, cascade, data, labels, cfg, cfg.duration_s,
                               len(data) // 2))
    parent_cpu_s = time.process_time() - cpu0
    out: dict[str, Any] = {
        "throughput": tally.rows / cfg.duration_s,
        "rows": tally.rows,
        "accuracy": tally.correct / tally.rows if tally.rows else 0.0,
        **percentiles(tally.latencies),
    }
    stats = engine.stats()
    out["engine"] = {"parent_cpu_s": parent_cpu_s, "requests": stats["requests"]["completed"],
                     "batches": stats["batches"], "mean_batch_rows": stats["mean_batch_rows"],
                     "members": {m: {"tasks": s["tasks"], "rows": s["rows"],
                                     "utilization": s["utilization"]}
                                 for m, s in stats["members"].items()}}
    if cascade is not None and tally.exits:
        out["exit_rates"] = [n / max(1, sum(tally.exits)) for n in tally.exits]
    return out


def run_policy_bench(spec: EnsembleSpec, policy: Policy, data: np.ndarray, labels: np.ndarray,
                     cfg: BenchConfig, profile: Any = None,
                     progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Full ensemble vs cascade: throughput, latency, accuracy (on `data`/`labels`).

    Rows are shuffled once (fixed seed): a request holds rows of independent clients. With a
    profile, each policy's prediction is the plan's (member compute) and, next to it, the
    same with the serving process's time per engine request (`dispatch_s`, measured first
    on the full plan's engine with a one-stage cascade of the first stage's members, or the
    profile's `dispatch_s`; `enserve.plan.reach.with_dispatch`)."""
    from enserve.runtime import Engine

    if policy.cascade is None:
        raise EnserveError(f"{spec.name}: no cascade in its policy file; run `enserve calibrate`")
    order = np.random.default_rng(0).permutation(len(data))  # rows of independent clients
    data, labels = data[order], labels[order]
    plans: dict[str, Any] = {"full": None, "cascade": None}
    if profile is not None:
        from enserve.plan import plan as make_plan
        from enserve.plan.reach import profile_with_reach

        plans["full"] = make_plan(profile)
        plans["cascade"] = make_plan(profile_with_reach(profile, policy.reach))
    dispatch_s = getattr(profile, "dispatch_s", None) if profile is not None else None
    dispatch: dict[str, Any] | None = None
    results: dict[str, list[dict[str, Any]]] = {"full": [], "cascade": []}
    for round_index in range(cfg.rounds):
        for name in ("full", "cascade"):
            progress(f"round {round_index + 1}/{cfg.rounds}: {name}")
            engine = Engine(spec, plans[name], max_batch=cfg.max_batch,
                            max_delay_s=cfg.max_delay_s, inflight_batches=cfg.inflight_batches,
                            pin=cfg.pin)
            with engine:
                if profile is not None and dispatch_s is None and dispatch is None:
                    progress("measuring the time per engine request (one cheap stage)")
                    dispatch = _measure_dispatch(engine, spec, policy.cascade, data, labels, cfg)
                cascade = policy.cascade if name == "cascade" else None
                measured = _measure(engine, spec, cascade, data, labels, cfg)
                measured["predicted_throughput"] = engine.predicted_throughput
            results[name].append(measured)
    report: dict[str, Any] = {"spec": spec.name, "machine": machine_info(),
                              "config": {"concurrency": cfg.concurrency,
                                         "request_rows": cfg.request_rows,
                                         "duration_s": cfg.duration_s, "rounds": cfg.rounds,
                                         "rows": len(data)},
                              "stages": _cascade_dict(policy.cascade), "reach": policy.reach}
    for name, runs in results.items():
        report[name] = _median(runs)
    if dispatch is not None:
        report["dispatch"] = dispatch
        dispatch_s = dispatch["dispatch_s"]
    if dispatch_s is not None:
        _predict_with_dispatch(report, policy.cascade, float(dispatch_s), cfg.request_rows)
    full, cas = report["full"], report["cascade"]
    report["throughput_ratio"] = cas["throughput"] / full["throughput"] if full["throughput"] else None
    report["accuracy_drop_pp"] = (full["accuracy"] - cas["accuracy"]) * 100
    return report


def _measure_dispatch(engine: Any, spec: EnsembleSpec, cascade: Cascade, data: np.ndarray,
                      labels: np.ndarray, cfg: BenchConfig) -> dict[str, Any]:
    """Seconds of the serving process per engine request: a one-stage cascade of the first
    stage's (cheap) members, saturated, so that the serving process is the bottleneck."""
    cheap = Cascade((Stage(cascade.stages[0].members),), cascade.confidence)
    measured = _measure(engine, spec, cheap, data, labels, cfg)
    requests = measured["engine"]["requests"]
    per_s = requests / cfg.duration_s
    return {"members": list(cheap.stages[0].members), "requests_per_s": per_s,
            "dispatch_s": 1.0 / per_s if per_s else 0.0,
            "serving_cpu_per_request_s": measured["engine"]["parent_cpu_s"] / max(1, requests)}


def _predict_with_dispatch(report: dict[str, Any], cascade: Cascade, dispatch_s: float,
                           request_rows: int) -> None:
    from enserve.plan.reach import requests_per_row, with_dispatch

    units = float(report["machine"]["cores"])
    reach = report["reach"]
    stage_reach = [1.0] + [max(reach.get(m, 1.0) for m in s.members)
                           for s in cascade.stages[1:]]
    for name, reached in (("full", [1.0]), ("cascade", stage_reach)):
        r = report[name]
        per_row = requests_per_row(reached, request_rows)
        r["predicted_requests_per_row"] = per_row
        if r.get("predicted_throughput"):
            r["predicted_with_dispatch"] = with_dispatch(r["predicted_throughput"], per_row,
                                                         dispatch_s, units)


def _cascade_dict(cascade: Cascade) -> list[dict[str, Any]]:
    return [{"members": list(s.members), "threshold": s.threshold} for s in cascade.stages]


def _median(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    if len(runs) == 1:
        return dict(runs[0])
    out = dict(runs[len(runs) // 2])
    for key in ("throughput", "accuracy", "p50_s", "p95_s", "p99_s"):
        values = [r[key] for r in runs if key in r]
        if values:
            out[key] = statistics.median(values)
    return out


def print_policy_report(report: dict[str, Any]) -> None:
    cfg = report["config"]
    print(f"{report['spec']}: full ensemble vs cascade, closed loop at {cfg['concurrency']} "
          f"clients x {cfg['request_rows']} rows, {cfg['duration_s']:g} s x {cfg['rounds']} "
          f"round(s), {cfg['rows']} labelled rows; {report['machine']['cpu']} "
          f"({report['machine']['cores']} cores)")
    print(f"{'policy':<10}{'rows/s':>10}{'accuracy':>10}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'predicted':>11}{'+dispatch':>11}")
    for name in ("full", "cascade"):
        r = report[name]
        pred, disp = r.get("predicted_throughput"), r.get("predicted_with_dispatch")
        print(f"{name:<10}{r['throughput']:>10.1f}{r['accuracy']:>10.2%}{r['p50_s'] * 1e3:>9.1f}"
              f"{r['p99_s'] * 1e3:>9.1f}{(f'{pred:.1f}' if pred else '-'):>11}"
              f"{(f'{disp:.1f}' if disp else '-'):>11}")
    ratio = report["throughput_ratio"]
    print(f"cascade / full: {ratio:.2f}x throughput, accuracy drop "
          f"{report['accuracy_drop_pp']:.2f} percentage points")
    rates = report["cascade"].get("exit_rates")
    if rates:
        stages = ", ".join(f"{'+'.join(s['members'])} {r:.1%}"
                           for s, r in zip(report["stages"], rates, strict=True))
        print(f"rows answered per stage: {stages}")
    dispatch = report.get("dispatch")
    if dispatch:
        print(f"serving process per engine request: {dispatch['dispatch_s'] * 1e3:.3f} ms "
              f"({dispatch['requests_per_s']:.0f} requests/s of {'+'.join(dispatch['members'])} "
              "alone)")
    for name in ("full", "cascade"):
        r = report[name]
        pred, disp = r.get("predicted_throughput"), r.get("predicted_with_dispatch")
        if pred:
            line = f"{name}: measured / planner prediction = {r['throughput'] / pred:.2f}"
            if disp:
                line += (f"; with dispatch ({r['predicted_requests_per_row']:.3f} requests/row)"
                         f" = {r['throughput'] / disp:.2f}")
            print(line)
