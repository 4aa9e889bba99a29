"""Decoding `/infer` bodies without stalling the event loop.

`json.loads` of a large body holds the GIL from start to end, so a thread does not help:
eight 60 MB JSON bodies decoded in threads stall health checks for seconds. Bodies of JSON
over `process_bytes` are decoded in a small pool of separate processes (spawned once, on
first need, importing only the codec); mid-sized ones in a thread; small ones inline.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from enserve.server.codec import decode_infer_request
from enserve.server.errors import Code, ServerError
from enserve.server.limits import Limits
from enserve.server.protocol import InferRequest

THREAD_BYTES = 256 * 1024
"""JSON bodies (and outputs) larger than this are decoded (encoded) in a worker thread."""
PROCESS_BYTES = 4 * 1024 * 1024
"""JSON bodies larger than this are decoded in a decoder process."""


class Decoder:
    def __init__(self, processes: int = 2, process_bytes: int = PROCESS_BYTES) -> None:
        self.processes = max(0, processes)
        self.process_bytes = process_bytes
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.processes, mp_context=mp.get_context("spawn"))
        return self._pool

    async def decode(self, model: str, version: str, body: bytes, header_length: int | None,
                     limits: Limits) -> InferRequest:
        json_bytes = len(body) if header_length is None else header_length
        if json_bytes <= THREAD_BYTES:
            return decode_infer_request(model, version, body, header_length, limits)
        if json_bytes <= self.process_bytes or self.processes == 0 or header_length is not None:
            # binary tensors are views into `body`: keep them in this process
            return await asyncio.to_thread(decode_infer_request, model, version, body, header_length, limits)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._executor(), decode_infer_request, model, version, body, header_length, limits
            )
        except BrokenProcessPool:
            self.close()
            raise ServerError("the request decoder process died; retry", Code.UNAVAILABLE) from None

    def close(self) -> None:
        if self._pool is not None:
            with contextlib.suppress(Exception):
                self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
