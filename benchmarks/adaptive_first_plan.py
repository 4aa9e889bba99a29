"""First plan on a new machine: adaptive profile + plan on an empty cache, against the plan
from the full profile. One invocation, side by side.

    python benchmarks/adaptive_first_plan.py [--spec examples/imagenet6] [--budget-s 60]
        [--full-profile benchmarks/results/imagenet6-profile.json] [--bench-duration 15]

1. `adaptive_profile_spec` with a fresh, empty cache folder (admission checks and ONNX
   exports included), the variants, batch sizes and shares of the full profile: wall time
   of profile + plan (split into admission checks, measurements and the rest), settings
   measured vs modelled, variants put off past the budget (screened by the background
   refinement of `enserve serve --refine-profile`).
2. The plan from the full profile (greedy, throughput) and the adaptive plan, both
   evaluated on the full profile: predicted throughput ratio.
3. Both plans executed by the engine (`enserve bench`, closed loop, 16 clients), in
   alternating rounds: measured throughput ratio.

The full profile is a committed one (re-measuring it takes minutes): pass `--full-profile`
to use another. It should come from this machine: its hardware fingerprint is compared with
this machine's and a mismatch is printed (a profile from other hardware predicts nothing
here).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def bench(spec: Path, plan_path: Path, duration: float, out: Path) -> float:
    command = [sys.executable, "-m", "enserve.cli", "bench", str(spec), "--plan", str(plan_path),
               "--concurrency", "16", "--duration", str(duration), "--warmup", "4",
               "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=900)
    data = json.loads(out.read_text())
    return float(_throughput(data))


def _throughput(data: Any) -> float:
    """The engine's samples/s in an `enserve bench --out` file."""
    return float(data["enserve"]["throughput"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "examples" / "imagenet6")
    parser.add_argument("--full-profile", type=Path,
                        default=ROOT / "benchmarks" / "results" / "imagenet6-profile-epyc2.json")
    parser.add_argument("--variants", default="eager,onnx,channels_last,torchscript")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--budget-s", type=float, default=60.0)
    parser.add_argument("--bench-duration", type=float, default=15.0,
                        help="measured seconds per engine run (0: skip the engine runs)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating engine rounds")
    parser.add_argument("--out", type=Path, default=None, help="write the numbers here (JSON)")
    args = parser.parse_args()

    from enserve.formats.plan import save_plan
    from enserve.formats.profile import load_profile, profile_from_dict, save_profile
    from enserve.hardware import current_hardware, hardware_from
    from enserve.plan import evaluate, plan
    from enserve.profiler.adaptive_run import adaptive_profile_spec

    load_at_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="enserve-adaptive-"))
    started = time.monotonic()
    data, result, stats = adaptive_profile_spec(
        args.spec, batch_sizes=[int(b) for b in args.batch_sizes.split(",")],
        variants=args.variants.split(","), cache_dir=work / "cache", budget_s=args.budget_s)
    wall = time.monotonic() - started
    adaptive_profile = profile_from_dict(data)
    save_profile(adaptive_profile, work / "adaptive-profile.json")
    assert result.plan is not None
    adaptive_plan = result.plan
    full = load_profile(args.full_profile)
    made_on = hardware_from(json.loads(args.full_profile.read_text()).get("hardware"))
    if made_on is None or made_on.id != current_hardware().id:
        print(f"WARNING: {args.full_profile} was not profiled on this machine "
              f"({'no fingerprint' if made_on is None else made_on.describe()})")
    full_plan = plan(full, "greedy", "throughput")
    predicted_ratio = evaluate(full, adaptive_plan).throughput / full_plan.predicted.throughput
    out: dict[str, Any] = {
        "profile_and_plan_s": wall,
        "measured_settings": result.measured, "modelled_settings": result.modelled,
        "grid_settings": data["meta"]["adaptive"]["grid_settings"],
        "rounds": len(result.rounds), "converged": result.converged,
        "admission_checks_run": stats.run_checks,
        "admission_checks_s": stats.check_s, "measurements_s": stats.measure_s,
        "deferred_variants": data["meta"]["adaptive"].get("deferred_variants", {}),
        "history": data["meta"]["adaptive"]["history"],
        "adaptive_plan": adaptive_plan.to_dict(), "full_plan": full_plan.to_dict(),
        "predicted_on_full_profile": {"adaptive": evaluate(full, adaptive_plan).throughput,
                                      "full": full_plan.predicted.throughput,
                                      "ratio": predicted_ratio},
    }
    print(f"profile + plan on an empty cache: {wall:.1f} s ({result.measured} settings "
          f"measured, {result.modelled} modelled of {out['grid_settings']}; "
          f"{stats.run_checks} admission checks; {len(result.rounds)} planning rounds, "
          f"{'converged' if result.converged else 'budget spent'})")
    print(f"  admission checks {stats.check_s:.1f} s, measurements {stats.measure_s:.1f} s, "
          f"rest {wall - stats.check_s - stats.measure_s:.1f} s; variants left to the "
          f"background: {out['deferred_variants'] or 'none'}")
    print("  rounds: " + "; ".join(f"{h['reason']} ({len(h['measured'])} measured)"
                                   for h in out["history"]))
    print(f"adaptive plan on the full profile: {predicted_ratio:.3f}x the full profile's plan "
          f"({out['predicted_on_full_profile']['adaptive']:.2f} vs "
          f"{full_plan.predicted.throughput:.2f} samples/s predicted)")
    if args.bench_duration > 0:
        save_plan(adaptive_plan, work / "adaptive-plan.json")
        save_plan(full_plan, work / "full-plan.json")
        measured: dict[str, list[float]] = {"adaptive": [], "full": []}
        for r in range(args.rounds):
            for name in (("adaptive", "full") if r % 2 == 0 else ("full", "adaptive")):
                x = bench(args.spec, work / f"{name}-plan.json", args.bench_duration,
                          work / f"{name}-bench-{r}.json")
                measured[name].append(x)
                print(f"  round {r}: {name} plan {x:.2f} samples/s", flush=True)
        ratio = max(measured["adaptive"]) / max(measured["full"])
        mean = {k: sum(v) / len(v) for k, v in measured.items()}
        out["measured"] = {**measured, "ratio_best": ratio,
                           "ratio_mean": mean["adaptive"] / mean["full"]}
        print(f"measured: adaptive plan {max(measured['adaptive']):.2f} vs full-profile plan "
              f"{max(measured['full']):.2f} samples/s (best of {args.rounds}): {ratio:.3f}x; "
              f"mean of the rounds {mean['adaptive']:.2f} vs {mean['full']:.2f}: "
              f"{mean['adaptive'] / mean['full']:.3f}x")
    load = os.getloadavg()
    out["load_average"] = load
    out["load_average_at_start"] = load_at_start
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"load average at the start: {load_at_start[0]:.2f}, at the end: {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f}; files in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
