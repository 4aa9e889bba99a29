"""Request limits and admission control (a bounded number of requests in the server)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from enserve.server.errors import Code, ServerError


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


class Admission:
    """Counts admitted inference requests and refuses new ones when full or draining."""

    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        self.pending = 0
        self.draining = False

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
