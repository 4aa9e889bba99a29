"""One `enserve bench` invocation: the engine and the chosen baselines driven by the same
load, interleaved round by round so that ratios are measured side by side."""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from enserve.bench.agreement import LiveAgreement, live_agreement
from enserve.bench.load import LoadResult, Target, run_load
from enserve.bench.plans import resolve_plan
from enserve.bench.remote import RemoteTarget, connect, run_remote_round
from enserve.bench.targets import InProcessServer, build_baseline
from enserve.errors import SpecError
from enserve.formats.plan import Plan
from enserve.formats.profile import Profile
from enserve.plan.fusion import plan_groups, unfuse_plan
from enserve.runtime import Engine
from enserve.runtime.stats import kernel_bound_throughput, percentiles
from enserve.spec import EnsembleSpec


@dataclass
class BenchConfig:
    mode: str = "closed"
    concurrency: int = 8
    rate: float = 10.0
    duration_s: float = 20.0
    warmup_s: float = 3.0
    baselines: list[str] = field(default_factory=list)
    baseline_batch: int = 8
    threads: int = 0  # 0: every core
    rounds: int = 1
    max_batch: int = 32
    max_delay_s: float = 0.002
    request_rows: int = 1
    inflight_batches: int = 2
    pin: bool = True
    seed: int = 0
    fusion: str = "auto"
    urls: list[str] = field(default_factory=list)
    backend: str = "engine"  # "ray": the plan as Ray actors (enserve.runtime.ray)
    ray_address: str | None = None
    ray_compiled_graph: bool = False  # one node: batches through a Ray Compiled Graph
    ray_fast_lane: bool = True  # small batches to actors on this node: enserve's own lane

    def level(self) -> float:
        return self.concurrency if self.mode == "closed" else self.rate


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                         "")
    except OSError:
        pass
    import torch

    return {"cpu": model or platform.processor(), "cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def make_payloads(spec: EnsembleSpec, rows: int, seed: int, count: int = 16) -> list[np.ndarray]:
    """Random (not zero) request batches for the spec's first input."""
    from enserve.datatypes import numpy_dtype

    tensor = spec.inputs[0]
    rng = np.random.default_rng(seed)
    shape = (rows, *(d if d > 0 else 1 for d in tensor.shape[1:]))
    dtype = np.dtype(numpy_dtype(tensor.datatype))
    if dtype.kind == "f":
        return [rng.standard_normal(shape).astype(dtype) for _ in range(count)]
    return [rng.integers(0, 128, size=shape).astype(dtype) for _ in range(count)]


def engine_target(engine: Any) -> Target:
    async def call(x: np.ndarray) -> Any:
        return await engine.infer(x, outputs=["probabilities"])

    return call


def _merge(results: list[LoadResult]) -> dict[str, Any]:
    """Median throughput over rounds; latency percentiles over all rounds' samples."""
    merged = results[0].summary()
    merged["throughput"] = statistics.median(r.throughput for r in results)
    merged.update(percentiles([x for r in results for x in r.latencies]))
    for key in ("completed", "failed", "rejected"):
        merged[key] = sum(getattr(r, key) for r in results)
    merged["rounds"] = [r.throughput for r in results]
    merged["rounds_p50_s"] = [r.summary()["p50_s"] for r in results]
    return merged


class BenchSession:
    """The engine and the baselines, started once and measured at one or more levels.

    The plan is resolved under `cfg.fusion` (`enserve.bench.plans.resolve_plan`); the
    `unfused` baseline is a second engine running the same plan with every fused group
    split into its members (`enserve.plan.fusion.unfuse_plan`)."""

    def __init__(self, spec: EnsembleSpec, plan: Plan | None, cfg: BenchConfig,
                 profile: Profile | None = None,
                 progress: Callable[[str], None] = print) -> None:
        self.spec, self.cfg, self.progress = spec, cfg, progress
        self.threads = cfg.threads or len(os.sched_getaffinity(0))
        self.payloads = make_payloads(spec, cfg.request_rows, cfg.seed)
        self.remotes: dict[str, RemoteTarget] = {}
        self.described: dict[str, dict[str, Any]] = {}
        for url in cfg.urls:  # first: an unreachable server fails before workers start
            progress(f"connecting to {url}")
            remote = connect(url, spec.name, spec.inputs[0].name)
            self.remotes[remote.address.label] = remote
            self.described[remote.address.label] = {"url": url, "model": spec.name}
        resolved = resolve_plan(spec, plan, profile, cfg.fusion, len(os.sched_getaffinity(0)))
        plan, self.fusion = resolved.plan, resolved.fusion
        progress(f"starting engine ({'plan' if plan is not None else 'default plan'}"
                 f"{', fused: ' + ', '.join(self.fusion['groups']) if self.fusion['groups'] else ''})")
        self.engine = self._engine(plan)
        self.engines: dict[str, Any] = {}
        self.servers: dict[str, InProcessServer] = {}
        self.notes: list[str] = []
        try:
            for kind in cfg.baselines:
                if kind == "unfused":
                    self._start_unfused(plan)
                    continue
                if kind == "local-engine":  # the same plan on the local multi-process engine
                    progress("starting baseline local-engine (the same plan, local processes)")
                    self.engines[kind] = self._engine(plan, backend="engine")
                    self.described[kind] = {"plan": "the same plan on the local engine"}
                    continue
                if kind == "fp32":
                    self._start_fp32(profile)
                    continue
                progress(f"loading baseline {kind}")
                self.servers[kind], self.described[kind] = build_baseline(
                    kind, spec, self.threads, cfg.baseline_batch, profile)
        except BaseException:
            self.close()
            raise

    def _engine(self, plan: Plan | None, backend: str | None = None) -> Any:
        cfg = self.cfg
        if (backend or cfg.backend) == "ray":
            from enserve.runtime.ray.engine import RayEngine

            return RayEngine(self.spec, plan, address=cfg.ray_address, max_batch=cfg.max_batch,
                             max_delay_s=cfg.max_delay_s,
                             inflight_batches=cfg.inflight_batches,
                             compiled_graph=cfg.ray_compiled_graph,
                             fast_lane=cfg.ray_fast_lane).start()
        return Engine(self.spec, plan, max_batch=cfg.max_batch, max_delay_s=cfg.max_delay_s,
                      inflight_batches=cfg.inflight_batches, pin=cfg.pin).start()

    def _start_unfused(self, plan: Plan | None) -> None:
        if plan is None or not plan_groups(plan):
            self.notes.append("baseline unfused skipped: the plan uses no fused group")
            self.progress(self.notes[-1])
            return
        unfused = unfuse_plan(plan)
        self.progress("starting baseline unfused (the same plan, fused groups split into "
                      "their members)")
        self.engines["unfused"] = self._engine(unfused)
        self.described["unfused"] = {
            "plan": "the same plan with each fused group split into its members (same "
                    "device and batch size, the group's share split among them, default "
                    "variants)",
            "instances": [{"member": i.member, "variant": i.variant,
                           "batch_size": i.batch_size, "share": i.share}
                          for i in unfused.instances],
        }

    def _start_fp32(self, profile: Any) -> None:
        """Baseline fp32: a second engine running the fp32 plan of the same profile."""
        if profile is None:
            self.notes.append("baseline fp32 skipped: it needs --profile (the fp32 plan is "
                              "planned from it)")
            self.progress(self.notes[-1])
            return
        from enserve.plan.precision import choose_precision

        plan = choose_precision(profile, "fp32", self.cfg.fusion, "greedy").plan
        self.progress("starting baseline fp32 (enserve's own plan with reduced precision "
                      "forbidden)")
        self.engines["fp32"] = self._engine(plan)
        self.described["fp32"] = {
            "plan": "enserve's plan of the same profile with --precision fp32",
            "instances": [{"member": i.member, "variant": i.variant,
                           "batch_size": i.batch_size, "share": i.share}
                          for i in plan.instances],
        }

    def measure(self, cfg: BenchConfig) -> dict[str, Any]:
        """Run every target at `cfg`'s level, interleaved over `cfg.rounds` rounds."""
        targets: dict[str, Target] = {"enserve": engine_target(self.engine)}
        targets.update({k: engine_target(e) for k, e in self.engines.items()})
        targets.update({k: s.infer for k, s in self.servers.items()})
        targets.update(self.remotes)
        results: dict[str, list[LoadResult]] = {name: [] for name in targets}
        stats: dict[str, Any] = {}
        for r in range(cfg.rounds):
            for name, target in targets.items():
                if name == "enserve":
                    self.engine.reset_stats()
                if name in self.remotes:
                    res = run_remote_round(self.remotes[name], self.payloads, cfg.mode,
                                           cfg.concurrency, cfg.rate, cfg.duration_s,
                                           cfg.warmup_s, cfg.seed + r)
                else:
                    res = run_load(target, self.payloads, cfg.mode, cfg.concurrency, cfg.rate,
                                   cfg.duration_s, cfg.warmup_s, cfg.seed + r)
                self.progress(f"[{cfg.mode} {cfg.level():g}] round {r + 1}/{cfg.rounds} "
                              f"{name}: {res.throughput:.2f}/s, p50 "
                              f"{percentiles(res.latencies)['p50_s'] * 1e3:.1f} ms")
                results[name].append(res)
                if name == "enserve":
                    stats = self.engine.stats()  # before the baselines' time dilutes it
        report = _report(self.spec, cfg, results, self.described, stats,
                         self.engine.predicted_throughput, self.engine.configs)
        report["enserve"]["memory"] = self.engine.memory()
        agreement = self._live_agreement()
        if agreement is not None:
            report["enserve"]["live_agreement"] = agreement.as_dict()
            self.progress(f"enserve: {agreement.describe()} (measured now)")
        report["fusion"] = self.fusion
        if self.notes:
            report["notes"] = list(self.notes)
        return report

    def _live_agreement(self) -> LiveAgreement | None:
        """With the fp32 baseline running and a calibration set in the spec: the plan
        under test against the fp32 plan on it, both engines serving."""
        reference = self.engines.get("fp32")
        if reference is None or self.spec.accuracy is None:
            return None
        from enserve.precision.calibration import held_out, load_calibration

        try:  # the rows int8 was not calibrated on, as the profiler's admission
            calibration = held_out(self.spec, load_calibration(self.spec))
        except SpecError as exc:
            self.notes.append(f"live agreement skipped: {exc}")
            return None
        return live_agreement(lambda x: self.engine.infer_sync(x).probabilities,
                              lambda x: reference.infer_sync(x).probabilities,
                              calibration.inputs, calibration.labels, self.cfg.max_batch)

    def close(self) -> None:
        if getattr(self, "engine", None) is not None:
            self.engine.stop()
        for e in getattr(self, "engines", {}).values():
            e.stop()
        for s in getattr(self, "servers", {}).values():
            s.stop()

    def __enter__(self) -> BenchSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_bench(spec: EnsembleSpec, plan: Any, cfg: BenchConfig, profile: Any = None,
              progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure the engine and each baseline at one load level; returns the report dict."""
    with BenchSession(spec, plan, cfg, profile, progress) as session:
        return session.measure(cfg)


def _report(spec: EnsembleSpec, cfg: BenchConfig, results: dict[str, list[LoadResult]],
            described: dict[str, dict[str, Any]], stats: dict[str, Any],
            predicted: float | None, configs: list[Any]) -> dict[str, Any]:
    ens = _merge(results["enserve"])
    ens["predicted_throughput"] = predicted
    ens["prediction_error"] = (ens["throughput"] / predicted - 1.0) if predicted else None
    ens["mean_batch_rows"] = stats["mean_batch_rows"]
    bound = kernel_bound_throughput(stats, len(os.sched_getaffinity(0)))
    ens["kernel_bound_throughput"] = bound
    last = results["enserve"][-1].throughput
    ens["efficiency_vs_kernel_bound"] = last / bound if bound else None
    ens["members"] = stats["members"]
    ens["instances"] = [{"member": c.member, "variant": c.variant, "batch_size": c.batch_size,
                         "share": c.share, "cores": list(c.cores) if c.cores else None}
                        for c in configs]
    baselines = {k: {**_merge(v), **described.get(k, {})}
                 for k, v in results.items() if k != "enserve"}
    ratios, latency_ratios = {}, {}
    for k, v in results.items():
        if k == "enserve":
            continue
        per_round = [e.throughput / b.throughput for e, b in zip(results["enserve"], v,
                                                                  strict=True) if b.throughput]
        ratios[k] = statistics.median(per_round) if per_round else None
        base_p50 = baselines[k]["p50_s"]
        latency_ratios[k] = ens["p50_s"] / base_p50 if base_p50 else None
    return {
        "spec": spec.name,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "config": asdict(cfg),
        "enserve": ens,
        "baselines": baselines,
        "ratios": ratios,
        "latency_ratios": latency_ratios,
    }
