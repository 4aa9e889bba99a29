"""`Sampled`: a costly reading refreshed in the background, never waited for once taken."""

from __future__ import annotations

import threading

from enserve.runtime.memory import Sampled


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_first_reading_is_taken_then_reused_until_stale() -> None:
    clock, calls = FakeClock(), []
    sampled = Sampled(lambda: calls.append(1) or len(calls), every_s=5.0, clock=clock)
    assert sampled.get() == 1
    clock.now = 4.9
    assert sampled.get() == 1
    assert len(calls) == 1


def test_stale_reading_is_returned_while_a_refresh_runs_in_the_background() -> None:
    clock = FakeClock()
    release, refreshed = threading.Event(), threading.Event()
    values = iter([1, 2])

    def read() -> int:
        value = next(values)
        if value == 2:  # the background refresh: hold it until the test has read the old value
            release.wait(30)
            refreshed.set()
        return value

    sampled = Sampled(read, every_s=5.0, clock=clock)
    assert sampled.get() == 1
    clock.now = 10.0
    assert sampled.get() == 1  # stale: answered at once from the last reading
    assert sampled.get() == 1  # one refresh at a time (a second would exhaust `values`)
    release.set()
    assert refreshed.wait(30)
    for _ in range(1000):  # the refresh stores its value right after `read` returns
        if sampled.get() == 2:
            break
        threading.Event().wait(0.01)
    assert sampled.get() == 2


def test_a_failed_refresh_keeps_the_last_reading() -> None:
    clock = FakeClock()
    calls: list[int] = []
    done = threading.Event()

    def read() -> int:
        calls.append(1)
        if len(calls) == 2:
            done.set()
            raise OSError("process gone")
        return 7

    sampled = Sampled(read, every_s=1.0, clock=clock)
    assert sampled.get() == 7
    clock.now = 2.0
    assert sampled.get() == 7
    assert done.wait(30)
    assert sampled.get() in (7,)
