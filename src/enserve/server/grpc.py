"""The gRPC adapter: `inference.GRPCInferenceService` on grpc.aio, translating to the DataPlane.

It uses the protobuf and service modules generated inside the installed `tritonclient`
package, so the wire format is exactly the one `tritonclient.grpc` speaks.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
import numpy as np
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from tritonclient.grpc import model_config_pb2 as config_pb2
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from enserve.datatypes import v2_datatype
from enserve.server.dataplane import DataPlane
from enserve.server.decoding import THREAD_BYTES
from enserve.server.errors import ServerError, as_server_error
from enserve.server.limits import Limits
from enserve.server.protocol import (
    InferRequest,
    InferResponse,
    Parameters,
    RequestedOutput,
    tensor_dtype,
    tensor_from_bytes,
    tensor_shape,
)

T = TypeVar("T")
Context = Any  # grpc.aio.ServicerContext (untyped in grpcio)

_TYPED_CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
    "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


async def _abort(context: Context, exc: BaseException) -> NoReturn:
    error = as_server_error(exc)
    await context.abort(getattr(grpc.StatusCode, error.code.grpc_name), error.message)
    raise AssertionError("unreachable")  # context.abort raises


def _parameters(params: Any) -> Parameters:
    out: Parameters = {}
    for key, value in params.items():
        kind = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, kind) if kind else None
    return out


def decode_request(message: pb.ModelInferRequest, limits: Limits) -> InferRequest:
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise ServerError(f"{len(raw)} raw_input_contents for {len(message.inputs)} inputs")
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(message.inputs):
        name = tensor.name
        if name in inputs:
            raise ServerError(f"input '{name}' is given twice")
        dtype = tensor_dtype(name, tensor.datatype)
        shape = tensor_shape(name, list(tensor.shape), limits)
        if raw:
            inputs[name] = tensor_from_bytes(name, raw[i], dtype, shape)
        else:
            field = _TYPED_CONTENTS.get(tensor.datatype)
            if field is None:
                raise ServerError(f"input '{name}': {tensor.datatype} must be sent in raw_input_contents")
            values = getattr(tensor.contents, field)
            if len(values) != math.prod(shape):
                raise ServerError(f"input '{name}': {len(values)} values for shape {list(shape)}")
            inputs[name] = _typed_array(values, dtype).reshape(shape)
    if not inputs:
        raise ServerError("the request has no inputs")
    outputs = [RequestedOutput(o.name) for o in message.outputs] or None
    return InferRequest(
        model_name=message.model_name, model_version=message.model_version, id=message.id,
        parameters=_parameters(message.parameters), inputs=inputs, outputs=outputs,
    )


TYPED_STEP = 16384
"""Values of a typed-contents field copied per step (each step one short hold of the GIL)."""


def _typed_array(values: Any, dtype: np.dtype[Any]) -> np.ndarray:
    """A protobuf repeated field as an array, copied in steps: `np.asarray` on the field
    holds the GIL for the whole copy (about 1 s for 4 M values)."""
    out = np.empty(len(values), dtype=dtype)
    for start in range(0, len(values), TYPED_STEP):
        out[start:start + TYPED_STEP] = values[start:start + TYPED_STEP]
    return out


def payload_bytes(message: pb.ModelInferRequest) -> int:
    """About how many bytes of tensor data `message` carries (cheap: no copy)."""
    raw = sum(len(b) for b in message.raw_input_contents)
    typed = 0
    for tensor in message.inputs:
        field = _TYPED_CONTENTS.get(tensor.datatype)
        if field is not None:
            typed += 8 * len(getattr(tensor.contents, field))
    return raw + typed


def _set_parameter(param: Any, value: Any) -> None:
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    else:
        param.string_param = str(value)


def encode_response(response: InferResponse) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    for key, value in response.parameters.items():
        _set_parameter(message.parameters[key], value)
    for name, arr in response.outputs.items():
        message.outputs.add(name=name, datatype=v2_datatype(arr.dtype), shape=list(arr.shape))
        message.raw_output_contents.append(
            np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
        )
    return message


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def _guard(self, context: Context, action: Callable[[], Awaitable[T]]) -> T:
        try:
            return await action()
        except Exception as exc:
            await _abort(context, exc)

    def _authorize(self, context: Context) -> None:
        metadata = dict(context.invocation_metadata() or ())
        self.plane.authorize(metadata.get("authorization"))

    async def ServerLive(self, request: Any, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.plane.live())

    async def ServerReady(self, request: Any, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.plane.ready())

    async def ModelReady(self, request: Any, context: Context) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version))

    async def ServerMetadata(self, request: Any, context: Context) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**self.plane.server_metadata())

    async def ModelMetadata(self, request: Any, context: Context) -> pb.ModelMetadataResponse:
        async def action() -> pb.ModelMetadataResponse:
            meta = self.plane.model_metadata(request.name, request.version)
            return json_format.ParseDict(meta, pb.ModelMetadataResponse())
        return await self._guard(context, action)

    async def ModelConfig(self, request: Any, context: Context) -> pb.ModelConfigResponse:
        async def action() -> pb.ModelConfigResponse:
            config = self.plane.model_config(request.name, request.version)
            parsed = json_format.ParseDict(config, config_pb2.ModelConfig(), ignore_unknown_fields=True)
            return pb.ModelConfigResponse(config=parsed)
        return await self._guard(context, action)

    async def ModelStatistics(self, request: Any, context: Context) -> pb.ModelStatisticsResponse:
        async def action() -> pb.ModelStatisticsResponse:
            stats = self.plane.statistics(request.name, request.version)
            return json_format.ParseDict(stats, pb.ModelStatisticsResponse(), ignore_unknown_fields=True)
        return await self._guard(context, action)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        async def action() -> pb.ModelInferResponse:
            with self.plane.refusals_counted(request.model_name):
                infer_request = await self.plane.decoder.run(
                    payload_bytes(request), decode_request, request, self.plane.limits)
            remaining = context.time_remaining()
            if remaining is not None:
                infer_request.deadline = time.monotonic() + remaining
            return encode_response(await self.plane.infer(infer_request))
        return await self._guard(context, action)

    async def RepositoryIndex(self, request: Any, context: Context) -> pb.RepositoryIndexResponse:
        async def action() -> pb.RepositoryIndexResponse:
            self._authorize(context)
            rows = self.plane.repository_index(request.ready)
            return json_format.ParseDict({"models": rows}, pb.RepositoryIndexResponse())
        return await self._guard(context, action)

    async def RepositoryModelLoad(self, request: Any, context: Context) -> pb.RepositoryModelLoadResponse:
        async def action() -> pb.RepositoryModelLoadResponse:
            self._authorize(context)
            await self.plane.load(request.model_name, _parameters(request.parameters))
            return pb.RepositoryModelLoadResponse()
        return await self._guard(context, action)

    async def RepositoryModelUnload(
        self, request: Any, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        async def action() -> pb.RepositoryModelUnloadResponse:
            self._authorize(context)
            await self.plane.unload(request.model_name, _parameters(request.parameters))
            return pb.RepositoryModelUnloadResponse()
        return await self._guard(context, action)


NOT_SERVED = (
    "ModelStreamInfer", "SystemSharedMemoryStatus", "SystemSharedMemoryRegister",
    "SystemSharedMemoryUnregister", "CudaSharedMemoryStatus", "CudaSharedMemoryRegister",
    "CudaSharedMemoryUnregister", "TraceSetting", "LogSettings",
)


def _not_served(rpc: str) -> Callable[..., Awaitable[None]]:
    async def method(self: InferenceServicer, request: Any, context: Context) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{rpc} is not supported by enserve")

    return method


for _rpc in NOT_SERVED:
    setattr(InferenceServicer, _rpc, _not_served(_rpc))


def build_grpc_server(plane: DataPlane) -> grpc.aio.Server:
    size = plane.limits.max_body_bytes
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", size),
    ])
    server.add_generic_rpc_handlers((_service_handler(InferenceServicer(plane)),))
    return server


SERVICE = "inference.GRPCInferenceService"


def _service_handler(servicer: InferenceServicer) -> grpc.GenericRpcHandler:
    """The service's handlers, parsing each request inside the handler: a message that is
    not valid protobuf is the client's fault (INVALID_ARGUMENT), where grpcio's own
    deserialization would answer UNKNOWN."""
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        respond = getattr(pb, method.output_type.name).SerializeToString
        if method.client_streaming or method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                _not_served(method.name).__get__(servicer), response_serializer=respond)
            continue
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _parsing(getattr(servicer, method.name), getattr(pb, method.input_type.name)),
            response_serializer=respond,
        )
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


def _parsing(handler: Callable[[Any, Context], Awaitable[Any]],
             message_type: Any) -> Callable[[bytes, Context], Awaitable[Any]]:
    async def handle(raw: bytes, context: Context) -> Any:
        try:
            if len(raw) <= THREAD_BYTES:
                request = message_type.FromString(raw)
            else:
                request = await asyncio.to_thread(message_type.FromString, raw)
        except DecodeError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"the request is not a valid {message_type.DESCRIPTOR.name}: {exc}")
        return await handler(request, context)

    return handle
