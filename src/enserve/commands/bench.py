"""`enserve bench SPEC`: throughput and latency of the engine next to built-in baselines."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from enserve.errors import EnserveError
from enserve.formats.plan import Plan
from enserve.formats.profile import Profile
from enserve.spec import load_spec

SWEEP_BASELINES = ("sequential", "sequential-fast", "naive")
"""What `--sweep` compares against when no `--baseline` is given."""


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "bench",
        help="measure the engine (and baselines) under load",
        description="Drive the engine with closed- or open-loop load; baselines run in the "
                    "same invocation, interleaved, so ratios are side by side.",
    )
    p.add_argument("spec", help="ensemble spec (YAML file or its folder)")
    p.add_argument("--plan", help="plan JSON to execute (default: plan automatically)")
    p.add_argument("--profile", help="profile JSON: plan from it, and pick sequential-fast "
                                     "variants from it")
    p.add_argument("--mode", choices=("closed", "open"), default="closed")
    p.add_argument("--concurrency", type=int, default=8, help="closed loop: clients")
    p.add_argument("--rate", type=float, default=10.0, help="open loop: requests/s (Poisson)")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first")
    p.add_argument("--baseline", action="extend", nargs="+", default=[],
                   choices=("sequential", "sequential-fast", "naive", "unfused", "local-engine",
                            "fp32"),
                   help="baselines to run in the same invocation (unfused: the same plan "
                        "and engine with every fused group split into its members; "
                        "local-engine: with --backend ray, the same plan on the local "
                        "multi-process engine; fp32: enserve's plan of --profile with "
                        "reduced precision forbidden)")
    p.add_argument("--backend", choices=("engine", "ray"), default="engine",
                   help="what runs the plan: the local multi-process engine (default) or Ray "
                        "actors on a cluster (needs enserve[ray]; docs/scale-out.md)")
    p.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help="--backend ray: the cluster (default: the one running on this machine)")
    p.add_argument("--precision", choices=("auto", "fp32"), default=None,
                   help="planning from --profile, or re-planning a foreign --plan: auto lets "
                        "members run in a reduced precision the accuracy check admitted; "
                        "fp32 forbids it (default auto; a re-plan keeps the old plan's mode)")
    p.add_argument("--plan-policy", choices=("reuse", "replan", "fail"), default="replan",
                   help="a --plan made on other hardware (its fingerprint differs from this "
                        "machine's): reuse it, re-plan here (profiles this machine, cached), "
                        "or fail (default replan)")
    p.add_argument("--fusion", choices=("auto", "on", "off"), default="auto",
                   help="fused groups: with --profile, auto keeps the better predicted plan "
                        "of with and without them, on forces them, off excludes them; with "
                        "--plan, off splits the plan's groups; with neither, on fuses the "
                        "largest groups of the spec (default auto)")
    p.add_argument("--url", action="append", default=[], metavar="URL",
                   help="also load a running server serving this spec's model, side by side "
                        "with the in-process engine: http://HOST:PORT or grpc://HOST:PORT "
                        "(repeatable; reported as served-http / served-grpc)")
    p.add_argument("--baseline-batch", type=int, default=8,
                   help="batch size of sequential baselines (8 was their best here)")
    p.add_argument("--threads", type=int, default=0, help="baseline threads (0: every core)")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds (medians)")
    p.add_argument("--max-batch", type=int, default=32, help="engine: largest batch")
    p.add_argument("--max-delay-ms", type=float, default=2.0, help="engine: batching delay")
    p.add_argument("--inflight", type=int, default=2, help="engine: batches in flight")
    p.add_argument("--no-pin", action="store_true",
                   help="engine: let the OS place workers (no core pinning or core locks)")
    p.add_argument("--request-rows", type=int, default=1, help="samples per request")
    p.add_argument("--sweep", action="store_true",
                   help="run a range of levels and plot latency against throughput (with every "
                        "baseline unless --baseline names some)")
    p.add_argument("--levels", help="sweep levels, comma-separated (concurrencies or rates)")
    p.add_argument("--plot", default=None,
                   help="sweep PNG path (default bench-sweep.png); implies --sweep")
    p.add_argument("--policy", choices=("full", "cascade"), default="full",
                   help="cascade: the calibrated cascade of the spec's policy.json next to "
                        "the full ensemble, with accuracy on --data/--labels (default full)")
    p.add_argument("--data", help="with --policy cascade: labelled inputs .npy")
    p.add_argument("--labels", help="with --policy cascade: integer labels .npy")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--out", help="also write the JSON report to this file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from enserve.bench.runner import BenchConfig, run_bench
    from enserve.bench.sweep import default_levels, plot_sweep, run_sweep

    spec = load_spec(args.spec)
    plan = _load_plan(args.plan) if args.plan else None
    profile = _load_profile(args.profile) if args.profile else None
    if plan is not None and not isinstance(plan, dict):
        from enserve.plan_policy import fit_plan

        plan = fit_plan(args.spec, plan, args.plan_policy, where=f"--plan {args.plan}",
                        precision=args.precision)
    elif profile is not None:
        from enserve.plan.precision import choose_precision

        plan = choose_precision(profile, args.precision or "auto", args.fusion,
                                "greedy").plan
    cfg = BenchConfig(
        mode=args.mode, concurrency=args.concurrency, rate=args.rate, duration_s=args.duration,
        warmup_s=args.warmup, baselines=list(dict.fromkeys(args.baseline)),
        baseline_batch=args.baseline_batch, threads=args.threads, rounds=args.rounds,
        max_batch=args.max_batch, max_delay_s=args.max_delay_ms / 1e3,
        request_rows=args.request_rows, inflight_batches=args.inflight, pin=not args.no_pin,
        fusion=args.fusion, urls=list(dict.fromkeys(args.url)),
        backend=args.backend, ray_address=args.ray_address,
    )
    if cfg.backend == "ray":
        from enserve.runtime.ray import ray_available

        reason = ray_available()
        if reason:
            raise EnserveError(f"--backend ray: {reason}")
    if cfg.concurrency < 1 or cfg.rate <= 0 or cfg.duration_s <= 0 or cfg.rounds < 1:
        raise EnserveError("--concurrency, --rate, --duration and --rounds must be positive")

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    report: dict[str, Any]
    if args.policy == "cascade":
        return _run_policy(args, spec, cfg, profile, progress)
    if args.sweep or args.plot:  # asking for a plot is asking for the sweep that draws it
        if not cfg.baselines:  # a sweep is a comparison: draw every baseline unless told
            cfg = replace(cfg, baselines=list(SWEEP_BASELINES))
        levels = ([float(x) for x in args.levels.split(",")] if args.levels
                  else default_levels(cfg))
        report = run_sweep(spec, plan, cfg, levels, profile, progress)
        report["plot"] = str(plot_sweep(report, args.plot or "bench-sweep.png",
                                        f"{spec.name} ({cfg.mode} loop)"))
    else:
        report = run_bench(spec, plan, cfg, profile, progress)
        report["precision"] = dict(getattr(plan, "precision", None) or {})
    text = json.dumps(report, indent=2, default=str)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    if args.json:
        print(text)
    elif "reports" in report:
        for r in report["reports"]:
            _print_table(r)
        print(f"plot: {report['plot']}")
    else:
        _print_table(report)
    return 0


def _print_table(report: dict[str, Any]) -> None:
    cfg = report["config"]
    level = cfg["concurrency"] if cfg["mode"] == "closed" else cfg["rate"]
    print(f"{report['spec']}: {cfg['mode']} loop at {level}, {cfg['duration_s']:g} s x "
          f"{cfg['rounds']} round(s)")
    groups = report.get("fusion", {}).get("groups")
    if groups:
        print(f"fused groups in the plan: {', '.join(groups)}")
    for note in report.get("notes", []):
        print(f"note: {note}")
    print(f"{'target':<16}{'samples/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
          f"{'enserve/x':>10}")
    rows = {"enserve": report["enserve"], **report["baselines"]}
    for name, r in rows.items():
        ratio = report["ratios"].get(name)
        ratio_text = f"{ratio:.2f}x" if ratio else ""
        print(f"{name:<16}{r['throughput']:>10.2f}{r['p50_s'] * 1e3:>9.1f}"
              f"{r['p95_s'] * 1e3:>9.1f}{r['p99_s'] * 1e3:>9.1f}{ratio_text:>10}")
    precision = report.get("precision")
    if precision:
        from enserve.commands.plan import describe_precision

        print(f"enserve {describe_precision(precision)} (measured when planning)")
    live = report["enserve"].get("live_agreement")
    if live:
        from enserve.bench.agreement import LiveAgreement

        print(f"enserve: {LiveAgreement(**live).describe()} (measured in this run)")
    fp32 = report.get("baselines", {}).get("fp32")
    if fp32:
        print("fp32: every member fp32; top-1 agreement with the fp32 ensemble 100% by "
              "definition")
    memory = report["enserve"].get("memory")
    if memory:
        tree, workers = memory["tree"], memory["workers"]
        print(f"memory: process tree ({tree['processes']} processes, baselines included) "
              f"RSS {tree['rss'] / 2**20:.0f} MiB, PSS {tree['pss'] / 2**20:.0f} MiB; "
              f"enserve workers ({workers['processes']}) RSS {workers['rss'] / 2**20:.0f} MiB, "
              f"PSS {workers['pss'] / 2**20:.0f} MiB")
    pred = report["enserve"].get("predicted_throughput")
    if pred:
        print(f"planner predicted {pred:.2f} samples/s; measured/predicted = "
              f"{report['enserve']['throughput'] / pred:.2f}")
    bound = report["enserve"].get("kernel_bound_throughput")
    if bound:
        print(f"at the member compute times measured in this run the cores allow "
              f"{bound:.2f} samples/s; the engine reached "
              f"{report['enserve']['efficiency_vs_kernel_bound']:.0%} of that (last round)")
    for name, ratio in report["ratios"].items():
        if ratio:
            print(f"enserve / {name}: {ratio:.2f}x throughput, "
                  f"{report['latency_ratios'][name]:.2f}x p50 latency")


def _run_policy(args: argparse.Namespace, spec: Any, cfg: Any, profile: Any,
                progress: Any) -> int:
    import numpy as np

    from enserve.bench.policies import print_policy_report, run_policy_bench
    from enserve.policies.policy_file import spec_policy

    if not args.data or not args.labels:
        raise EnserveError("--policy cascade needs --data and --labels (labelled inputs)")
    arrays = []
    for flag, path in (("--data", args.data), ("--labels", args.labels)):
        try:
            arrays.append(np.load(path, allow_pickle=False))
        except (OSError, ValueError) as exc:
            raise EnserveError(f"{flag} {path}: cannot read a .npy array ({exc})") from None
    data, labels = arrays
    if len(data) != len(labels) or labels.ndim != 1:
        raise EnserveError(f"--data has {len(data)} rows, --labels shape {list(labels.shape)}")
    report = run_policy_bench(spec, spec_policy(spec), data, labels, cfg, profile, progress)
    text = json.dumps(report, indent=2, default=str)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    if args.json:
        print(text)
    else:
        print_policy_report(report)
    return 0


def _load_plan(path: str) -> Plan:
    from enserve.formats.plan import load_plan

    return load_plan(path)


def _load_profile(path: str) -> Profile:
    from enserve.formats.profile import load_profile

    return load_profile(path)
