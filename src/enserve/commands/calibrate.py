"""`enserve calibrate SPEC --data X.npy --labels Y.npy`: choose a confidence cascade and
write it into the ensemble's `policy.json`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from enserve.errors import EnserveError

DESCRIPTION = (
    "Choose the cascade (member order, per-stage thresholds on max probability or margin) "
    "that minimizes the expected compute per row while the accuracy on the labelled data "
    "stays within --max-accuracy-drop of the full ensemble's. Member costs come from a "
    "profile (--profile, or profile.json beside the spec), else they are measured here. "
    "Writes policy.json beside the spec (or --out)."
)


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "calibrate", help="choose a confidence cascade on labelled data",
        description=DESCRIPTION)
    p.add_argument("spec", help="ensemble spec (YAML file or its folder)")
    p.add_argument("--data", required=True, type=Path, help="inputs .npy [rows, ...]")
    p.add_argument("--labels", required=True, type=Path, help="integer class labels .npy [rows]")
    p.add_argument("--max-accuracy-drop", type=float, default=0.002, metavar="F",
                   help="largest allowed accuracy loss vs the full ensemble, as a fraction "
                        "(default 0.002 = 0.2 percentage points)")
    p.add_argument("--confidence", choices=("auto", "max_prob", "margin"), default="auto",
                   help="confidence measure (auto: whichever gives the cheaper cascade)")
    p.add_argument("--profile", type=Path, default=None,
                   help="profile JSON for member costs (default: profile.json beside the spec)")
    p.add_argument("--default", choices=("cascade", "full"), default="cascade",
                   help="policy for requests that name none (default cascade)")
    p.add_argument("--out", type=Path, default=None, help="policy file (default: SPEC/policy.json)")
    p.add_argument("--json", action="store_true", help="print the policy JSON")
    p.set_defaults(func=run)


def _load_array(path: Path, what: str) -> np.ndarray:
    try:
        return np.asarray(np.load(path, allow_pickle=False))
    except FileNotFoundError:
        raise EnserveError(f"{what} {path}: file not found") from None
    except (OSError, ValueError) as exc:
        raise EnserveError(f"{what} {path}: not a numeric .npy file ({exc})") from None


def member_logits(executor: Any, inputs: dict[str, np.ndarray], batch: int = 256
                  ) -> dict[str, np.ndarray]:
    """Every member's logits on all rows, computed `batch` rows at a time."""
    rows = next(iter(inputs.values())).shape[0]
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, rows, batch):
        chunk = {k: v[start:start + batch] for k, v in inputs.items()}
        for name, logits in executor.member_logits(chunk).items():
            parts.setdefault(name, []).append(np.asarray(logits))
    return {name: np.concatenate(p) for name, p in parts.items()}


def measure_costs(executor: Any, inputs: dict[str, np.ndarray], batch: int = 32,
                  repeats: int = 3) -> dict[str, float]:
    """Seconds per row of each member on this machine (best of `repeats` batches)."""
    chunk = {k: v[:batch] for k, v in inputs.items()}
    rows = next(iter(chunk.values())).shape[0]
    costs = {}
    for m in executor.spec.members:
        x = chunk[executor.spec.input_for(m).name]
        member = executor.members[m.name]
        member(x)  # warm up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            member(x)
            best = min(best, time.perf_counter() - t0)
        costs[m.name] = best / rows
    return costs


def run(args: argparse.Namespace) -> int:
    from enserve.formats.profile import load_profile
    from enserve.policies.calibrate import calibrate, costs_from_profile
    from enserve.policies.cascade import CONFIDENCES, Confidence
    from enserve.policies.policy_file import POLICY_FILE, Policy, save_policy
    from enserve.reference import ReferenceExecutor
    from enserve.result import validate_inputs
    from enserve.spec import load_spec

    spec = load_spec(args.spec)
    data = _load_array(args.data, "--data")
    labels = _load_array(args.labels, "--labels")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise EnserveError(f"--labels {args.labels}: expected integer labels [rows], got "
                           f"{labels.dtype} {list(labels.shape)}")
    if data.shape[0] != labels.shape[0]:
        raise EnserveError(f"--data {args.data} has {data.shape[0]} rows but --labels "
                           f"{args.labels} has {labels.shape[0]}")
    try:
        inputs = validate_inputs(spec, {spec.inputs[0].name: data})
    except EnserveError as exc:
        raise EnserveError(f"--data {args.data}: {exc}") from None
    executor = ReferenceExecutor(spec)
    names = [m.name for m in spec.members]
    profile_path = args.profile or (spec.base_dir / "profile.json")
    if args.profile is not None or profile_path.is_file():
        costs, source = costs_from_profile(load_profile(profile_path), names), str(profile_path)
    else:
        costs, source = measure_costs(executor, inputs), "measured here (reference executor)"
    logits = member_logits(executor, inputs)
    if int(labels.max()) >= next(iter(logits.values())).shape[-1] or int(labels.min()) < 0:
        classes = next(iter(logits.values())).shape[-1]
        raise EnserveError(f"--labels {args.labels}: labels outside the {classes} classes")
    kinds: tuple[Confidence, ...] = (CONFIDENCES if args.confidence == "auto"
                                     else (args.confidence,))
    result = calibrate(spec, logits, labels, costs, args.max_accuracy_drop, kinds)
    out = args.out or (spec.base_dir / POLICY_FILE)
    calibration = result.to_dict() | {"cost_source": source, "data": str(args.data),
                                      "max_accuracy_drop": args.max_accuracy_drop}
    policy = Policy(args.default, result.cascade, result.reach, calibration)
    save_policy(policy, out)
    if args.json:
        print(json.dumps(policy.to_dict(), indent=2))
        return 0
    print(f"{spec.name}: cascade on {result.rows} rows, confidence {result.cascade.confidence}; "
          f"member costs {source}", file=sys.stderr)
    for i, (stage, rate) in enumerate(zip(result.cascade.stages, result.exit_rates, strict=True)):
        threshold = f">= {stage.threshold:.4f}" if stage.threshold <= 1 else "(answers the rest)"
        print(f"  stage {i}: {'+'.join(stage.members):<20} exits {rate:6.1%} of rows {threshold}")
    print(f"  accuracy {result.accuracy:.2%} (full ensemble {result.full_accuracy:.2%}); "
          f"expected compute {result.cost_s * 1e3:.4f} ms/row vs {result.full_cost_s * 1e3:.4f} "
          f"({result.speedup:.2f}x less)")
    print(f"  wrote {out}")
    return 0
