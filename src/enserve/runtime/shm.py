"""Shared-memory arenas: fixed slots of tensors written once by one process and read in place
by others.

The engine (parent) creates every segment through `multiprocessing.shared_memory`, so the
resource tracker unlinks them even if the parent is killed. Workers attach by mapping
`/dev/shm/<name>` directly: that keeps them out of the tracker (in Python 3.11 an attaching
`SharedMemory` registers the segment a second time) and leaves the unlink to the owner alone.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np

SHM_DIR = "/dev/shm"
_ALIGN = 64


@dataclass(frozen=True)
class ArrayField:
    """One array per slot: `slots` copies of `shape` (dtype name), laid out back to back."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class ArenaLayout:
    """Where each field of each slot lives in one segment (picklable; sent to workers)."""

    segment: str
    slots: int
    fields: tuple[ArrayField, ...]

    def _offsets(self) -> dict[str, int]:
        offsets, at = {}, 0
        for f in self.fields:
            offsets[f.name] = at
            at += _aligned(f.nbytes) * self.slots
        return offsets

    @property
    def nbytes(self) -> int:
        return max(1, sum(_aligned(f.nbytes) * self.slots for f in self.fields))

    def field(self, name: str) -> ArrayField:
        return next(f for f in self.fields if f.name == name)


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


class Arena:
    """Numpy views onto an arena's slots. `Arena.create` owns (and later unlinks) the
    segment; `Arena.attach` maps an existing one."""

    def __init__(self, layout: ArenaLayout, buffer: memoryview, owner: object) -> None:
        self.layout = layout
        self._buffer = buffer
        self._owner = owner
        self._offsets = layout._offsets()

    @classmethod
    def create(cls, fields: tuple[ArrayField, ...], slots: int, prefix: str = "enserve") -> Arena:
        probe = ArenaLayout("", slots, fields)
        shm = shared_memory.SharedMemory(create=True, size=probe.nbytes, name=_fresh_name(prefix))
        layout = ArenaLayout(shm.name, slots, fields)
        assert shm.buf is not None
        return cls(layout, shm.buf, shm)

    @classmethod
    def attach(cls, layout: ArenaLayout) -> Arena:
        fd = os.open(os.path.join(SHM_DIR, layout.segment), os.O_RDWR)
        try:
            mapped = mmap.mmap(fd, layout.nbytes)
        finally:
            os.close(fd)
        return cls(layout, memoryview(mapped), mapped)

    def view(self, field: str, slot: int) -> np.ndarray:
        """The slot's array for `field` (a writable view, no copy)."""
        f = self.layout.field(field)
        if not 0 <= slot < self.layout.slots:
            raise IndexError(f"slot {slot} outside 0..{self.layout.slots - 1}")
        start = self._offsets[field] + slot * _aligned(f.nbytes)
        return np.ndarray(f.shape, dtype=f.dtype, buffer=self._buffer, offset=start)

    def close(self) -> None:
        """Drop this process's mapping (views must not be used afterwards)."""
        with contextlib.suppress(BufferError, ValueError):
            self._buffer.release()
        if isinstance(self._owner, (shared_memory.SharedMemory, mmap.mmap)):
            with contextlib.suppress(BufferError):
                self._owner.close()

    def unlink(self) -> None:
        """Remove the segment from /dev/shm (owner only; safe to call twice)."""
        if isinstance(self._owner, shared_memory.SharedMemory):
            with contextlib.suppress(FileNotFoundError):
                self._owner.unlink()


def _fresh_name(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{os.urandom(4).hex()}"


def leaked_segments(prefix: str = "enserve") -> list[str]:
    """Segments under /dev/shm whose name starts with `prefix` (for tests and diagnostics)."""
    try:
        return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []
