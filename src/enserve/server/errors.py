"""Protocol errors: each carries its HTTP status and gRPC code, so both adapters answer alike."""

from __future__ import annotations

from enum import Enum

from enserve.errors import EnserveError, InferenceError, OverloadedError


class Code(Enum):
    """An error kind with its HTTP status and gRPC status-code name."""

    BAD_REQUEST = (400, "INVALID_ARGUMENT")
    UNAUTHORIZED = (401, "UNAUTHENTICATED")
    NOT_FOUND = (404, "NOT_FOUND")
    CONFLICT = (409, "FAILED_PRECONDITION")
    TOO_LARGE = (413, "RESOURCE_EXHAUSTED")
    UNSUPPORTED_ENCODING = (415, "INVALID_ARGUMENT")
    TOO_MANY = (429, "RESOURCE_EXHAUSTED")
    INTERNAL = (500, "INTERNAL")
    UNAVAILABLE = (503, "UNAVAILABLE")
    TIMEOUT = (504, "DEADLINE_EXCEEDED")

    @property
    def http_status(self) -> int:
        return self.value[0]

    @property
    def grpc_name(self) -> str:
        return self.value[1]


class ServerError(EnserveError):
    """An error answered to a client: `{"error": message}` with `code`'s status."""

    def __init__(self, message: str, code: Code = Code.BAD_REQUEST) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def as_server_error(exc: BaseException) -> ServerError:
    """Map any exception raised while answering a request onto a client-facing error."""
    if isinstance(exc, ServerError):
        return exc
    if isinstance(exc, OverloadedError):
        return ServerError(str(exc), Code.UNAVAILABLE)
    if isinstance(exc, InferenceError | EnserveError):
        return ServerError(str(exc), Code.BAD_REQUEST)
    return ServerError(f"internal error: {type(exc).__name__}: {exc}", Code.INTERNAL)
