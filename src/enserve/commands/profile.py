"""`enserve profile SPEC`: measure latency and memory of every way to run every member."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from enserve.errors import ProfileError
from enserve.variants.names import OPT_IN, VARIANTS

T = TypeVar("T")


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "profile",
        help="measure each member's latency and memory per variant, batch size and share",
        description=(
            "Profile every member x variant x device x batch size x share (CPU: pinned cores; "
            "GPU: MPS percentage where an MPS daemon runs) and write a profile JSON for "
            "`enserve plan`. Results are cached, so a second run is instant."
        ),
    )
    p.add_argument("spec", help="ensemble spec (YAML file or its folder)")
    p.add_argument("--out", default="profile.json", help="where to write the profile JSON")
    p.add_argument("--devices", default=None,
                   help="comma-separated device ids to profile (default: all detected)")
    p.add_argument("--batch-sizes", default="1,2,4,8,16,32", help="comma-separated batch sizes")
    p.add_argument("--shares", default=None,
                   help="CPU shares = core counts, comma-separated (default: 1..cores)")
    p.add_argument("--gpu-shares", default=None,
                   help="GPU shares in percent, used only where CUDA MPS runs (default 25,50,100)")
    p.add_argument("--variants", default=None,
                   help=f"comma-separated variants ({', '.join(VARIANTS)}), or 'all' for every "
                        f"exact one (opt-in only by name: {', '.join(sorted(OPT_IN))}); "
                        "default: each member's default variant")
    p.add_argument("--cache-dir", default=None, help="cache folder (default ~/.cache/enserve)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per setting (median kept)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before timing")
    p.add_argument("--max-seconds", type=float, default=20.0,
                   help="stop repeating a setting after this long (at least 3 runs)")
    p.add_argument("--refresh", action="store_true",
                   help="measure again even where the cache has entries (and update it)")
    p.add_argument("--fusion", choices=("auto", "on", "off"), default="auto",
                   help="auto/on: also profile every fusion candidate (members run as one "
                        "fx graph, one vectorized forward or one merged ONNX graph) as a "
                        "member named after the group (on: fail if there is none); off: "
                        "members only (default auto)")
    p.add_argument("--precision", choices=("auto", "fp32"), default="auto",
                   help="auto: with an accuracy section in the spec, also profile the "
                        "reduced-precision variants (bf16, int8, fp16) this machine runs fast, "
                        "admitted by the ensemble's answers on the held-out calibration rows; "
                        "fp32: none (default auto)")
    p.add_argument("--adaptive", action="store_true",
                   help="measure a few settings per member, model the rest (latency vs batch "
                        "size and share) and measure more only where the plan's choice is "
                        "close; entries the model filled carry \"modelled\": true")
    p.add_argument("--budget-s", type=float, default=60.0, metavar="S",
                   help="--adaptive: time from the start, admission checks included; measuring "
                        "stops with 13%% of it left (default 60)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def parse_list(text: str | None, flag: str, convert: Callable[[str], T], what: str) -> list[T] | None:
    """Split a comma-separated flag value; errors name the flag and the bad item."""
    if text is None:
        return None
    items = [item.strip() for item in text.split(",")]
    if not any(items):
        raise ProfileError(f"{flag}: empty list")
    values: list[T] = []
    for item in items:
        try:
            values.append(convert(item))
        except ValueError:
            raise ProfileError(f"{flag}: '{item}' is not {what}") from None
    return values


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(text)
    return value


def _variant(text: str) -> str:
    if text not in VARIANTS:
        raise ValueError(text)
    return text


def parse_variants(text: str | None) -> list[str] | None:
    if text is not None and text.strip() == "all":
        return [v for v in VARIANTS if v not in OPT_IN]
    return parse_list(text, "--variants", _variant, f"a variant (one of {', '.join(VARIANTS)})")


def run(args: argparse.Namespace) -> int:
    from enserve.profiler import profile_spec_dict

    batch_sizes = parse_list(args.batch_sizes, "--batch-sizes", _positive_int,
                             "a positive whole number")
    cpu_shares = parse_list(args.shares, "--shares", _positive_int,
                            "a positive whole number of cores")
    gpu_shares = parse_list(args.gpu_shares, "--gpu-shares", _positive_float, "a percentage")
    shares: dict[str, list[float]] = {}
    if cpu_shares:
        shares["cpu"] = [float(s) for s in cpu_shares]
    if gpu_shares:
        shares["cuda"] = gpu_shares
    devices = parse_list(args.devices, "--devices", str, "a device id")
    if args.repeats < 1:
        raise ProfileError(f"--repeats: {args.repeats} must be at least 1")
    if args.warmup < 0:
        raise ProfileError(f"--warmup: {args.warmup} must be 0 or more")
    if args.adaptive:
        return _run_adaptive(args, batch_sizes, shares, devices)
    data, stats = profile_spec_dict(
        args.spec,
        devices=devices,
        batch_sizes=batch_sizes or (),
        shares=shares or None,
        variants=parse_variants(args.variants),
        cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        progress=not args.no_progress,
        repeats=args.repeats,
        warmup=args.warmup,
        max_seconds=args.max_seconds,
        refresh=args.refresh,
        fusion=args.fusion,
        precision=args.precision,
    )
    from enserve.formats.profile import profile_from_dict, save_profile

    save_profile(profile_from_dict(data), args.out)
    print_summary(data)
    print(f"{len(data['entries'])} entries ({stats.measured_entries} measured, "
          f"{stats.cached_entries} from cache; {stats.run_checks} admission checks run, "
          f"{stats.cached_checks} cached) -> {args.out}")
    return 0


def _run_adaptive(args: argparse.Namespace, batch_sizes: list[int] | None,
                  shares: dict[str, list[float]], devices: list[str] | None) -> int:
    from enserve.formats.profile import profile_from_dict, save_profile
    from enserve.profiler.adaptive_run import (
        ADAPTIVE_MAX_SECONDS,
        ADAPTIVE_REPEATS,
        adaptive_profile_spec,
    )

    if not args.budget_s > 0:
        raise ProfileError(f"--budget-s: {args.budget_s:g} must be positive")
    data, result, _ = adaptive_profile_spec(
        args.spec, devices=devices, batch_sizes=batch_sizes or (), shares=shares or None,
        variants=parse_variants(args.variants),
        cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        progress=not args.no_progress,
        repeats=min(args.repeats, ADAPTIVE_REPEATS), warmup=min(args.warmup, 1),
        max_seconds=min(args.max_seconds, ADAPTIVE_MAX_SECONDS), refresh=args.refresh,
        budget_s=args.budget_s, precision=args.precision)
    save_profile(profile_from_dict(data), args.out)
    print_summary(data)
    print(f"{result.measured} settings measured, {result.modelled} modelled, "
          f"{len(result.rounds)} planning rounds"
          f"{' (converged)' if result.converged else ' (budget spent)'} in "
          f"{result.elapsed_s:.1f} s -> {args.out}")
    deferred = data["meta"]["adaptive"].get("deferred_variants") or {}
    if deferred:
        names = sorted({v for vs in deferred.values() for v in vs})
        print(f"not screened within the budget: {', '.join(names)} (a larger --budget-s, or "
              "`enserve serve --refine-profile`, screens them; docs/profiling.md)")
    return 0


def print_summary(data: dict[str, Any]) -> None:
    """A table of the entries, and any notes (rejected variants, skipped settings)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"profile of {data.get('ensemble', '')}")
    modelled = any(e.get("modelled") for e in data["entries"])
    columns = ["member", "variant", "device", "share", "batch", "latency ms", "memory MB"]
    for column in columns + (["source"] if modelled else []):
        text = column in ("member", "variant")  # long fused-group names wrap, never cut
        table.add_column(column, justify="left" if text else "right",
                         overflow="fold" if text else "ellipsis", no_wrap=not text)
    for e in data["entries"]:
        row = [e["member"], str(e.get("variant")), e["device"], f"{e['share']:g}",
               str(e["batch_size"]), f"{e['latency_s'] * 1e3:.2f}",
               f"{e['memory_bytes'] / 2**20:.1f}"]
        table.add_row(*row, *(["model" if e.get("modelled") else "measured"] if modelled
                              else []))
    console.print(table)
    for note in data.get("meta", {}).get("notes", []):
        console.print(f"note: {note}", markup=False)


__all__ = ["parse_list", "parse_variants", "register", "run"]
