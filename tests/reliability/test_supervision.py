"""A supervisor that cannot die from what it supervises (defects 1, 2, 4, 10).

Real worker processes (the runtime engine, tiny models); faults injected with signals and
by making a restart fail the way a dead fork server makes it fail."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from enserve.errors import InferenceError, UnavailableError
from enserve.runtime.engine import Engine
from enserve.runtime.restarts import RestartPolicy
from enserve.runtime.supervisor import WorkerHandle
from tests.helpers.runtime import make_spec, worker_children


def _x(rows: int) -> np.ndarray:
    return np.random.default_rng(rows).standard_normal((rows, 3, 2, 2)).astype(np.float32)


def _pid(engine: Engine, prefix: str) -> int:
    return next(pid for label, pid in engine.worker_pids().items() if label.startswith(prefix))


def _wait_ready(engine: Engine, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while engine.unhealthy() is not None:
        assert time.monotonic() < deadline, engine.unhealthy()
        time.sleep(0.05)


def _kill_and_wait_replaced(engine: Engine, prefix: str, timeout: float = 60.0) -> None:
    """Kill the member's worker and wait until a new process runs it and the engine is
    healthy (the engine may not have noticed the death when the kill returns)."""
    old = _pid(engine, prefix)
    _kill(old)
    deadline = time.monotonic() + timeout
    def current() -> int | None:
        return next((pid for label, pid in engine.worker_pids().items() if label.startswith(prefix)),
                    None)

    while current() in (old, None) or engine.unhealthy() is not None:
        assert time.monotonic() < deadline, engine.unhealthy()
        time.sleep(0.05)


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_no_lifetime_cap_on_restarts(tmp_path: Path) -> None:
    """Killing the same member's worker six times (the old cap was three): it comes back
    every time and answers."""
    spec = make_spec(tmp_path, ["net_a", "net_b"])
    with Engine(spec, max_batch=4) as engine:
        for _ in range(6):
            _kill_and_wait_replaced(engine, "net_b")
            assert engine.infer_sync(_x(2), timeout=30).probabilities.shape == (2, 5)
        assert engine.member_health()["net_b_1"] == (True, 6)


def test_failed_restart_leaves_the_collector_alive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restart that raises (as with the fork server gone: ConnectionRefusedError) must not
    end the collector thread: requests are answered 503 at once, readiness says why, and the
    member comes back by itself once restarts work again."""
    spec = make_spec(tmp_path, ["net_a", "net_b"])
    with Engine(spec, max_batch=4, restart_policy=RestartPolicy(backoff_s=0.2)) as engine:
        real_start = WorkerHandle.start

        def refuse(self: WorkerHandle, *args: object, **kwargs: object) -> None:
            raise ConnectionRefusedError(111, "Connection refused")

        monkeypatch.setattr(WorkerHandle, "start", refuse)
        _kill(_pid(engine, "net_b"))
        deadline = time.monotonic() + 30
        while engine.unhealthy() is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert "net_b_1" in engine.unhealthy()
        with pytest.raises(UnavailableError):
            engine.infer_sync(_x(1), timeout=30)
        time.sleep(1.5)  # several failed restarts in a row
        assert any(t.name == "enserve-collector" and t.is_alive() for t in engine._threads)
        monkeypatch.setattr(WorkerHandle, "start", real_start)
        _wait_ready(engine)
        assert engine.infer_sync(_x(3), timeout=30).probabilities.shape == (3, 5)
        assert engine.member_health()["net_b_1"][0]


def test_crash_loop_backs_off_then_recovers_by_itself(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, ["net_a", "net_b"])
    policy = RestartPolicy(burst=1, window_s=60, backoff_s=1.0)
    with Engine(spec, max_batch=4, restart_policy=policy) as engine:
        _kill_and_wait_replaced(engine, "net_b")  # within the burst: restarted at once
        _kill(_pid(engine, "net_b"))  # beyond it: backs off
        deadline = time.monotonic() + 10
        while engine.stats()["instances"][1]["state"] != "backoff":
            assert time.monotonic() < deadline, engine.stats()["instances"][1]["state"]
            time.sleep(0.01)
        assert engine.unhealthy() is not None
        with pytest.raises(UnavailableError, match="retry later"):
            engine.infer_sync(_x(1), timeout=30)
        _wait_ready(engine)
        assert engine.infer_sync(_x(1), timeout=30).probabilities.shape == (1, 5)


