"""Load targets that reach a running server over HTTP or gRPC with the real tritonclient.

`enserve bench --url http://HOST:PORT` (or `grpc://HOST:PORT`) measures the served path
next to the in-process engine, with the same load generator and payloads. Tensors travel
with the binary extension (HTTP) or raw contents (gRPC).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from enserve.bench.load import LoadResult, closed_loop, open_loop
from enserve.datatypes import v2_datatype
from enserve.errors import EnserveError, InferenceError, OverloadedError


@dataclass(frozen=True)
class ServerAddress:
    protocol: str  # "http" or "grpc"
    hostport: str

    @property
    def label(self) -> str:
        return f"served-{self.protocol}"


def parse_url(url: str) -> ServerAddress:
    """`http://host:port` or `grpc://host:port` (a bare `host:port` means HTTP)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "grpc"):
        raise EnserveError(f"--url {url}: scheme must be http:// or grpc://")
    if not parts.hostname or not parts.port:
        raise EnserveError(f"--url {url}: expected SCHEME://HOST:PORT")
    if parts.path not in ("", "/"):
        raise EnserveError(f"--url {url}: give the server's address only, without a path")
    return ServerAddress(parts.scheme, f"{parts.hostname}:{parts.port}")


class RemoteTarget:
    """An async `(batch) -> probabilities` callable backed by one tritonclient per event loop
    (the load generator runs each round in a fresh loop)."""

    def __init__(self, address: ServerAddress, model: str, input_name: str,
                 output: str = "probabilities") -> None:
        self.address, self.model = address, model
        self.input_name, self.output = input_name, output
        self._client_obj: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _client(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client_obj is None or self._loop is not loop:
            if self.address.protocol == "http":
                import tritonclient.http.aio as http

                self._client_obj = http.InferenceServerClient(self.address.hostport)
            else:
                import tritonclient.grpc.aio as grpc

                self._client_obj = grpc.InferenceServerClient(self.address.hostport)
            self._loop = loop
        return self._client_obj

    async def aclose(self) -> None:
        """Close the client of the running loop (call before that loop ends)."""
        if self._client_obj is not None and self._loop is asyncio.get_running_loop():
            await self._client_obj.close()
        self._client_obj, self._loop = None, None

    async def __call__(self, batch: np.ndarray) -> np.ndarray:
        client = self._client()
        if self.address.protocol == "http":
            import tritonclient.http.aio as http

            tensor = http.InferInput(self.input_name, list(batch.shape), v2_datatype(batch.dtype))
            tensor.set_data_from_numpy(batch, binary_data=True)
            wanted = [http.InferRequestedOutput(self.output, binary_data=True)]
        else:
            import tritonclient.grpc.aio as grpc

            tensor = grpc.InferInput(self.input_name, list(batch.shape), v2_datatype(batch.dtype))
            tensor.set_data_from_numpy(batch)
            wanted = [grpc.InferRequestedOutput(self.output)]
        try:
            result = await client.infer(self.model, [tensor], outputs=wanted)
        except Exception as exc:
            text = str(exc)
            if "503" in text or "429" in text or "UNAVAILABLE" in text or "overloaded" in text:
                raise OverloadedError(text) from None
            raise InferenceError(text) from None
        out: np.ndarray = result.as_numpy(self.output)
        return out

    async def check(self) -> None:
        """Fail early, with a clear message, when the server or model is not there."""
        client = self._client()
        try:
            ready = await client.is_model_ready(self.model)
        except Exception as exc:
            raise EnserveError(f"cannot reach {self.address.protocol}://{self.address.hostport}: "
                               f"{exc}") from None
        if not ready:
            raise EnserveError(f"{self.address.protocol}://{self.address.hostport}: model "
                               f"'{self.model}' is not ready")


async def _checked(target: RemoteTarget) -> None:
    try:
        await target.check()
    finally:
        await target.aclose()


def connect(url: str, model: str, input_name: str) -> RemoteTarget:
    """A remote target for `url`, checked to be reachable and to serve `model`."""
    target = RemoteTarget(parse_url(url), model, input_name)
    asyncio.run(_checked(target))
    return target


def run_remote_round(target: RemoteTarget, payloads: Sequence[Any], mode: str, concurrency: int,
                     rate: float, duration_s: float, warmup_s: float, seed: int) -> LoadResult:
    """One load run against a server, in a fresh event loop whose client is closed after."""

    async def round_() -> LoadResult:
        try:
            if mode == "closed":
                return await closed_loop(target, payloads, concurrency, duration_s, warmup_s)
            return await open_loop(target, payloads, rate, duration_s, warmup_s, seed)
        finally:
            await target.aclose()

    return asyncio.run(round_())
