"""`CompiledPath` over a stand-in for Ray's compiled graph: answers are handed on in order,
a failed read hands back everything outstanding, and an execution that races the graph's
closing is refused (sent by plain calls) rather than left unread."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any

import pytest

pytest.importorskip("ray")

from enserve.runtime.ray.graph import CompiledPath


class _Ref:
    def __init__(self, value: Any, error: BaseException | None = None) -> None:
        self.value, self.error = value, error

    def get(self, timeout: float) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


class _Dag:
    """Answers each key's rows; `hold` keeps `execute` waiting until released."""

    def __init__(self, hold: bool = False, error: BaseException | None = None) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.hold, self.error = hold, error
        self.torn_down = False
        if not hold:
            self.release.set()

    def execute(self, job: tuple[Any, dict[int, tuple[int, int]]]) -> list[_Ref]:
        self.entered.set()
        assert self.release.wait(10)
        inputs, spans = job
        return [_Ref((inputs, spans[k]), self.error) for k in spans]

    def teardown(self) -> None:
        self.torn_down = True


class _Sink:
    def __init__(self) -> None:
        self.answers: list[tuple[Any, Any]] = []
        self.broken: list[tuple[list[Any], str]] = []
        self.done = threading.Event()

    def answer(self, sent: Any, future: Future[Any]) -> None:
        self.answers.append((sent, future.result()))
        self.done.set()

    def lost(self, outstanding: list[Any], why: str) -> None:
        self.broken.append((outstanding, why))
        self.done.set()


def _path(dag: _Dag, sink: _Sink) -> CompiledPath:
    return CompiledPath(dag, [1, 2], ("sig",), sink.answer, sink.lost, max_inflight=2,
                        read_timeout_s=5.0)


def _wait(check: Any) -> None:
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_each_actors_answer_is_handed_on() -> None:
    sink, dag = _Sink(), _Dag()
    path = _path(dag, sink)
    assert path.submit("batch", {1: "chunk-1", 2: "chunk-2"}, {1: (0, 3), 2: (3, 5)})
    _wait(lambda: len(sink.answers) == 2)
    assert sink.answers == [("chunk-1", ("batch", (0, 3))), ("chunk-2", ("batch", (3, 5)))]
    path.close()
    path.join(10)
    assert not path.alive and dag.torn_down and not sink.broken


def test_a_failed_read_hands_back_what_is_outstanding() -> None:
    import ray.exceptions as rex

    sink, dag = _Sink(), _Dag(error=rex.RayChannelError("actor gone"))
    path = _path(dag, sink)
    assert path.submit("batch", {1: "chunk-1", 2: "chunk-2"}, {1: (0, 1), 2: (1, 2)})
    _wait(lambda: bool(sink.broken))
    outstanding, why = sink.broken[0]
    assert sorted(outstanding) == ["chunk-1", "chunk-2"] and "actor gone" in why
    assert not sink.answers and not path.usable
    assert not path.submit("next", {1: "chunk-3"}, {1: (0, 1)})


def test_an_execution_racing_the_close_is_refused_not_left_unread() -> None:
    """`close` while `execute` runs: the reader, finding nothing to read, leaves; the
    execution then returns. It must be refused (the engine sends it by plain calls), or
    its requests would wait forever for a read that never comes."""
    sink, dag = _Sink(), _Dag(hold=True)
    path = _path(dag, sink)
    taken: list[bool] = []
    sender = threading.Thread(target=lambda: taken.append(
        path.submit("batch", {1: "chunk-1"}, {1: (0, 1)})))
    sender.start()
    assert dag.entered.wait(10)
    path.close()
    _wait(lambda: path._finished)  # the reader has left (its teardown waits for execute)
    dag.release.set()
    sender.join(10)
    assert taken == [False]
    path.join(10)
    assert not path.alive and dag.torn_down and not sink.answers
