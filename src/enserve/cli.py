"""The `enserve` command line: one sub-command per module in `enserve.commands`."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Iterator, Sequence

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
        importlib.import_module(f"enserve.commands.{name}").register(sub)
    for command in sub.choices.values():
        command.add_argument(
            "--trust-code", metavar="LIST", default=None,
            help="Python code specs may run (python:<module or file.py>:<factory>): comma-separated "
                 "module names, file names as written in specs, absolute paths, or '*' for all. "
                 "Default: none (or $ENSERVE_TRUSTED_CODE)",
        )
    return parser


@contextlib.contextmanager
def json_alone_on_stdout() -> Iterator[None]:
    """For `--json`: while the command runs, file descriptor 1 points at stderr, so native
    libraries' banners and child processes' output cannot mix into the JSON; Python's
    `sys.stdout` (where the command prints its JSON) keeps writing to the real stdout.
    Only when `sys.stdout` is the process's own (not captured, e.g. by a test)."""
    if sys.stdout is not sys.__stdout__ or sys.stdout is None:
        yield
        return
    sys.stdout.flush()
    saved_fd = os.dup(1)
    json_out = open(os.dup(1), "w", encoding="utf-8", closefd=True)  # noqa: SIM115
    os.dup2(2, 1)
    saved, sys.stdout = sys.stdout, json_out
    try:
        yield
    finally:
        json_out.flush()
        sys.stdout = saved
        json_out.close()
        os.dup2(saved_fd, 1)
        os.close(saved_fd)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "trust_code", None) is not None:
        set_trusted(args.trust_code.split(","))
    quiet = json_alone_on_stdout() if getattr(args, "json", False) else contextlib.nullcontext()
    try:
        with quiet:
            return int(args.func(args) or 0)
    except EnserveError as exc:
        print(f"enserve {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
