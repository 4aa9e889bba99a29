"""The REST adapter: Open Inference Protocol paths on FastAPI, translating to the DataPlane."""

from __future__ import annotations

import asyncio
import json
import logging
import zlib
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from enserve.server import openapi
from enserve.server.codec import HEADER_LENGTH, encode_infer_response
from enserve.server.dataplane import DataPlane
from enserve.server.decoding import BIG_BYTES, THREAD_BYTES
from enserve.server.errors import RETRY_AFTER_S, Code, ServerError, as_server_error, forget_frames
from enserve.server.limits import BodyHold

log = logging.getLogger("enserve.server")
OFFLOAD_BYTES = THREAD_BYTES
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def error_response(exc: ServerError) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if exc.code is Code.UNAVAILABLE else None
    return JSONResponse({"error": exc.message}, status_code=exc.code.http_status, headers=headers)


async def read_body(request: Request, limit: int, hold: BodyHold | None = None) -> bytes | bytearray:
    """The request body, decompressed per `Content-Encoding`, never more than `limit` bytes.

    With `hold`, the body's bytes are reserved in the server's body budget: the declared
    size before the first byte is read (503 when it does not fit), else as chunks arrive.
    A big declared body is read into one buffer of its size (no second copy to join)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()) or len(declared) > 18:
            raise ServerError("Content-Length must be a non-negative integer")
        if int(declared) > limit:
            raise ServerError(f"request body of {declared} bytes exceeds the limit {limit}", Code.TOO_LARGE)
        if hold is not None:
            hold.grow_to(int(declared))
    if declared is not None and int(declared) > OFFLOAD_BYTES:
        body: bytes | bytearray = await _read_into(request, bytearray(int(declared)))
    else:
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ServerError(f"request body exceeds the limit of {limit} bytes", Code.TOO_LARGE)
            if hold is not None:
                hold.grow_to(size)
            chunks.append(chunk)
        body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in _WBITS:
        raise ServerError(f"Content-Encoding '{encoding[:40]}' is not supported (gzip, deflate)",
                          Code.UNSUPPORTED_ENCODING)
    data = await asyncio.to_thread(_inflate, body, encoding, limit)  # zlib drops the GIL
    if hold is not None:
        hold.grow_to(len(body) + len(data))
    return data


async def _read_into(request: Request, buffer: bytearray) -> bytearray:
    """Fill `buffer` (the declared Content-Length) from the request's stream."""
    view = memoryview(buffer)
    size = 0
    async for chunk in request.stream():
        if size + len(chunk) > len(buffer):  # the HTTP parser frames by Content-Length
            raise ServerError("request body longer than its Content-Length")
        view[size:size + len(chunk)] = chunk
        size += len(chunk)
    if size != len(buffer):
        raise ServerError(f"request body of {size} bytes, {len(buffer)} declared")
    return buffer


