"""Temporary files a server leaves behind when it is killed, and their clean-up.

A process that calls `enter_scratch()` puts every temporary file and folder it and its
libraries make (core-lock folders, multiprocessing's `pymp-*` folder with the fork
server's socket) inside one folder named after it: `<tmp>/enserve-<pid>-<start time>`,
removed at a clean exit. Shared-memory arenas are named `enserve_<pid>_*` already. After a
`kill -9` they stay behind; the next `enter_scratch()` (the next server start) sweeps every
folder and segment whose process is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from multiprocessing.util import Finalize
from pathlib import Path

import psutil

from enserve.runtime.shm import SHM_DIR

log = logging.getLogger("enserve.runtime")
FOLDER = re.compile(r"^enserve-(\d+)-(\d+)$")
SEGMENT = re.compile(r"^enserve[A-Za-z0-9-]*_(\d+)_[0-9a-f]+$")
MAX_FOLDER_CHARS = 64
"""Longest scratch folder path: a Unix socket path inside it (`pymp-*/listener-*`, 37 more
characters) must stay under the kernel's 108."""
_entered: Path | None = None


def _start_time(pid: int) -> int | None:
    try:
        return int(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _alive(pid: int, started: int | None = None) -> bool:
    now = _start_time(pid)
    return now is not None and (started is None or now == started)


def sweep_stale(tmp: str | Path | None = None, shm_dir: str | Path = SHM_DIR) -> list[str]:
    """Remove scratch folders and shared-memory segments of processes that are gone."""
    removed: list[str] = []
    base = Path(tmp or tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for entry in base.iterdir():
            m = FOLDER.match(entry.name)
            if m and not _alive(int(m.group(1)), int(m.group(2))):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(str(entry))
    with contextlib.suppress(OSError):
        for name in os.listdir(shm_dir):
            m = SEGMENT.match(name)
            if m and not _alive(int(m.group(1))):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(shm_dir, name))
                    removed.append(name)
    if removed:
        log.info("removed %d temporary files of killed enserve processes", len(removed))
    return removed


def enter_scratch() -> Path:
    """Sweep what killed servers left, then route this process's temporary files into its
    own scratch folder (idempotent)."""
    global _entered
    if _entered is not None:
        return _entered
    base = Path(tempfile.gettempdir())
    sweep_stale(base)
    pid = os.getpid()
    folder = base / f"enserve-{pid}-{_start_time(pid) or 0}"
    if len(str(folder)) > MAX_FOLDER_CHARS:  # the fork server's socket path would not fit
        log.warning("temporary folder %s is too deep for a scratch folder; temporary files of a "
                    "killed server will not be swept", base)
        _entered = base
        return base
    folder.mkdir(mode=0o700, exist_ok=True)
    tempfile.tempdir = str(folder)
    _entered = folder
    # after multiprocessing's own clean-up of its pymp-* folder (exit priority -100)
    Finalize(None, shutil.rmtree, args=(str(folder), True), exitpriority=-101)
    return folder
