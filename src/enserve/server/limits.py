"""Request limits and admission control (a bounded number of requests in the server)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from enserve.server.errors import Code, ServerError, forget_frames


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, and how much the server accepts at once."""

    max_body_bytes: int = 64 * 1024 * 1024
    """Largest request body after decompression (HTTP) or message (gRPC)."""
    max_batch: int = 64
    """Largest batch axis of an inference request."""
    max_tensor_elements: int = 16 * 1024 * 1024
    """Largest number of elements in one input tensor."""
    max_pending: int = 128
    """Requests admitted at once (queued + running); beyond it: 503 `server overloaded`."""
    drain_timeout_s: float = 30.0
    """How long shutdown waits for admitted requests to finish."""
    request_timeout_s: float | None = 60.0
    """Deadline of a request that sets no `timeout` of its own (None: none)."""
    body_budget_bytes: int = 256 * 1024 * 1024
    """Bytes of request bodies (HTTP) held at once, with the arrays their JSON tensor data
    decodes to; a body that does not fit gets 503 before it is read (or decoded)."""
    max_header_bytes: int = 64 * 1024
    """Largest request line plus headers (HTTP; else 431)."""
    header_timeout_s: float = 10.0
    """Time a client has to send a request's line and headers (else 408, closed)."""
    body_timeout_s: float = 30.0
    """Longest pause while the server reads a request body (else 408, closed)."""
    max_connections: int = 1024
    """Open HTTP connections per listener; more are answered 503 and closed."""


class BodyBudget:
    """Bytes of request bodies held at once. A body is admitted (its declared size reserved)
    before it is read; a body without a declared size reserves as it arrives; the arrays
    its JSON tensor data decodes to are reserved before they are made. Thread-safe (bodies
    are decoded in threads)."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.held = 0
        self._lock = threading.Lock()

    def reserve(self, nbytes: int) -> None:
        if nbytes <= 0:
            return
        with self._lock:
            if self.held + nbytes > self.budget_bytes:
                raise ServerError(
                    f"server busy: {self.held} bytes of request bodies in flight, {nbytes} more do not "
                    f"fit the budget of {self.budget_bytes}; retry later",
                    Code.UNAVAILABLE,
                )
            self.held += nbytes

    def release(self, nbytes: int) -> None:
        with self._lock:
            self.held = max(0, self.held - nbytes)

    @contextmanager
    def hold(self) -> Iterator[BodyHold]:
        """One request's share; released when the block ends. On an error, the finished
        frames in its traceback (which hold the body and its arrays) are cleared first, so
        the bytes are free when the budget says so, not when the cyclic GC gets to them."""
        hold = BodyHold(self)
        try:
            yield hold
        except BaseException as exc:
            forget_frames(exc)
            raise
        finally:
            self.release(hold.nbytes)


class BodyHold:
    """One request's share of the body budget (grows as its body is read)."""

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.nbytes = 0

    def grow_to(self, nbytes: int) -> None:
        if nbytes > self.nbytes:
            self.budget.reserve(nbytes - self.nbytes)
            self.nbytes = nbytes


class Admission:
    """Counts admitted inference requests and refuses new ones when full or draining."""

    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        self.pending = 0
        self.draining = False

    def check(self) -> None:
        """Raise the 503 `admit` would, without admitting (to refuse before reading a body)."""
        if self.draining or self.pending >= self.max_pending:
            with self.admit():
                pass

    @contextmanager
    def admit(self) -> Iterator[None]:
        if self.draining:
            raise ServerError("server is shutting down; request not accepted", Code.UNAVAILABLE)
        if self.pending >= self.max_pending:
            raise ServerError(
                f"server overloaded: {self.pending} requests pending (limit {self.max_pending}); "
                "retry later",
                Code.UNAVAILABLE,
            )
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1
