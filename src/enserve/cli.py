"""The `enserve` command line: one sub-command per module in `enserve.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from enserve.errors import EnserveError
from enserve.members.trust import set_trusted

# Each name is a module `enserve.commands.<name>` exposing `register(subparsers)`;
# `register` adds its parser and sets `func(args) -> int` as the default handler.
COMMANDS = ("predict", "demo", "profile", "plan", "calibrate", "bench", "serve", "info")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="enserve",
        description="Serve ensembles of deep neural networks.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"enserve.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"enserve.commands.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    for command in sub.choices.values():
        command.add_argument(
            "--trust-code", metavar="LIST", default=None,
            help="Python code specs may run (python:<module or file.py>:<factory>): comma-separated "
                 "module names, file names as written in specs, absolute paths, or '*' for all. "
                 "Default: none (or $ENSERVE_TRUSTED_CODE)",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "trust_code", None) is not None:
        set_trusted(args.trust_code.split(","))
    try:
        return int(args.func(args) or 0)
    except EnserveError as exc:
        print(f"enserve {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
