"""Reading the workers' weight files into the page cache one after another, biggest first.

Each worker asks the kernel to read its own weights ahead only once its session is being
created, ~0.05 s after the engine starts, and its first answer then waits on the disk.
The engine reads them from its start instead, one file after another, the member with
the most weight bytes (a proxy for the longest forward) first. (Measured on a 2-core VM:
reading them from the start is what counts; the order between members made no difference
there, see `docs/status.md`, issue 13.)

The engine calls `start_ordered_read` before forking the workers. Each file is locked
(`flock`, exclusive) until it is read, so a worker's own read-ahead
(`onnx_shared.read_ahead`) sees the lock and leaves the order alone. The reads copy
nothing to user space (`sendfile` to `/dev/null`) and are best effort: a file that cannot
be opened or read is skipped, and the worker's page faults read it instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

CHUNK = 8 << 20


def read_order(groups: Sequence[Sequence[Path]]) -> list[Path]:
    """The files of every group (one group = one member's files), in the order to read
    them: all small model files first (sessions are created from them), then each group's
    biggest file, biggest group first (ties keep the given order)."""
    def size(p: Path) -> int:
        try:
            return p.stat().st_size
        except OSError:
            return -1

    sized = [[(size(p), p) for p in g] for g in groups]
    sized = [[sp for sp in g if sp[0] >= 0] for g in sized]
    heads: list[Path] = []
    bodies: list[tuple[int, int, Path]] = []
    for i, g in enumerate(sized):
        if not g:
            continue
        big = max(g, key=lambda sp: sp[0])
        heads += [p for s, p in g if p != big[1]]
        bodies.append((-sum(s for s, _ in g), i, big[1]))
    seen: set[Path] = set()
    ordered = []
    for p in heads + [p for _, _, p in sorted(bodies)]:
        if p not in seen:
            seen.add(p)
            ordered.append(p)
    return ordered


def read_whole(fd: int) -> None:
    """Bring the file behind `fd` into the page cache, blocking until it is there."""
    size = os.fstat(fd).st_size
    with open(os.devnull, "wb") as null:
        offset = 0
        while offset < size:
            sent = os.sendfile(null.fileno(), fd, offset, min(CHUNK, size - offset))
            if sent <= 0:
                break
            offset += sent


class OrderedRead:
    """Files locked now and read one after another by a daemon thread."""

    def __init__(self, files: Sequence[Path], read: Callable[[int], None] | None = None) -> None:
        self._read = read or read_whole
        self._fds: list[int] = []
        _live.add(self)
        for p in files:
            with contextlib.suppress(OSError):
                fd = os.open(p, os.O_RDONLY)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:  # being read by someone else already
                    os.close(fd)
                    continue
                self._fds.append(fd)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="enserve-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._fds:
                    return
                fd = self._fds[0]
            with contextlib.suppress(OSError):
                self._read(fd)
            with self._lock:
                if self._fds and self._fds[0] == fd:
                    self._fds.pop(0)
                    os.close(fd)  # closing drops the lock

    def wait(self, timeout_s: float | None = None) -> bool:
        """Whether every file has been read (waiting up to `timeout_s`)."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def close(self, timeout_s: float = 1.0) -> None:
        """Stop after the file being read; unlock and close the rest."""
        with self._lock:
            rest, self._fds = self._fds[1:], self._fds[:1]
        for fd in rest:
            os.close(fd)
        self._thread.join(timeout_s)


def _drop_in_child() -> None:
    """A forked child (the engine's `start_method="fork"`) closes its copies of the
    readers' descriptors: a `flock` lasts while any copy is open, so a child keeping them
    would hold the locks after the engine's reader let them go, and a worker waiting for
    its files (`wait_until_read`) would wait on itself."""
    for reader in list(_live):
        for fd in reader._fds:  # no lock taken: the reader thread does not exist here
            with contextlib.suppress(OSError):
                os.close(fd)
        reader._fds = []


_live: weakref.WeakSet[OrderedRead] = weakref.WeakSet()
os.register_at_fork(after_in_child=_drop_in_child)


def wait_until_read(paths: Sequence[Path]) -> None:
    """Block until the engine's reader is done with each of `paths` (it holds an exclusive
    lock on a file until the file is read; a file nobody reads returns at once). A worker
    calls this before its first batch, outside its core lock: page faults on weights still
    on disk would otherwise stall the core the lock reserves for it."""
    for p in paths:
        with contextlib.suppress(OSError):
            fd = os.open(p, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
            finally:
                os.close(fd)  # drops the shared lock


def start_ordered_read(groups: Sequence[Sequence[Path]]) -> OrderedRead:
    """Lock the files of `groups` and start reading them in `read_order`."""
    return OrderedRead(read_order(groups))
