"""Which Python code a spec may run: nothing, unless the operator says so.

A spec's `python:<module>:<factory>` (a `source` or an `architecture`) imports a module and
calls a function: that is running code, so it is refused unless trusted. Trust comes from
the operator, never from the spec: `--trust-code LIST` on the command line, or the
environment variable `ENSERVE_TRUSTED_CODE` (which worker processes inherit). LIST is
comma-separated; each entry is

- `*`: trust every module and file (only for repositories you wrote yourself);
- a module name (`mypkg.models`): that module and its sub-modules;
- a file name as written in specs (`models.py`): that file next to any spec;
- an absolute path: that `.py` file, or every `.py` file under that folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from enserve.errors import SpecError

ENV = "ENSERVE_TRUSTED_CODE"


def trusted_entries() -> list[str]:
    return [e.strip() for e in os.environ.get(ENV, "").split(",") if e.strip()]


def set_trusted(entries: Iterable[str]) -> None:
    """Trust exactly `entries` from now on, in this process and the workers it starts."""
    os.environ[ENV] = ",".join(entries)


def add_trusted(entries: Iterable[str]) -> None:
    """Trust `entries` in addition to what is trusted already."""
    current = trusted_entries()
    set_trusted([*current, *(e for e in entries if e not in current)])


def is_trusted(module_ref: str, resolved: Path | None = None) -> bool:
    """Is `module_ref` (a module name, or a `.py` file as written in a spec that resolved to
    `resolved`) trusted?"""
    for entry in trusted_entries():
        if entry == "*" or entry == module_ref:
            return True
        if resolved is not None and entry.startswith("/"):
            base = Path(entry)
            if resolved == base or resolved.is_relative_to(base):
                return True
        if resolved is None and module_ref.startswith(entry + "."):
            return True
    return False


def require_trusted(module_ref: str, where: str, resolved: Path | None = None) -> None:
    """Raise SpecError unless the operator trusts `module_ref` (see the module doc)."""
    if is_trusted(module_ref, resolved):
        return
    raise SpecError(
        f"{where}: 'python:{module_ref}:…' would run Python code named by the spec; refused because "
        f"it is not trusted. If you trust it, start with --trust-code {module_ref} "
        f"(or set {ENV}={module_ref}; '*' trusts every module and file)"
    )
