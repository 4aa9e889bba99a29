"""Transport-free inference requests and responses, and tensor checks both adapters share."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from enserve.datatypes import numpy_dtype
from enserve.server.errors import Code, ServerError
from enserve.server.limits import Limits

Parameters = dict[str, Any]
MAX_RANK = 32
"""Most axes an input tensor may have (numpy's own limit is 64)."""
MAX_TIMEOUT_US = 365 * 24 * 3600 * 10**6
"""Largest `timeout` parameter (one year, in microseconds); larger is a client error."""


def _short(shape: Any) -> str:
    text = str(list(shape))
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass
class RequestedOutput:
    name: str
    binary: bool | None = None
    """HTTP only: per-output `binary_data` (None: use the request-level default)."""


@dataclass
class InferRequest:
    model_name: str
    model_version: str = ""
    id: str = ""
    parameters: Parameters = field(default_factory=dict)
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None
    raw_body: bytes | bytearray | None = None
    """The HTTP "raw binary request" (whole body is the model's single input)."""
    deadline: float | None = None
    """time.monotonic() by which the answer is due (from `timeout` or the gRPC deadline)."""


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: dict[str, np.ndarray]
    parameters: Parameters = field(default_factory=dict)


def tensor_dtype(name: str, datatype: Any) -> np.dtype:
    if datatype == "BYTES":
        raise ServerError(f"input '{name}': BYTES tensors are not supported (inputs are numeric)")
    if not isinstance(datatype, str):
        raise ServerError(f"input '{name}': 'datatype' must be a string")
    try:
        return numpy_dtype(datatype)
    except ValueError as exc:
        raise ServerError(f"input '{name}': {exc}") from None


def tensor_shape(name: str, shape: Any, limits: Limits) -> tuple[int, ...]:
    if not isinstance(shape, list | tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    ):
        raise ServerError(f"input '{name}': 'shape' must be a list of integers, got {shape!r}")
    if any(d < 0 for d in shape):
        raise ServerError(f"input '{name}': shape {list(shape)} has a negative axis")
    if len(shape) > MAX_RANK:
        raise ServerError(f"input '{name}': {len(shape)} axes exceed the limit {MAX_RANK}")
    if any(d > limits.max_tensor_elements for d in shape):  # even with a zero axis elsewhere
        raise ServerError(
            f"input '{name}': an axis of shape {_short(shape)} exceeds the limit "
            f"{limits.max_tensor_elements}"
        )
    elements = math.prod(shape)
    if elements > limits.max_tensor_elements:
        raise ServerError(
            f"input '{name}': {elements} elements exceed the limit {limits.max_tensor_elements}",
            Code.TOO_LARGE,
        )
    return tuple(shape)


def tensor_from_bytes(
    name: str, data: bytes | bytearray | memoryview, dtype: np.dtype, shape: tuple[int, ...]
) -> np.ndarray:
    """A zero-copy view of little-endian raw bytes; the size must match exactly."""
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise ServerError(
            f"input '{name}': {len(data)} bytes of data for shape {list(shape)} "
            f"of {dtype.name} ({expected} bytes expected)"
        )
    arr = np.frombuffer(data, dtype=dtype.newbyteorder("<")).reshape(shape)
    arr.flags.writeable = False  # a view of the request body (a bytearray when big)
    return arr


def tensor_from_list(name: str, data: Any, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """A tensor from JSON `data` (flat or nested, row-major), with type and range checks."""
    if not isinstance(data, list | np.ndarray):
        raise ServerError(f"input '{name}': 'data' must be a list")
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise ServerError(f"input '{name}': 'data' is not a rectangular list of numbers") from None
    if arr.size != math.prod(shape):
        raise ServerError(
            f"input '{name}': {arr.size} values given for shape {list(shape)} ({math.prod(shape)} expected)"
        )
    if arr.size == 0:
        return np.zeros(shape, dtype=dtype)
    if dtype.kind == "b":
        if arr.dtype.kind != "b":
            raise ServerError(f"input '{name}': BOOL data must be true/false")
    elif arr.dtype.kind not in "biuf":
        raise ServerError(f"input '{name}': 'data' must hold numbers, got {arr.dtype.kind!r} values")
    elif dtype.kind in "iu":
        if arr.dtype.kind == "f":
            raise ServerError(f"input '{name}': integer datatype but fractional data")
        info = np.iinfo(dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise ServerError(f"input '{name}': values outside the range of {dtype.name}")
    return arr.astype(dtype, copy=False).reshape(shape)


def timeout_deadline(parameters: Parameters, now: float) -> float | None:
    """The deadline from the `timeout` request parameter (microseconds, as Triton)."""
    timeout = parameters.get("timeout")
    if timeout is None:
        return None
    if (isinstance(timeout, bool) or not isinstance(timeout, int | float)
            or not 0 <= timeout <= MAX_TIMEOUT_US):  # NaN fails this too
        shown = repr(timeout) if len(repr(timeout)) <= 40 else repr(timeout)[:37] + "..."
        raise ServerError(
            "parameter 'timeout' must be a number of microseconds from 0 to "
            f"{MAX_TIMEOUT_US}, got {shown}"
        )
    if timeout == 0:
        return None
    return now + float(timeout) / 1e6
