"""What a process tree really holds: RSS, PSS and USS summed over its processes.

RSS counts every page a process maps, so pages shared between processes (libraries,
weights mapped from one file, copy-on-write pages from a fork server) are counted once
per process. PSS (proportional set size) divides each shared page among the processes
that map it, so the PSS of a tree sums to what the tree adds to the machine; USS counts
the pages only one process holds. Read from `/proc/<pid>/smaps_rollup` through psutil.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Generic, TypeVar

import psutil

T = TypeVar("T")


@dataclass(frozen=True)
class TreeMemory:
    """Bytes held by a set of processes (`processes` of them answered)."""

    processes: int
    rss: int
    pss: int
    uss: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _one(proc: psutil.Process) -> tuple[int, int, int] | None:
    try:
        info = proc.memory_full_info()
    except (psutil.Error, OSError):
        return None
    return int(info.rss), int(getattr(info, "pss", info.rss)), int(info.uss)


def pids_memory(pids: Iterable[int]) -> TreeMemory:
    """Summed memory of the given processes (gone ones are skipped)."""
    rss = pss = uss = count = 0
    for pid in set(pids):
        try:
            found = _one(psutil.Process(pid))
        except psutil.Error:
            continue
        if found is None:
            continue
        count += 1
        rss, pss, uss = rss + found[0], pss + found[1], uss + found[2]
    return TreeMemory(count, rss, pss, uss)


_ADOPTED: set[int] = set()
"""Processes of this one's that are no descendants of it: a fork server's spare that took
over after the server died was the dead server's child, so the kernel re-parented it."""


def adopt_root(pid: int) -> None:
    """Count `pid` and its descendants in this process's tree from now on."""
    _ADOPTED.add(pid)


def forget_root(pid: int) -> None:
    _ADOPTED.discard(pid)


def tree_pids(root: int | None = None) -> list[int]:
    """`root` and every live descendant; for this process (the default), also the adopted
    roots' trees (`adopt_root`)."""
    pids = _subtree(os.getpid() if root is None else root)
    if root is None:
        for extra in sorted(_ADOPTED):
            pids += [pid for pid in _subtree(extra) if pid not in pids]
    return pids


def _subtree(root: int) -> list[int]:
    try:
        proc = psutil.Process(root)
        children = proc.children(recursive=True)
    except psutil.Error:
        return []
    return [root] + [c.pid for c in children if _alive(c)]


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def tree_memory(root: int | None = None) -> TreeMemory:
    """Summed memory of `root` (default: this process) and all its descendants."""
    return pids_memory(tree_pids(root))


def mapping_memory(pid: int, path: str) -> tuple[int, int]:
    """(RSS, PSS) bytes of the mappings of file `path` in process `pid` (from smaps)."""
    target = os.path.realpath(path)
    rss = pss = 0
    inside = False
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            head = line.split()
            if not head:
                continue
            if "-" in head[0] and not head[0].endswith(":"):  # a mapping's header line
                inside = len(head) >= 6 and os.path.realpath(head[-1]) == target
            elif inside and head[0] == "Rss:":
                rss += int(head[1]) * 1024
            elif inside and head[0] == "Pss:":
                pss += int(head[1]) * 1024
    return rss, pss


class Sampled(Generic[T]):
    """A reading too costly to take on demand (the smaps of a process tree cost ~100 ms),
    refreshed in a background thread at most every `every_s` seconds. `get()` never waits
    for a refresh: it returns the latest reading and, when that is stale, starts one; only
    the very first reading is taken on the caller's thread."""

    def __init__(self, read: Callable[[], T], every_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self.every_s = every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._latest: tuple[float, T] | None = None
        self._refreshing = False

    def get(self) -> T:
        with self._lock:
            latest = self._latest
            if latest is not None and self._clock() - latest[0] >= self.every_s and not self._refreshing:
                self._refreshing = True
                threading.Thread(target=self._refresh, name="enserve-sampled", daemon=True).start()
        if latest is None:
            value = self._read()
            with self._lock:
                self._latest = (self._clock(), value)
            return value
        return latest[1]

    def _refresh(self) -> None:
        try:
            value = self._read()
            with self._lock:
                self._latest = (self._clock(), value)
        except Exception:  # a failed reading keeps the last one; the next get() retries
            pass
        finally:
            with self._lock:
                self._refreshing = False