def test_stopped_worker_is_replaced_within_seconds(tmp_path: Path) -> None:
    """SIGSTOP on a worker holding a request: killed and replaced, the request retried and
    answered long before the hang timeout (120 s here)."""
    spec = make_spec(tmp_path, ["net_a", "controlled"])
    with Engine(spec, max_batch=4, task_timeout_s=120) as engine:
        (tmp_path / "slow").write_text("0.5")
        pid = _pid(engine, "controlled")
        future = engine.submit(_x(1))
        time.sleep(0.1)
        os.kill(pid, signal.SIGSTOP)
        (tmp_path / "slow").unlink()
        try:
            assert future.result(timeout=30).probabilities.shape == (1, 5)
        finally:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)  # it was killed
        assert engine.member_health()["controlled_1"][1] == 1


def test_fork_server_killed_costs_no_restart(tmp_path: Path) -> None:
    """Killing the fork server leaves the workers running (no restart counted); a later
    worker crash still restarts (from the server's spare, or a new server)."""
    spec = make_spec(tmp_path, ["net_a", "net_b"])
    with Engine(spec, max_batch=4) as engine:
        before = dict(engine.worker_pids())
        servers = [p for p in psutil.Process().children()
                   if "forkserver" in " ".join(p.cmdline())]
        assert servers, "the engine starts workers from a fork server"
        for p in servers:
            p.kill()
        time.sleep(1.0)
        assert engine.worker_pids() == before
        assert all(up and restarts == 0 for up, restarts in engine.member_health().values())
        assert engine.infer_sync(_x(2), timeout=30).probabilities.shape == (2, 5)
        _kill(_pid(engine, "net_a"))
        _wait_ready(engine)
        assert engine.infer_sync(_x(2), timeout=30).probabilities.shape == (2, 5)
        assert engine.member_health()["net_a_0"] == (True, 1)
    assert worker_children() == []


def test_restart_after_fork_server_death_forks_from_its_spare(tmp_path: Path) -> None:
    """A worker restarted after the fork server was killed is forked by a process that was
    already running (the server's spare, modules imported), not by a new fork server that
    has to import torch and the member code first (seconds)."""
    from enserve.runtime import launch
    from enserve.runtime.memory import tree_pids

    spec = make_spec(tmp_path, ["net_a", "net_b"])
    with Engine(spec, max_batch=4) as engine:
        deadline = time.monotonic() + 60
        while not launch.spare_pids():  # forked in the background once the server is ready
            assert time.monotonic() < deadline, "no spare fork server"
            time.sleep(0.05)
        spares = set(launch.spare_pids().values())
        for pid in launch.server_pids().values():
            os.kill(pid, signal.SIGKILL)
        _kill_and_wait_replaced(engine, "net_a")
        parent = psutil.Process(_pid(engine, "net_a")).ppid()
        assert parent in spares, "the restart started a new fork server"
        # orphaned when the server died, the spare and its workers still count as ours
        counted = tree_pids()
        assert parent in counted and _pid(engine, "net_a") in counted
        assert engine.infer_sync(_x(2), timeout=30).probabilities.shape == (2, 5)
    # The spare that took over is no child of this process: later tests' engines (which
    # look for their workers among this process's descendants) get fresh fork servers.
    for flavor in ("lean", "torch", "fused"):
        launch.stop_server(flavor)  # type: ignore[arg-type]


def test_process_group_sigterm_spares_workers(tmp_path: Path) -> None:
    """SIGTERM to every worker (as a process-group SIGTERM delivers it) does not kill them:
    the engine's owner decides when they stop."""
    spec = make_spec(tmp_path, ["net_a", "net_b"])
    with Engine(spec, max_batch=4) as engine:
        pids = dict(engine.worker_pids())
        for pid in pids.values():
            os.kill(pid, signal.SIGTERM)
        time.sleep(0.5)
        assert engine.worker_pids() == pids and engine.unhealthy() is None
        assert engine.infer_sync(_x(1), timeout=30).probabilities.shape == (1, 5)
    assert worker_children() == []


def test_member_failure_is_a_server_fault(tmp_path: Path) -> None:
    """A worker dying twice on one batch fails it as the server's fault, not the client's."""
    from enserve.errors import MemberFailedError

    spec = make_spec(tmp_path, ["net_a", "controlled"])
    with Engine(spec, max_batch=4) as engine:
        (tmp_path / "crash").write_text("3")  # not 1: a restarted worker warms up on 1 row
        with pytest.raises(MemberFailedError):
            engine.infer_sync(_x(3), timeout=60)
        (tmp_path / "crash").unlink()
        _wait_ready(engine)
        with pytest.raises(InferenceError):  # bad input stays a plain InferenceError (400)
            engine.submit(np.zeros((1, 7), np.float32))
