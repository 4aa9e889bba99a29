"""Load targets: the engine, and the in-process baselines served the same way.

A baseline is the reference executor behind a one-thread server that runs whatever is
queued, up to its batch size, as one batch — so the same load generator measures it.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

import numpy as np

from enserve.errors import InferenceError
from enserve.members import Member, load_member
from enserve.reference import ReferenceExecutor
from enserve.spec import EnsembleSpec

BASELINES = ("sequential", "sequential-fast", "naive")


class InProcessServer:
    """Runs `fn(batch) -> result rows` on one thread, batching queued requests up to
    `batch_size` rows (no waiting: under load the queue fills the batch)."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], batch_size: int,
                 name: str) -> None:
        self.fn = fn
        self.batch_size = batch_size
        self.name = name
        self._queue: queue.Queue[tuple[np.ndarray, Future[np.ndarray]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=f"baseline-{name}", daemon=True)
        self._thread.start()

    def submit(self, x: np.ndarray) -> Future[np.ndarray]:
        future: Future[np.ndarray] = Future()
        self._queue.put((x, future))
        return future

    async def infer(self, x: np.ndarray) -> np.ndarray:
        return await asyncio.wrap_future(self.submit(x))

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=60)

    def _loop(self) -> None:
        carry: tuple[np.ndarray, Future[np.ndarray]] | None = None
        stopping = False
        while not stopping or carry is not None:
            item = carry if carry is not None else self._queue.get()
            carry = None
            if item is None:
                return
            batch, rows = [item], item[0].shape[0]
            while rows < self.batch_size:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                if rows + nxt[0].shape[0] > self.batch_size:
                    carry = nxt
                    break
                batch.append(nxt)
                rows += nxt[0].shape[0]
            self._run(batch)

    def _run(self, batch: list[tuple[np.ndarray, Future[np.ndarray]]]) -> None:
        try:
            out = self.fn(np.concatenate([x for x, _ in batch]))
        except Exception as exc:
            for _, f in batch:
                f.set_exception(InferenceError(str(exc)))
            return
        at = 0
        for x, f in batch:
            f.set_result(out[at:at + x.shape[0]])
            at += x.shape[0]


def fastest_variants(spec: EnsembleSpec, profile: Any, threads: int,
                     batch_size: int) -> dict[str, str]:
    """Per member, the variant with the lowest profiled latency at (threads, batch_size) on
    the CPU; "onnx" where the profile has nothing (the fastest everywhere measured here)."""
    best: dict[str, tuple[float, str]] = {}
    for e in _entries(profile):
        member, variant = _get(e, "member"), _get(e, "variant") or "eager"
        if (str(_get(e, "device")).startswith("cpu") and float(_get(e, "share")) == threads
                and int(_get(e, "batch_size")) == batch_size):
            lat = float(_get(e, "latency_s"))
            if member not in best or lat < best[member][0]:
                best[member] = (lat, variant)
    return {m.name: best.get(m.name, (0.0, "onnx"))[1] for m in spec.members}


def _entries(profile: Any) -> list[Any]:
    if profile is None:
        return []
    entries = profile.get("entries", []) if isinstance(profile, Mapping) else getattr(
        profile, "entries", [])
    return list(entries)


def _get(entry: Any, name: str) -> Any:
    return entry.get(name) if isinstance(entry, Mapping) else getattr(entry, name, None)


def build_baseline(kind: str, spec: EnsembleSpec, threads: int, batch_size: int,
                   profile: Any = None) -> tuple[InProcessServer, dict[str, Any]]:
    """A started baseline server and a description of what it runs."""
    import torch

    torch.set_num_threads(threads)
    if kind == "naive":
        executor = ReferenceExecutor(spec, threads=threads)
        return InProcessServer(executor, 1, kind), {"batch_size": 1, "variants": "eager",
                                                    "threads": threads}
    if kind == "sequential":
        executor = ReferenceExecutor(spec, threads=threads)
        return InProcessServer(executor, batch_size, kind), {
            "batch_size": batch_size, "variants": "eager", "threads": threads}
    if kind == "sequential-fast":
        variants = fastest_variants(spec, profile, threads, batch_size)
        members = {name: _load(spec, name, v, threads) for name, v in variants.items()}
        torch.set_num_threads(threads)
        executor = ReferenceExecutor(spec, members=members)
        return InProcessServer(executor, batch_size, kind), {
            "batch_size": batch_size, "variants": variants, "threads": threads}
    raise ValueError(f"unknown baseline '{kind}' (expected one of {', '.join(BASELINES)})")


def _load(spec: EnsembleSpec, member: str, variant: str, threads: int) -> Member:
    try:
        from enserve.variants import load_variant
    except ImportError:
        return load_member(spec, member, threads=threads)
    return load_variant(spec, member, variant, threads)
