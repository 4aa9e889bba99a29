"""Decoding `/infer` bodies (HTTP, and gRPC messages) without stalling the event loop.

Small bodies are decoded inline, larger ones in a worker thread. The JSON decoder
(`server/jsonscan.py`) parses big tensor data in steps of at most 16 KiB, each one short
hold of the GIL; while a body over `BIG_BYTES` is decoded the interpreter's switch interval
is `BIG_SWITCH_S` (the event loop waits that long, not 5 ms, for the GIL after each poll);
and at most `big_at_once` such bodies are decoded at a time, so the loop competes with one
thread, not eight. (Before, decoder processes ran `json.loads`: the body was copied there,
a 60 MB body became ~0.5 GB of Python objects, and unpickling the result stalled the loop.)
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from enserve.server.codec import decode_infer_request
from enserve.server.limits import Limits
from enserve.server.protocol import InferRequest

T = TypeVar("T")

THREAD_BYTES = 256 * 1024
"""JSON bodies (and outputs) larger than this are decoded (encoded) in a worker thread."""
BIG_BYTES = 4 * 1024 * 1024
"""JSON bodies larger than this wait their turn: `big_at_once` are decoded at a time."""


BIG_SWITCH_S = 0.0005
"""The interpreter's switch interval while a big body is decoded."""
TRIM_AFTER_S = 0.5
"""The heap is trimmed this long after the last big body in flight is done."""


class HeapTrimmer:
    """Counts big bodies in flight; once none is left, gives freed heap back (`release_heap`)."""

    def __init__(self) -> None:
        self.in_flight = 0
        self._pending: set[asyncio.Future[None]] = set()

    @contextlib.contextmanager
    def big_body(self, big: bool) -> Iterator[None]:
        if not big:
            yield
            return
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:  # later: the request's frames and arrays are gone by then
                asyncio.get_running_loop().call_later(TRIM_AFTER_S, self._trim)

    def _trim(self) -> None:
        if self.in_flight == 0:
            future = asyncio.get_running_loop().run_in_executor(None, release_heap)
            self._pending.add(future)
            future.add_done_callback(self._pending.discard)


def _boxed(decode: Callable[..., T], *args: Any) -> list[T]:
    """`[decode(*args)]`: the caller pops the result, so the thread's futures (kept by the
    event loop's callback until the request's task step ends) do not keep the decoded
    arrays alive after the request let go of them and the body budget released them."""
    return [decode(*args)]


class Decoder:
    def __init__(self, big_at_once: int = 1) -> None:
        self._big = asyncio.Semaphore(max(1, big_at_once))
        self.trimmer = HeapTrimmer()

    async def decode(self, model: str, version: str, body: bytes | bytearray, header_length: int | None,
                     limits: Limits, reserve: Callable[[int], None] | None = None) -> InferRequest:
        json_bytes = len(body) if header_length is None else header_length
        return await self.run(json_bytes, decode_infer_request, model, version, body, header_length,
                              limits, reserve)

    async def run(self, size: int, decode: Callable[..., T], *args: Any) -> T:
        """`decode(*args)` for an input of `size` bytes: inline when small, else in a
        worker thread (at most `big_at_once` big ones at a time, at a short switch interval)."""
        if size <= THREAD_BYTES:
            return decode(*args)
        if size <= BIG_BYTES:
            return (await asyncio.to_thread(_boxed, decode, *args)).pop()
        async with self._big:
            usual = sys.getswitchinterval()
            sys.setswitchinterval(min(usual, BIG_SWITCH_S))
            try:
                return (await asyncio.to_thread(_boxed, decode, *args)).pop()
            finally:
                sys.setswitchinterval(usual)

    def close(self) -> None:
        """Nothing to release (kept for the server's drain)."""


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


_LIBC = _libc()


def release_heap() -> None:
    """Give the heap pages freed by a big body back to the OS (glibc keeps them in its
    per-thread arenas otherwise, so RSS would keep each arena's peak). Blocking: call it in
    a thread; ctypes drops the GIL while it runs."""
    if _LIBC is not None:
        with contextlib.suppress(AttributeError):
            _LIBC.malloc_trim(0)
