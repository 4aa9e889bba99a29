"""Protocol errors: one table maps every error kind to its HTTP status and gRPC code, so both
adapters answer alike and the status says whose fault it is.

| kind | HTTP | gRPC | meaning |
|---|---|---|---|
| BAD_REQUEST | 400 | INVALID_ARGUMENT | malformed or invalid input: the client's fault |
| UNAUTHORIZED | 401 | UNAUTHENTICATED | repository endpoints without the bearer token |
| NOT_FOUND | 404 | NOT_FOUND | no such model |
| TOO_LARGE | 413 | RESOURCE_EXHAUSTED | body, tensor or batch over a limit |
| UNSUPPORTED_ENCODING | 415 | INVALID_ARGUMENT | Content-Encoding other than gzip/deflate |
| HEADERS_TOO_LARGE | 431 | RESOURCE_EXHAUSTED | request headers over the limit |
| INTERNAL | 500 | INTERNAL | a member or worker failed on valid input: the server's fault |
| UNAVAILABLE | 503 + Retry-After | UNAVAILABLE | loading, unloading, draining, overloaded, no worker now |
| TIMEOUT | 504 | DEADLINE_EXCEEDED | the request's deadline passed |

Error messages never carry an absolute filesystem path (`public_message`).
"""

from __future__ import annotations

import re
import traceback
from enum import Enum

from enserve.errors import (
    DeadlineError,
    EnserveError,
    InferenceError,
    MemberFailedError,
    UnavailableError,
)

RETRY_AFTER_S = 1
"""The `Retry-After` a 503 answer carries (seconds)."""


class Code(Enum):
    """An error kind with its HTTP status and gRPC status-code name."""

    BAD_REQUEST = (400, "INVALID_ARGUMENT")
    UNAUTHORIZED = (401, "UNAUTHENTICATED")
    NOT_FOUND = (404, "NOT_FOUND")
    TOO_LARGE = (413, "RESOURCE_EXHAUSTED")
    UNSUPPORTED_ENCODING = (415, "INVALID_ARGUMENT")
    TOO_MANY = (429, "RESOURCE_EXHAUSTED")
    HEADERS_TOO_LARGE = (431, "RESOURCE_EXHAUSTED")
    INTERNAL = (500, "INTERNAL")
    UNAVAILABLE = (503, "UNAVAILABLE")
    TIMEOUT = (504, "DEADLINE_EXCEEDED")

    @property
    def http_status(self) -> int:
        return self.value[0]

    @property
    def grpc_name(self) -> str:
        return self.value[1]


# An absolute POSIX path: a "/" not preceded by a word character, then one or more segments.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~/-])(/[\w.@+~-]+)+/?")


def public_message(message: str) -> str:
    """`message` with every absolute path cut to its last component (`/a/b/c.yaml` → `c.yaml`):
    error bodies tell what went wrong without showing the server's file layout."""

    def last(match: re.Match[str]) -> str:
        path = match.group(0).rstrip("/")
        return path.rsplit("/", 1)[-1] or "/"

    return _ABSOLUTE_PATH.sub(last, message)


class ServerError(EnserveError):
    """An error answered to a client: `{"error": message}` with `code`'s status."""

    def __init__(self, message: str, code: Code = Code.BAD_REQUEST) -> None:
        message = public_message(message)
        super().__init__(message)
        self.message = message
        self.code = code

    def __reduce__(self) -> tuple[type[ServerError], tuple[str, Code]]:  # keeps the code across processes
        return type(self), (self.message, self.code)


_KINDS: tuple[tuple[type[BaseException], Code], ...] = (
    (UnavailableError, Code.UNAVAILABLE),  # includes OverloadedError
    (MemberFailedError, Code.INTERNAL),
    (DeadlineError, Code.TIMEOUT),
    (TimeoutError, Code.TIMEOUT),
    (InferenceError, Code.BAD_REQUEST),
    (EnserveError, Code.BAD_REQUEST),
)


def as_server_error(exc: BaseException) -> ServerError:
    """Map any exception raised while answering a request onto a client-facing error."""
    if isinstance(exc, ServerError):
        return exc
    for kind, code in _KINDS:
        if isinstance(exc, kind):
            return ServerError(str(exc), code)
    return ServerError(f"internal error: {type(exc).__name__}: {exc}", Code.INTERNAL)


def forget_frames(exc: BaseException) -> None:
    """Drop the locals of the finished frames `exc` (and the exceptions it was raised from
    or during) went through: a request body and the arrays decoded from it are freed now,
    not when the cyclic GC finds the exception's traceback. Frames still running (the
    caller's and those above it) are left alone."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        current = current.__cause__ or current.__context__