def _inflate(body: bytes | bytearray, encoding: str, limit: int) -> bytes:
    inflater = zlib.decompressobj(_WBITS[encoding])
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ServerError(f"request body is not valid {encoding}: {exc}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise ServerError(f"decompressed request body exceeds the limit of {limit} bytes", Code.TOO_LARGE)
    return data


def compress(body: bytes, request: Request) -> tuple[bytes, dict[str, str]]:
    """Compress the response if the client asked for gzip or deflate."""
    accepted = request.headers.get("accept-encoding", "")
    for encoding in ("gzip", "deflate"):
        if encoding in accepted:
            packer = zlib.compressobj(1, zlib.DEFLATED, _WBITS[encoding])
            return packer.compress(body) + packer.flush(), {"Content-Encoding": encoding}
    return body, {}


async def json_body(request: Request, limit: int) -> dict[str, Any]:
    body = await read_body(request, min(limit, 1024 * 1024))  # repository calls: small JSON
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # incl. ints over 4300 digits
        raise ServerError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ServerError("request body must be a JSON object")
    return data


def _header_length(header: str | None) -> int | None:
    """`Inference-Header-Content-Length`: ASCII digits only (None when absent)."""
    if header is None:
        return None
    value = header.strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise ServerError(f"{HEADER_LENGTH} must be a non-negative integer, got '{header[:40]}'")
    return int(value)


def _parameters(body: dict[str, Any]) -> dict[str, Any]:
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise ServerError("'parameters' must be a JSON object")
    return params


def build_app(plane: DataPlane) -> FastAPI:
    app = FastAPI(title="enserve", version="2", description="Open Inference Protocol (KServe v2)")
    limit = plane.limits.max_body_bytes

    @app.exception_handler(ServerError)
    async def _server_error(request: Request, exc: ServerError) -> Response:
        forget_frames(exc)
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s", request.url.path)
        forget_frames(exc)
        return error_response(as_server_error(exc))

    def status(ok: bool, key: str) -> Response:
        return JSONResponse({key: ok}, status_code=200 if ok else 503,
                            headers=None if ok else {"Retry-After": str(RETRY_AFTER_S)})

    @app.get("/v2/health/live")
    async def live() -> Response:
        return status(plane.live(), "live")

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        return status(plane.ready(), "ready")

    @app.get("/v2")
    async def server_metadata() -> Response:
        return JSONResponse(plane.server_metadata())

    @app.get("/v2/models/stats")
    async def all_stats() -> Response:
        return JSONResponse(plane.statistics())

    @app.get("/v2/models/{model}")
    @app.get("/v2/models/{model}/versions/{version}")
    async def model_metadata(model: str, version: str = "") -> Response:
        return JSONResponse(plane.model_metadata(model, version))

    @app.get("/v2/models/{model}/ready")
    @app.get("/v2/models/{model}/versions/{version}/ready")
    async def model_ready(model: str, version: str = "") -> Response:
        return status(plane.model_ready(model, version), "ready")

    @app.get("/v2/models/{model}/config")
    @app.get("/v2/models/{model}/versions/{version}/config")
    async def model_config(model: str, version: str = "") -> Response:
        return JSONResponse(plane.model_config(model, version))

    @app.get("/v2/models/{model}/stats")
    @app.get("/v2/models/{model}/versions/{version}/stats")
    async def model_stats(model: str, version: str = "") -> Response:
        return JSONResponse(plane.statistics(model, version))

    async def answer(model: str, version: str, request: Request, hold: BodyHold,
                     header_length: int | None) -> tuple[bytes, int | None]:
        """Read, decode and run one `/infer` body; the encoded response and its JSON length."""
        with plane.refusals_counted(model):
            body = await read_body(request, limit, hold)
            size = len(body)
            infer_request = await plane.decoder.decode(
                model, version, body, header_length, plane.limits,
                reserve=lambda nbytes: hold.grow_to(size + nbytes))
        del body  # the decoded request keeps what it needs (a raw body, or spans' arrays)
        response = await plane.infer(infer_request)
        if size > OFFLOAD_BYTES or sum(a.nbytes for a in response.outputs.values()) > OFFLOAD_BYTES:
            return await asyncio.to_thread(encode_infer_response, response, infer_request)
        return encode_infer_response(response, infer_request)

    @app.post("/v2/models/{model}/infer", openapi_extra=openapi.body(openapi.INFER_REQUEST))
    @app.post("/v2/models/{model}/versions/{version}/infer",
              openapi_extra=openapi.body(openapi.INFER_REQUEST))
    async def infer(model: str, request: Request, version: str = "") -> Response:
        with plane.refusals_counted(model):
            header_length = _header_length(request.headers.get(HEADER_LENGTH))
            plane.admission.check()  # refuse an overloaded or draining server before reading the body
        declared = request.headers.get("content-length", "")
        big = declared.isascii() and declared.isdigit() and len(declared) < 19 and int(declared) > BIG_BYTES
        with plane.body_budget.hold() as hold, plane.decoder.trimmer.big_body(big):
            # the body and its arrays live in `answer`'s frame only: gone (or, on an error,
            # cleared by the hold) before the hold releases their bytes
            payload, json_length = await answer(model, version, request, hold, header_length)
        payload, headers = compress(payload, request)
        if json_length is not None:
            headers[HEADER_LENGTH] = str(json_length)
            return Response(payload, media_type="application/octet-stream", headers=headers)
        return Response(payload, media_type="application/json", headers=headers)

    @app.post("/v2/repository/index", openapi_extra=openapi.body(openapi.REPOSITORY_INDEX_REQUEST, False))
    async def repository_index(request: Request) -> Response:
        plane.authorize(request.headers.get("authorization"))
        body = await json_body(request, limit)
        ready_only = body.get("ready", False)
        if not isinstance(ready_only, bool):
            raise ServerError("'ready' must be true or false")
        return JSONResponse(plane.repository_index(ready_only))

    @app.post("/v2/repository/models/{model}/load",
              openapi_extra=openapi.body(openapi.REPOSITORY_LOAD_REQUEST, False))
    async def load(model: str, request: Request) -> Response:
        plane.authorize(request.headers.get("authorization"))
        body = await json_body(request, limit)
        await plane.load(model, _parameters(body))
        return JSONResponse({})

    @app.post("/v2/repository/models/{model}/unload",
              openapi_extra=openapi.body(openapi.REPOSITORY_LOAD_REQUEST, False))
    async def unload(model: str, request: Request) -> Response:
        plane.authorize(request.headers.get("authorization"))
        body = await json_body(request, limit)
        await plane.unload(model, _parameters(body))
        return JSONResponse({})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(plane.metrics.render(), media_type="text/plain; version=0.0.4")

    return app


def build_metrics_app(plane: DataPlane) -> FastAPI:
    """The metrics port's app: only `GET /metrics`."""
    app = FastAPI(title="enserve metrics", openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(plane.metrics.render(), media_type="text/plain; version=0.0.4")

    return app
