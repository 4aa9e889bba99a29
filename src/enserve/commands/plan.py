"""`enserve plan`: choose member instances, devices, batch sizes and shares from a profile."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from enserve.errors import PlanError

DESCRIPTION = (
    "Plan an ensemble: which member instances run on which device, with which batch size, "
    "compute share and variant. Reads a profile (--profile, see docs/planner.md) or profiles "
    "the SPEC on this machine first. Prints the allocation matrix and the predicted "
    "throughput and completion time."
)


def register(sub: Any) -> None:
    from enserve.plan import ALGORITHMS, OBJECTIVES

    p: argparse.ArgumentParser = sub.add_parser(
        "plan", help="plan instances, devices, batch sizes and shares", description=DESCRIPTION)
    p.add_argument("spec", nargs="?", help="ensemble spec to profile first (or use --profile)")
    p.add_argument("--profile", type=Path, help="profile JSON (from `enserve profile`)")
    p.add_argument("--algorithm", choices=ALGORITHMS, default="greedy")
    p.add_argument("--objective", choices=OBJECTIVES, default="throughput")
    p.add_argument("--devices", default=None,
                   help="plan for these devices instead of the profile's: 'detect' (this "
                        "machine), a declaration such as 4xcuda:16GB or cpu:64GB:16, a "
                        "cluster: 4x(8xcuda:80GB), a JSON node list (FILE.json), 'ray' (the "
                        "Ray cluster running here) or ray://ADDRESS (device ids then name "
                        "the node: node-2/cuda:1; docs/scale-out.md)")
    p.add_argument("--max-latency", type=float, default=None, metavar="S",
                   help="bound on the predicted completion time of a batch, seconds")
    p.add_argument("--min-throughput", type=float, default=None, metavar="N",
                   help="samples/s the plan must sustain (useful with --objective latency)")
    p.add_argument("--memory-headroom", type=float, default=0.0, metavar="F",
                   help="fraction of each device's memory to leave free (default 0)")
    p.add_argument("--no-time-sharing", action="store_true",
                   help="shares on a device must sum to at most its compute units")
    p.add_argument("--fusion", choices=("auto", "on", "off"), default="auto",
                   help="use fused groups the profile carries: auto (if predicted better), "
                   "on (always), off (never); default auto")
    p.add_argument("--full-profile", action="store_true",
                   help="with a SPEC: measure every setting (minutes) instead of profiling "
                        "adaptively (measure a few, model the rest, refine what the plan uses)")
    p.add_argument("--budget-s", type=float, default=60.0, metavar="S",
                   help="with a SPEC: the adaptive profiler's time from the start, admission checks "
                        "included; it stops measuring with 13%% of it left, so that the plan "
                        "lands within S (default 60)")
    p.add_argument("--profile-out", type=Path, default=None,
                   help="with a SPEC: also save the profile it planned from")
    p.add_argument("--precision", choices=("auto", "fp32"), default="auto",
                   help="auto: members may run in a reduced precision (bf16, int8, fp16) the "
                        "profile's accuracy check admitted, mixed per member, where it is "
                        "faster; fp32: never (default auto)")
    p.add_argument("--json", action="store_true", help="print the plan JSON instead of a table")
    p.add_argument("--out", type=Path, help="write the plan JSON here")
    p.add_argument("--heatmap", type=Path, help="save the allocation matrix as a PNG")
    p.set_defaults(func=run)


def _devices(text: str | None) -> Any:
    from enserve.cluster import (
        cluster_devices,
        is_cluster_decl,
        load_cluster_file,
        parse_cluster_decl,
    )
    from enserve.devices import detect_devices, parse_device_decl

    if text is None:
        return None
    text = text.strip()
    if text.lower() in ("detect", "auto"):
        return detect_devices()
    if text.lower() == "ray" or text.lower().startswith("ray://"):
        return _ray_devices(None if text.lower() == "ray" else text)
    try:
        if text.lower().endswith(".json"):
            return cluster_devices(load_cluster_file(text))
        if is_cluster_decl(text):
            return cluster_devices(parse_cluster_decl(text))
        return parse_device_decl(text)
    except ValueError as exc:
        raise PlanError(f"--devices: {exc}") from None


def _ray_devices(address: str | None) -> Any:
    from enserve.runtime.ray import ray_available

    reason = ray_available()
    if reason:
        raise PlanError(f"--devices ray: {reason}")
    from enserve.runtime.ray.nodes import devices_from_ray

    try:
        devices = devices_from_ray(address)
    except Exception as exc:
        raise PlanError(f"--devices {address or 'ray'}: cannot read the Ray cluster: "
                        f"{type(exc).__name__}: {exc}") from None
    if not devices:
        raise PlanError(f"--devices {address or 'ray'}: the cluster has no CPU or GPU")
    return devices


def _profile(args: argparse.Namespace, constraints: Any) -> Any:
    from enserve.formats.profile import load_profile, profile_from_dict, save_profile

    if (args.spec is None) == (args.profile is None):
        raise PlanError("give either a SPEC to profile or --profile FILE (not both)")
    if args.profile is not None:
        return load_profile(args.profile)
    if args.budget_s is not None and not args.budget_s > 0:
        raise PlanError(f"--budget-s: {args.budget_s:g} must be positive")
    if args.full_profile:
        from enserve.profiler import profile_spec  # imports torch: only when profiling

        profile = profile_spec(args.spec, progress=not args.json,
                               precision=args.precision)
    else:
        from enserve.profiler.adaptive_run import adaptive_profile_spec

        algorithm = args.algorithm if args.algorithm in ("greedy", "exact") else "greedy"
        data, _, _ = adaptive_profile_spec(args.spec, progress=not args.json,
                                           algorithm=algorithm, objective=args.objective,
                                           constraints=constraints, budget_s=args.budget_s,
                                           precision=args.precision)
        profile = profile_from_dict(data)
    if args.profile_out is not None:
        save_profile(profile, args.profile_out)
    return profile


def run(args: argparse.Namespace) -> int:
    from enserve.plan import Constraints, evaluate, save_plan
    from enserve.plan.precision import choose_precision

    constraints = Constraints(max_latency_s=args.max_latency, min_throughput=args.min_throughput,
                              memory_headroom=args.memory_headroom,
                              time_sharing=not args.no_time_sharing)
    profile = _profile(args, constraints)
    chosen = choose_precision(profile, args.precision, args.fusion, args.algorithm,
                              args.objective, constraints, _devices(args.devices))
    decision, result = chosen.fusion, chosen.plan
    if args.out is not None:
        save_plan(result, args.out)
    if args.heatmap is not None:
        from enserve.plan.render import save_heatmap

        save_heatmap(result, args.heatmap)
    if args.json:
        sys.stdout.write(result.to_json() + "\n")
        return 0
    from rich.console import Console

    from enserve.plan.render import print_plan

    print_plan(result, evaluate(decision.profile or profile, result), Console())
    print(describe_precision(result.precision))
    if args.out is not None:
        print(f"plan written to {args.out}")
    if args.heatmap is not None:
        print(f"heatmap written to {args.heatmap}")
    return 0


def describe_precision(info: Any) -> str:
    """One line: which members run reduced, and the agreement / accuracy measured for it."""
    if not info:
        return "precision: fp32"
    members = info.get("members") or {}
    mix = ", ".join(f"{m} {p}" for m, p in members.items()) or "every member fp32"
    text = f"precision ({info.get('mode')}): {mix}"
    if info.get("top1_agreement") is not None:
        text += (f"; top-1 agreement with the fp32 ensemble {info['top1_agreement']:.2%} on "
                 f"{info.get('calibration_rows')} held-out calibration rows")
    if info.get("accuracy") is not None:
        text += (f"; accuracy {info['accuracy']:.2%} (fp32 {info.get('fp32_accuracy', 0):.2%}, "
                 f"drop {info.get('accuracy_drop', 0) * 100:.2f} pp)")
    if info.get("note"):
        text += f" ({info['note']})"
    return text
