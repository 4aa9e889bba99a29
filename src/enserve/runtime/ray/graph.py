"""The steady-state path of `RayEngine`: one Ray Compiled Graph over the ready actors.

A plain Ray actor call costs a task submission, an object-store round trip and a callback
per instance and batch (1.5-4 ms here for two actors). A compiled graph (`ray.dag`,
`experimental_compile()`) runs a loop inside each actor that reads its inputs from a
shared-memory channel: one `execute` per batch hands every actor the batch and the rows it
computes, and one read brings all answers back (about 1 ms for two actors here).

The graph is bound to a fixed set of actors: `RayEngine` builds one whenever the set of
ready actors changes, sends every batch through it while it works, and plain calls only
while there is none (actors starting or lost, a graph that failed): an actor inside a
graph must not get plain calls too (Ray 2.60 stalled both when we mixed them).
`execute` and the reads are not thread-safe (Ray says so of `execute`), so both run under
this object's lock; a reader thread takes the answers in order and hands each actor's to
`on_answer` (a done `Future`, as a plain call's answer would be). So a batch is executed
only once the one before it has fully answered: no pipelining. Reading without the lock
(the next batch executed while the reader waits) was tried: on imagenet6 it stalled to 0
samples/s within a minute (`docs/status.md`), so the graph stays off by default.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from enserve.runtime.ray.paths import Answer, Broken

log = logging.getLogger("enserve.runtime.ray")


@dataclass
class _Execution:
    refs: list[Any]
    sent: dict[int, Any]  # actor key -> what the engine sent it (its chunk)


class CompiledPath:
    """A compiled graph over a fixed set of actors; see the module doc.

    `signature` identifies the actor set it was built for (the engine rebuilds when it
    changes). `on_answer` gets each actor's answer; `on_broken` gets everything still
    outstanding once the graph fails (an actor died, a read timed out); it is then closed.
    """

    def __init__(self, dag: Any, keys: Sequence[int], signature: tuple[Any, ...],
                 on_answer: Answer, on_broken: Broken, *, max_inflight: int,
                 read_timeout_s: float) -> None:
        """`dag`: the compiled graph (`execute` -> one ref per key, in `keys` order);
        `build` makes one from actor handles."""
        self.signature = signature
        self.keys = list(keys)
        self._on_answer = on_answer
        self._on_broken = on_broken
        self._read_timeout_s = read_timeout_s
        self._dag = dag
        self._max_inflight = max_inflight
        self._lock = threading.Lock()  # execute, reads, teardown: Ray's graph is not thread-safe
        self._pending: deque[_Execution] = deque()
        self._changed = threading.Condition()
        self.executions = 0
        self.broken: str | None = None
        self._closing = False
        self._finished = False  # the reader left: nothing appended from now on is ever read
        self._reader = threading.Thread(target=self._read_loop, name="enserve-ray-graph",
                                        daemon=True)
        self._reader.start()

    @classmethod
    def build(cls, handles: Mapping[int, Any], signature: tuple[Any, ...], on_answer: Answer,
              on_broken: Broken, *, max_inflight: int, read_timeout_s: float) -> CompiledPath:
        """Compile a graph over `handles` (actor key -> Ray actor handle)."""
        from ray.dag import InputNode, MultiOutputNode

        keys = list(handles)
        with InputNode() as job:
            outputs = [handles[k].run_graph.bind(job, k) for k in keys]
        dag = MultiOutputNode(outputs).experimental_compile(
            _max_inflight_executions=max_inflight + 1, _submit_timeout=read_timeout_s)
        return cls(dag, keys, signature, on_answer, on_broken, max_inflight=max_inflight,
                   read_timeout_s=read_timeout_s)

    @property
    def usable(self) -> bool:
        return self.broken is None and not self._closing

    def submit(self, inputs: Any, sent: Mapping[int, Any],
               spans: Mapping[int, tuple[int, int]]) -> bool:
        """Execute once for a batch: actor key -> rows `spans` of `inputs` (the arrays, or
        the object-store reference of a large batch); `sent` is what comes back with each
        answer. False (nothing sent) when the graph cannot take it."""
        with self._changed:
            # one more than the engine's batches in flight: the last answered one may not
            # be taken off the list yet (Ray's graph allows max_inflight + 1)
            if not self.usable or len(self._pending) > self._max_inflight:
                return False
        try:
            with self._lock:
                refs = self._dag.execute((inputs, dict(spans)))
        except Exception as exc:
            self._break(f"compiled graph execute failed: {type(exc).__name__}: {exc}")
            return False
        with self._changed:
            if self.broken is not None or self._finished:  # broke or closed meanwhile: this
                return False  # execution is never read (the caller sends it by plain calls)
            self._pending.append(_Execution(list(refs), dict(sent)))
            self.executions += 1
            self._changed.notify_all()
        return True

    def close(self) -> None:
        """No more submissions; tear the graph down once the outstanding ones are read."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()

    @property
    def alive(self) -> bool:
        """Its reader still runs (executions to read, or not yet torn down)."""
        return self._reader.is_alive()

    def join(self, timeout_s: float) -> None:
        self._reader.join(timeout=timeout_s)

    # ----------------------------------------------------------------- reader
    def _read_loop(self) -> None:
        try:
            while True:
                with self._changed:
                    while not self._pending and not self._closing and self.broken is None:
                        self._changed.wait()
                    if not self._pending or self.broken is not None:
                        self._finished = True
                        return
                    execution = self._pending[0]
                if not self._read(execution):
                    with self._changed:
                        self._finished = True
                    return
                with self._changed:
                    self._pending.popleft()
        finally:
            self._teardown()

    def _read(self, execution: _Execution) -> bool:
        """Hand each actor's answer on; False once the graph is broken."""
        import ray.exceptions as rex

        answers: list[Future[Any]] = []
        for ref in execution.refs:
            done: Future[Any] = Future()
            try:
                with self._lock:
                    done.set_result(ref.get(timeout=self._read_timeout_s))
            except (rex.RayChannelError, rex.RayChannelTimeoutError, rex.RayActorError) as exc:
                self._break(f"compiled graph failed: {type(exc).__name__}: {exc}")
                return False
            except Exception as exc:  # the member raised: that actor's answer is the error
                done.set_exception(exc)
            answers.append(done)
        for key, done in zip(self.keys, answers, strict=True):
            chunk = execution.sent.get(key)
            if chunk is not None:
                self._on_answer(chunk, done)
        return True

    def _break(self, why: str) -> None:
        with self._changed:
            if self.broken is not None:
                return
            self.broken = why
            outstanding = [c for e in self._pending for c in e.sent.values()]
            self._pending.clear()
            self._changed.notify_all()
        log.warning("%s; plain actor calls until it is rebuilt", why)
        self._on_broken(outstanding, why)

    def _teardown(self) -> None:
        with contextlib.suppress(Exception), self._lock:
            self._dag.teardown()


def graph_signature(actors: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """What a graph is bound to: the (key, generation) of each of its actors, sorted."""
    return tuple(sorted(actors))
