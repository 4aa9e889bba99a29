"""`enserve demo`: the embedded default ensemble, end to end on this machine."""

from __future__ import annotations

import argparse
import time
from typing import Any

from enserve.errors import EnserveError
from enserve.members.trust import add_trusted


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "demo",
        help="evaluate (or retrain) the embedded digits ensemble",
        description="Predict the held-out digits with the embedded default ensemble and "
        "print per-member and ensemble accuracy.",
    )
    p.add_argument("--train", action="store_true", help="retrain the members first (~10 s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from enserve.demo.digits import DEFAULT_SPEC, evaluate, train

    if not DEFAULT_SPEC.is_file():
        raise EnserveError(f"{DEFAULT_SPEC}: the demo spec is missing (run from a source checkout)")
    add_trusted([str(DEFAULT_SPEC.parent / "models.py")])  # the demo's own, shipped code
    console = Console()
    if args.train:
        start = time.perf_counter()
        timings = train(DEFAULT_SPEC)
        console.print(
            f"trained {', '.join(timings)} in {time.perf_counter() - start:.1f} s"
        )
    start = time.perf_counter()
    acc = evaluate(DEFAULT_SPEC)
    elapsed = time.perf_counter() - start
    table = Table(title=f"digits: held-out accuracy ({acc.samples} images, {elapsed:.1f} s)")
    table.add_column("model")
    table.add_column("top-1 accuracy", justify="right")
    for name, value in acc.members.items():
        table.add_row(name, f"{value:.2%}")
    table.add_row("[bold]ensemble[/bold]", f"[bold]{acc.ensemble:.2%}[/bold]")
    console.print(table)
    best_name, best = acc.best_member
    verdict = "beats" if acc.ensemble > best else "does not beat"
    console.print(f"ensemble {verdict} its best member ({best_name}, {best:.2%})")
    return 0
