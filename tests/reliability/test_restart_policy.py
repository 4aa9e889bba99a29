"""Restarts limited by a rate with crash-loop back-off, never by a lifetime count (defect 2)."""

from __future__ import annotations

from enserve.runtime.restarts import RestartPolicy, RestartState


def test_spread_out_deaths_always_restart_at_once() -> None:
    policy, state = RestartPolicy(burst=3, window_s=60), RestartState()
    for hour in range(20):  # twenty kills, an hour apart
        assert state.record_death(hour * 3600.0, policy) == 0.0
    assert state.total_deaths == 20


def test_crash_loop_backs_off_exponentially_but_never_gives_up() -> None:
    policy = RestartPolicy(burst=2, window_s=60, backoff_s=0.5, max_backoff_s=8)
    state, now, waits = RestartState(), 0.0, []
    for _ in range(10):
        wait = state.record_death(now, policy)
        waits.append(wait)
        assert not state.due(now + wait - 0.01) or wait == 0
        assert state.due(now + wait)
        now += wait + 0.1
    assert waits[:2] == [0.0, 0.0]
    assert waits[2:6] == [0.5, 1.0, 2.0, 4.0]
    assert max(waits) == 8  # capped, and still a finite wait: it comes back by itself


def test_back_off_forgotten_after_a_quiet_window() -> None:
    policy, state = RestartPolicy(burst=1, window_s=10, backoff_s=1), RestartState()
    assert state.record_death(0.0, policy) == 0.0
    assert state.record_death(1.0, policy) == 1.0
    assert state.record_death(100.0, policy) == 0.0
