"""What a process tree really holds: RSS, PSS and USS summed over its processes.

RSS counts every page a process maps, so pages shared between processes (libraries,
weights mapped from one file, copy-on-write pages from a fork server) are counted once
per process. PSS (proportional set size) divides each shared page among the processes
that map it, so the PSS of a tree sums to what the tree adds to the machine; USS counts
the pages only one process holds. Read from `/proc/<pid>/smaps_rollup` through psutil.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import psutil


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


def tree_pids(root: int | None = None) -> list[int]:
    """`root` (default: this process) and every live descendant."""
    root = os.getpid() if root is None else root
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
