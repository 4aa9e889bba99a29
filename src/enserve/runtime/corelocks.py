"""Per-core locks that time-share a core between the instances pinned to it.

They are `flock` locks on one file per core: the kernel drops a lock when its holder dies,
so a killed worker can never leave a core locked (a semaphore would stay taken).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence


def create_lock_dir(cores: Sequence[int]) -> str:
    """A fresh folder holding one lock file per core (remove it with `remove_lock_dir`)."""
    folder = tempfile.mkdtemp(prefix="enserve-cores-")
    for core in cores:
        with open(os.path.join(folder, f"core{core}"), "w"):
            pass
    return folder


def remove_lock_dir(folder: str | None) -> None:
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


class CoreLocks:
    """The locks of a set of cores, opened in this process; `hold()` takes them all."""

    def __init__(self, folder: str | None, cores: Sequence[int]) -> None:
        self._fds: list[int] = []
        if folder:
            for core in sorted(set(cores)):
                path = os.path.join(folder, f"core{core}")
                if os.path.exists(path):
                    self._fds.append(os.open(path, os.O_RDWR))

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Hold every lock (taken in core order, so two instances cannot deadlock)."""
        taken = []
        try:
            for fd in self._fds:
                fcntl.flock(fd, fcntl.LOCK_EX)
                taken.append(fd)
            yield
        finally:
            for fd in reversed(taken):
                fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []
