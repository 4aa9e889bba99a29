"""What the server needs from whatever runs an ensemble, and the in-process implementation.

`ReferenceBackend` runs the `ReferenceExecutor` in one worker thread, one batch at a time,
timing each member and the combine step. `EngineBackend` (see `engine_backend.py`) wraps
the multi-process runtime engine behind the same interface.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from enserve.errors import MemberFailedError, UnavailableError
from enserve.members.slowed import Slowed, slow_members
from enserve.reference import ReferenceExecutor
from enserve.result import EnsembleResult, ValidInputs
from enserve.server.errors import Code, ServerError
from enserve.spec import EnsembleSpec


@dataclass
class Timing:
    """Where one request's time went (seconds)."""

    queue_s: float = 0.0
    compute_s: float = 0.0
    member_s: dict[str, float] = field(default_factory=dict)
    combine_s: float = 0.0

    @property
    def skew_s(self) -> float:
        """Wait for the slowest member beyond the fastest one."""
        if not self.member_s:
            return 0.0
        return max(self.member_s.values()) - min(self.member_s.values())


@dataclass
class Outcome:
    result: EnsembleResult
    timing: Timing


class Backend(Protocol):
    """Runs one loaded ensemble."""

    spec: EnsembleSpec

    def output_classes(self) -> int | None:
        """Number of classes the members output (None if unknown)."""

    async def infer(self, inputs: ValidInputs, outputs: Sequence[str],
                    deadline: float | None) -> Outcome:
        """Answer a validated batch with at least the named `outputs` (a member's logits
        are only guaranteed when `logits_<member>` is named); per-member seconds in
        `Timing.member_s`. Raise a TIMEOUT error (ServerError, or DeadlineError) if
        `deadline` (time.monotonic()) passes before the batch starts."""

    def stats(self) -> dict[str, Any]:
        """Backend-specific counters (free form, for the dashboard and statistics)."""

    def memory_bytes(self) -> int:
        """Host memory the loaded ensemble holds (for a memory budget)."""

    def shutdown(self) -> None:
        """Release threads, processes and memory (blocking)."""

    async def close(self) -> None:
        """`shutdown` without blocking the event loop."""


BackendFactory = Callable[[EnsembleSpec], Backend]


def check_deadline(deadline: float | None, started: float) -> None:
    if deadline is not None and time.monotonic() > deadline:
        waited = (time.monotonic() - started) * 1000
        raise ServerError(f"request timed out after {waited:.1f} ms in the queue", Code.TIMEOUT)


class ReferenceBackend:
    """The reference executor in a single worker thread (the oracle, and a safe default)."""

    def __init__(self, spec: EnsembleSpec, threads: int | None = None) -> None:
        self.spec = spec
        self.executor = ReferenceExecutor(spec, threads=threads)
        for name, delay in slow_members().items():  # test hook: ENSERVE_SLOW_MEMBERS
            if name in self.executor.members:
                self.executor.members[name] = Slowed(self.executor.members[name], delay)  # type: ignore[assignment]
        self._members_pool: ThreadPoolExecutor | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"enserve-{spec.name}")
        self._batches = 0

    def output_classes(self) -> int | None:
        return int(self.executor.output_shape[-1])

    def _run(self, inputs: ValidInputs, deadline: float | None, submitted: float) -> Outcome:
        check_deadline(deadline, submitted)
        started = time.perf_counter()
        queue_s = time.monotonic() - submitted
        member_s: dict[str, float] = {}
        logits: dict[str, np.ndarray] = {}
        for m in self.spec.members:
            t0 = time.perf_counter()
            try:
                logits[m.name] = self.executor.members[m.name](inputs[self.spec.input_for(m).name])
            except Exception as exc:  # valid input (validated before): the member's fault
                raise MemberFailedError(f"member '{m.name}' failed: {type(exc).__name__}: {exc}") from None
            member_s[m.name] = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = self.executor.combine(logits)
        combine_s = time.perf_counter() - t0
        self._batches += 1
        return Outcome(result, Timing(queue_s, time.perf_counter() - started, member_s, combine_s))

    async def infer(self, inputs: ValidInputs, outputs: Sequence[str],
                    deadline: float | None) -> Outcome:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, self._run, inputs, deadline, time.monotonic())
        except RuntimeError as exc:  # pool shut down by an unload racing this request
            raise UnavailableError(f"model '{self.spec.name}' was unloaded: {exc}") from None

    async def infer_members(self, inputs: Mapping[str, np.ndarray], members: Sequence[str],
                            answer_by: float | None = None, min_members: int = 1) -> Outcome:
        """Only `members`, one after another; with `answer_by`, no member starts after it
        (one already running finishes first: this backend answers late by up to one member)."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, self._run_members, inputs,
                                              tuple(members), answer_by, min_members)
        except RuntimeError as exc:  # pool shut down by an unload racing this request
            raise UnavailableError(f"model '{self.spec.name}' was unloaded: {exc}") from None

    def _run_members(self, inputs: Mapping[str, np.ndarray], members: tuple[str, ...],
                     answer_by: float | None, min_members: int) -> Outcome:
        from enserve.policies.cascade import combine_members

        started = time.perf_counter()
        chosen = [m for m in self.spec.members if m.name in members]
        logits: dict[str, np.ndarray] = {}
        member_s: dict[str, float] = {}

        def one(name: str, x: np.ndarray) -> tuple[str, np.ndarray, float]:
            t0 = time.perf_counter()
            out = self.executor.members[name](x)
            return name, out, time.perf_counter() - t0

        if answer_by is None:
            for m in chosen:
                _, logits[m.name], member_s[m.name] = one(m.name, inputs[self.spec.input_for(m).name])
        else:  # members side by side; at the deadline, take those done and drop the rest
            if self._members_pool is None:
                self._members_pool = ThreadPoolExecutor(len(self.spec.members),
                                                        f"enserve-{self.spec.name}-members")
            futures = [self._members_pool.submit(one, m.name, inputs[self.spec.input_for(m).name])
                       for m in chosen]
            done, late = wait(futures, timeout=max(0.0, answer_by - time.monotonic()))
            for future in late:
                future.cancel()
            for future in done:
                name, out, seconds = future.result()
                logits[name], member_s[name] = out, seconds
            logits = {m.name: logits[m.name] for m in chosen if m.name in logits}
        if len(logits) < min(min_members, len(members)):
            raise ServerError(f"deadline passed with {len(logits)} of {len(members)} members "
                              f"answered ({', '.join(logits) or 'none'}); min_members is "
                              f"{min_members}", Code.TIMEOUT)
        t0 = time.perf_counter()
        probs, agree = combine_members(self.spec, logits)
        combine_s = time.perf_counter() - t0
        self._batches += 1
        result = EnsembleResult(probs, agree, logits, members=tuple(logits))
        return Outcome(result, Timing(0.0, time.perf_counter() - started, member_s, combine_s))

    def stats(self) -> dict[str, Any]:
        return {"backend": "reference", "batches": self._batches}

    def memory_bytes(self) -> int:
        return sum(m.param_bytes() for m in self.executor.members.values())

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)
        if self._members_pool is not None:
            self._members_pool.shutdown(wait=True, cancel_futures=True)

    async def close(self) -> None:
        await asyncio.to_thread(self.shutdown)


def engine_outcome(result: EnsembleResult, started: float) -> Outcome:
    """An engine's answer with its timing: the engine's own queue time, the rest of the time
    since `started` (time.perf_counter()) as compute, per-member times as measured."""
    total = time.perf_counter() - started
    return Outcome(result, Timing(queue_s=result.queue_s, compute_s=max(0.0, total - result.queue_s),
                                  member_s=dict(result.member_s)))
