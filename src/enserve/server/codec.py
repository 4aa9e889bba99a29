"""The HTTP body of `/infer`: v2 JSON plus the binary tensor extension, to and from numpy."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from enserve.datatypes import v2_datatype
from enserve.server import jsonscan
from enserve.server.errors import ServerError
from enserve.server.limits import Limits
from enserve.server.protocol import (
    InferRequest,
    InferResponse,
    RequestedOutput,
    tensor_dtype,
    tensor_from_bytes,
    tensor_from_list,
    tensor_shape,
)

HEADER_LENGTH = "Inference-Header-Content-Length"


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ServerError(f"{what} must be a JSON object")
    return value


def decode_infer_request(
    model_name: str, model_version: str, body: bytes | bytearray, header_length: int | None, limits: Limits,
    reserve: Callable[[int], None] | None = None,
) -> InferRequest:
    """Parse an `/infer` body. `header_length` is the `Inference-Header-Content-Length`
    value (None: the whole body is JSON; 0: a raw binary request). Big JSON tensor data is
    parsed straight into arrays; `reserve(nbytes)` is told their total size first (it may
    refuse by raising)."""
    request = InferRequest(model_name=model_name, model_version=model_version)
    if header_length == 0:
        request.raw_body = body
        return request
    if header_length is not None and not 0 <= header_length <= len(body):
        raise ServerError(f"{HEADER_LENGTH} {header_length} is outside the body ({len(body)} bytes)")
    view = memoryview(body)
    header = _object(jsonscan.loads(body, header_length), "the request")
    request_id = header.get("id", "")
    if not isinstance(request_id, str):
        raise ServerError("'id' must be a string")
    request.id = request_id
    budget = [jsonscan.OTHER_NUMBERS_LIMIT]  # big numeric arrays outside the inputs' data
    binary = view[header_length:] if header_length is not None else view[:0]
    try:
        request.parameters = _object(jsonscan.materialize(header.get("parameters"), budget), "'parameters'")
        outputs = jsonscan.materialize(header.get("outputs"), budget)
        request.inputs = _decode_inputs(header.get("inputs"), binary, limits, reserve, budget)
    except RecursionError:
        raise ServerError("request body is not valid JSON: nested too deeply") from None
    request.outputs = _decode_outputs(outputs)
    return request


def _decode_inputs(inputs: Any, binary: memoryview, limits: Limits,
                   reserve: Callable[[int], None] | None, budget: list[int]) -> dict[str, np.ndarray]:
    if not isinstance(inputs, list) or not inputs:
        raise ServerError("'inputs' must be a non-empty list")
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    decoded_bytes = 0
    for i, tensor in enumerate(inputs):
        tensor = _object(tensor, f"inputs[{i}]")
        tensor = {k: v if k == "data" else jsonscan.materialize(v, budget) for k, v in tensor.items()}
        name = tensor.get("name")
        if not isinstance(name, str):
            raise ServerError(f"inputs[{i}]: 'name' must be a string")
        if name in arrays:
            raise ServerError(f"input '{name}' is given twice")
        dtype = tensor_dtype(name, tensor.get("datatype"))
        shape = tensor_shape(name, tensor.get("shape"), limits)
        params = _object(tensor.get("parameters"), f"input '{name}': 'parameters'")
        size = params.get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ServerError(f"input '{name}': 'binary_data_size' must be a non-negative integer")
            if offset + size > len(binary):
                raise ServerError(
                    f"input '{name}': binary data truncated ({len(binary) - offset} bytes left, "
                    f"{size} declared)"
                )
            arrays[name] = tensor_from_bytes(name, binary[offset : offset + size], dtype, shape)
            offset += size
        elif "data" in tensor:
            data = tensor["data"]
            if jsonscan.has_numbers(data):
                decoded_bytes += math.prod(shape) * dtype.itemsize
                if reserve is not None:
                    reserve(decoded_bytes)
                data = _big_data(name, data, dtype, shape)
            arrays[name] = tensor_from_list(name, data, dtype, shape)
        else:
            raise ServerError(f"input '{name}': neither 'data' nor 'binary_data_size' given")
    if offset != len(binary):
        raise ServerError(f"{len(binary) - offset} bytes of binary data follow the last tensor")
    return arrays


def _big_data(name: str, data: Any, dtype: np.dtype, shape: tuple[int, ...] | None) -> Any:
    """`data` with each `Numbers` span parsed into a typed 1-D array (flat data straight
    into the tensor's buffer, of `shape`)."""
    def to_array(values: list[Any]) -> np.ndarray:
        return tensor_from_list(name, values, dtype, (len(values),))

    if isinstance(data, jsonscan.Numbers):
        out = None if shape is None else np.empty(math.prod(shape), dtype)
        return jsonscan.numbers(name, data, to_array, out)
    if isinstance(data, list):
        return [_big_data(name, v, dtype, None) for v in data]
    return data


def _decode_outputs(outputs: Any) -> list[RequestedOutput] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise ServerError("'outputs' must be a list")
    requested = []
    for i, out in enumerate(outputs):
        out = _object(out, f"outputs[{i}]")
        name = out.get("name")
        if not isinstance(name, str):
            raise ServerError(f"outputs[{i}]: 'name' must be a string")
        params = _object(out.get("parameters"), f"output '{name}': 'parameters'")
        if "classification" in params:
            raise ServerError(f"output '{name}': the classification extension is not supported; "
                              "ask for 'top_k_indices' and 'top_k_scores'")
        binary = params.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise ServerError(f"output '{name}': 'binary_data' must be true or false")
        requested.append(RequestedOutput(name, binary))
    return requested


def encode_infer_response(
    response: InferResponse, request: InferRequest
) -> tuple[bytes, int | None]:
    """The response body and, when some output is binary, its JSON header length."""
    default_binary = request.raw_body is not None or bool(request.parameters.get("binary_data_output"))
    per_output = {o.name: o.binary for o in request.outputs or []}
    blobs: list[bytes] = []
    tensors = []
    for name, arr in response.outputs.items():
        entry: dict[str, Any] = {
            "name": name,
            "datatype": v2_datatype(arr.dtype),
            "shape": list(arr.shape),
        }
        binary = per_output.get(name)
        if binary is None:
            binary = default_binary
        if binary:
            blob = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = arr.reshape(-1).tolist()
        tensors.append(entry)
    header: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        header["id"] = response.id
    if response.parameters:
        header["parameters"] = response.parameters
    header["outputs"] = tensors
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    if not blobs:
        return header_bytes, None
    return b"".join([header_bytes, *blobs]), len(header_bytes)
