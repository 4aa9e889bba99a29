"""How good and how fast are the planners? Pure planning: no hardware, no models.

1. greedy vs exact (HiGHS) on random small scenarios (<= 6 members, <= 3 devices):
   distribution of the throughput gap 1 - X_greedy / X_exact, planning times.
2. greedy vs batch-only (and the other algorithms) on the 12x4 and 1x16 scenarios of
   benchmarks/scenarios/: predicted throughput ratio and planning time (also with hard
   shares for 12x4).
3. hard shares (time-sharing disabled, the ESEN / MPS setting): greedy with and without the
   share search vs exact, on the same random scenarios (GPU shares 25/50/100) and on a fine
   share grid (GPU shares 10..100 in steps of 10). Scenarios where no plan with hard shares
   exists (exact says infeasible) are counted apart.

    python benchmarks/planner_quality.py                 # all parts, 60 seeds
    python benchmarks/planner_quality.py --skip-small --skip-heavy --hard-seeds 100 \
        --fine-seeds 60 --exact-cache benchmarks/results/hard-share-optima.json
    python benchmarks/planner_quality.py --seeds 60 --write-reference tests/plan/data/exact_reference.json

`--write-reference` stores the exact plans so that tests/plan can check the greedy against
them without re-solving every integer program.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from enserve.formats.profile import Profile, load_profile
from enserve.plan import Constraints, plan
from enserve.plan.cost import throughput
from enserve.plan.exact import solve_exact
from enserve.plan.greedy import greedy
from enserve.plan.problem import build_problem
from enserve.plan.scenarios import FINE_GPU_SHARES, GPU_SHARES, random_profile

SCENARIOS = Path(__file__).resolve().parent / "scenarios"


def small_scenarios(seeds: int, time_limit: float) -> list[dict[str, Any]]:
    rows = []
    for seed in range(seeds):
        problem = build_problem(random_profile(seed))
        start = time.perf_counter()
        counts = greedy(problem)
        greedy_s = time.perf_counter() - start
        start = time.perf_counter()
        result = solve_exact(problem, time_limit=time_limit, start=counts)
        exact_s = time.perf_counter() - start
        assert result.counts is not None, f"seed {seed}: exact found no plan"
        x_greedy, x_exact = throughput(problem, counts), throughput(problem, result.counts)
        rows.append({
            "seed": seed,
            "members": problem.n_members,
            "devices": problem.n_devices,
            "options": len(problem.options),
            "greedy": x_greedy,
            "exact": x_exact,
            "gap": 1.0 - x_greedy / x_exact,
            "greedy_s": greedy_s,
            "exact_s": exact_s,
            "exact_status": result.status,
            "exact_instances": [problem.options[k].instance().to_dict()
                                for k in np.flatnonzero(result.counts)
                                for _ in range(result.counts[k])],
        })
        print(f"  seed {seed:3d}: {problem.n_members} members, {problem.n_devices} devices, "
              f"gap {100 * rows[-1]['gap']:6.2f}%  greedy {greedy_s:5.2f}s  "
              f"exact {exact_s:5.2f}s ({result.status})", flush=True)
    return rows


def summarize_gaps(rows: list[dict[str, Any]]) -> None:
    gaps = np.array([max(0.0, r["gap"]) for r in rows])
    print(f"\n## greedy vs exact on {len(rows)} random small scenarios\n")
    print("| gap <= | 0.01% | 1% | 2% | 5% | 10% |")
    print("|---|---|---|---|---|---|")
    shares = [(gaps <= t + 1e-12).mean() * 100 for t in (1e-4, 0.01, 0.02, 0.05, 0.10)]
    print("| scenarios | " + " | ".join(f"{s:.0f}%" for s in shares) + " |")
    print(f"\nmean gap {100 * gaps.mean():.2f}%, median {100 * np.median(gaps):.2f}%, "
          f"p90 {100 * np.quantile(gaps, 0.9):.2f}%, max {100 * gaps.max():.2f}%")
    g_times = [r["greedy_s"] for r in rows]
    e_times = [r["exact_s"] for r in rows]
    print(f"planning time: greedy median {statistics.median(g_times):.2f}s (max "
          f"{max(g_times):.2f}s), exact median {statistics.median(e_times):.2f}s (max "
          f"{max(e_times):.2f}s); exact proven optimal in "
          f"{sum(r['exact_status'] == 'Optimal' for r in rows)}/{len(rows)}")


def only_full_share(profile: Profile) -> Profile:
    """The same profile without partial MPS shares (Pochelu's setting: no MPS)."""
    units = {d.id: d.compute_units for d in profile.devices}
    entries = [e for e in profile.entries if e.share >= units[e.device]]
    return profile.model_copy(update={"entries": entries})


def heavy_scenarios() -> list[dict[str, Any]]:
    rows = []
    for name in ("pochelu_12x4", "pochelu_1x16"):
        profile = load_profile(SCENARIOS / f"{name}.json")
        variants = [
            ("batch-only", profile, "batch-only"),
            ("sequential", profile, "sequential"),
            ("shares", profile, "shares"),
            ("greedy", profile, "greedy"),
            ("greedy, no MPS shares", only_full_share(profile), "greedy"),
            ("greedy, hard shares", profile, "greedy hard"),
        ]
        base = None
        print(f"\n## {name}\n")
        print("| algorithm | predicted samples/s | x batch-only | completion time | instances "
              "| planning time |")
        print("|---|---|---|---|---|---|")
        for label, prof, algorithm in variants:
            try:
                hard = algorithm.endswith(" hard")
                result = plan(prof, algorithm.removesuffix(" hard"),
                              constraints=Constraints(time_sharing=not hard))
            except Exception as exc:  # report, don't stop the benchmark
                print(f"| {label} | failed: {exc} | | | | |")
                continue
            x = result.predicted.throughput
            base = x if label == "batch-only" else base
            ratio = x / base if base else float("nan")
            print(f"| {label} | {x:.1f} | {ratio:.2f}x | {1000 * result.predicted.latency_s:.0f} ms "
                  f"| {len(result.instances)} | {result.planning_time_s:.2f} s |")
            rows.append({"scenario": name, "algorithm": label, "throughput": x,
                         "ratio_vs_batch_only": ratio,
                         "latency_s": result.predicted.latency_s,
                         "instances": len(result.instances),
                         "planning_time_s": result.planning_time_s})
    return rows


def hard_share_scenarios(seeds: int, grid: tuple[int, ...], time_limit: float,
                         cache: dict[str, Any]) -> list[dict[str, Any]]:
    """Greedy (with and without the share search) vs exact with time-sharing disabled."""
    from enserve.errors import PlanError

    label = "fine" if grid != GPU_SHARES else "coarse"
    rows = []
    for seed in range(seeds):
        problem = build_problem(random_profile(seed, gpu_shares=grid),
                                constraints=Constraints(time_sharing=False))
        key = f"{label}:{seed}"
        try:
            start = time.perf_counter()
            counts = greedy(problem)
            greedy_s = time.perf_counter() - start
            start = time.perf_counter()
            plain = greedy(problem, share_search_on=False)
            plain_s = time.perf_counter() - start
        except PlanError:
            counts = plain = None
        if key not in cache:
            result = solve_exact(problem, time_limit=time_limit, start=counts)
            cache[key] = {"throughput": None if result.counts is None
                          else throughput(problem, result.counts), "status": result.status}
        x_exact = cache[key]["throughput"]
        if x_exact is None or counts is None or plain is None:
            status = "infeasible" if counts is None and x_exact is None else "unsolved"
            print(f"  {label} seed {seed:3d}: {status} (exact: {cache[key]['status']})")
            rows.append({"seed": seed, "grid": label, "status": status})
            continue
        row = {"seed": seed, "grid": label, "status": cache[key]["status"],
               "members": problem.n_members, "devices": problem.n_devices,
               "gap": 1 - throughput(problem, counts) / x_exact,
               "gap_without_share_search": 1 - throughput(problem, plain) / x_exact,
               "greedy_s": greedy_s, "greedy_without_share_search_s": plain_s}
        rows.append(row)
        print(f"  {label} seed {seed:3d}: {problem.n_members} members, {problem.n_devices} "
              f"devices, gap {100 * row['gap']:6.2f}% (without share search "
              f"{100 * row['gap_without_share_search']:6.2f}%)  greedy {greedy_s:5.2f}s "
              f"(without {plain_s:5.2f}s)", flush=True)
    return rows


def summarize_hard(rows: list[dict[str, Any]], label: str) -> None:
    solved = [r for r in rows if "gap" in r]
    skipped = len(rows) - len(solved)
    print(f"\n## hard shares, {label} grid: greedy vs exact on {len(solved)} scenarios "
          f"({skipped} without a plan with hard shares, or unsolved by exact)\n")
    print("| greedy | >= 0.99 x exact | >= 0.95 x exact | mean gap | worst | median time "
          "| max time |")
    print("|---|---|---|---|---|---|---|")
    for name, column, timing in (("with share search", "gap", "greedy_s"),
                                 ("without (hill climbing only)", "gap_without_share_search",
                                  "greedy_without_share_search_s")):
        gaps = np.array([max(0.0, r[column]) for r in solved])
        times = [r[timing] for r in solved]
        print(f"| {name} | {(gaps <= 0.01 + 1e-12).mean():.0%} | "
              f"{(gaps <= 0.05 + 1e-12).mean():.0%} ({(gaps <= 0.05 + 1e-12).sum()}) | "
              f"{100 * gaps.mean():.2f}% | {100 * gaps.max():.2f}% | "
              f"{statistics.median(times):.2f} s | {max(times):.2f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=60)
    parser.add_argument("--time-limit", type=float, default=120.0, help="per exact solve, s")
    parser.add_argument("--skip-small", action="store_true")
    parser.add_argument("--skip-heavy", action="store_true")
    parser.add_argument("--hard-seeds", type=int, default=60,
                        help="random scenarios with hard shares, GPU shares 25/50/100 (0: skip)")
    parser.add_argument("--fine-seeds", type=int, default=30,
                        help="random scenarios with hard shares, GPU shares 10..100 (0: skip)")
    parser.add_argument("--exact-cache", type=Path,
                        help="JSON file of exact optima for the hard-share scenarios: read, "
                             "extended and written back (exact solves take minutes)")
    parser.add_argument("--json", type=Path, help="write all numbers here")
    parser.add_argument("--write-reference", type=Path,
                        help="store the exact plans (for tests/plan)")
    args = parser.parse_args()
    out: dict[str, Any] = {}
    if not args.skip_small:
        print(f"# greedy vs exact, seeds 0..{args.seeds - 1}")
        rows = small_scenarios(args.seeds, args.time_limit)
        summarize_gaps(rows)
        out["small"] = rows
        if args.write_reference:
            reference = {
                "generator": "enserve.plan.scenarios.random_profile(seed)",
                "written_by": "benchmarks/planner_quality.py --write-reference",
                "scenarios": [{"seed": r["seed"], "throughput": r["exact"],
                               "status": r["exact_status"], "instances": r["exact_instances"]}
                              for r in rows],
            }
            args.write_reference.parent.mkdir(parents=True, exist_ok=True)
            args.write_reference.write_text(json.dumps(reference, indent=1) + "\n")
            print(f"\nwrote {args.write_reference}")
    if not args.skip_heavy:
        out["heavy"] = heavy_scenarios()
    cache: dict[str, Any] = {}
    if args.exact_cache is not None and args.exact_cache.exists():
        cache = json.loads(args.exact_cache.read_text())
    for seeds, grid, label in ((args.hard_seeds, GPU_SHARES, "coarse"),
                               (args.fine_seeds, FINE_GPU_SHARES, "fine")):
        if seeds <= 0:
            continue
        print(f"\n# hard shares, {label} grid, seeds 0..{seeds - 1}")
        rows = hard_share_scenarios(seeds, grid, args.time_limit, cache)
        summarize_hard(rows, label)
        out[f"hard_{label}"] = rows
        if args.exact_cache is not None:
            args.exact_cache.parent.mkdir(parents=True, exist_ok=True)
            args.exact_cache.write_text(json.dumps(cache, indent=0) + "\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
