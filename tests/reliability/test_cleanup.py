"""Temporary files of a killed server are swept at the next start (defect 10)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from enserve.runtime.scratch import sweep_stale
from tests.helpers.server import start_server


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_sweep_removes_only_what_dead_processes_left(tmp_path: Path) -> None:
    dead = _dead_pid()
    stale = tmp_path / f"enserve-{dead}-1700000000"
    (stale / "pymp-abc").mkdir(parents=True)
    (stale / "enserve-cores-x").mkdir()
    import psutil

    me = psutil.Process()
    mine = tmp_path / f"enserve-{me.pid}-{int(me.create_time())}"
    mine.mkdir()
    reused = tmp_path / f"enserve-{me.pid}-12345"  # our pid, but another process's start time
    reused.mkdir()
    other = tmp_path / "enserve-cores-unrelated"
    other.mkdir()
    shm = tmp_path / "shm"
    shm.mkdir()
    (shm / f"enserve_{dead}_0badc0de").write_bytes(b"x")
    (shm / f"enserve_{me.pid}_0badc0de").write_bytes(b"x")
    removed = sweep_stale(tmp_path, shm)
    assert not stale.exists() and not reused.exists()
    assert mine.exists() and other.exists()
    assert not (shm / f"enserve_{dead}_0badc0de").exists()
    assert (shm / f"enserve_{me.pid}_0badc0de").exists()
    assert len(removed) == 3


def test_killed_engine_server_leaves_nothing_after_next_start(fault_repo: Path, tmp_path: Path) -> None:
    """`kill -9` of a server running the engine leaves its scratch folder (core locks, the
    fork server's pymp-* folder) and shared memory; the next server start removes them."""
    tmp = Path(tempfile.mkdtemp(prefix="e10-", dir="/tmp"))  # short: socket paths live in it
    env_tmp = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmp)
    try:
        first = start_server(fault_repo, tmp_path, "--backend", "engine", "--trust-code", "models.py",
                             models=["tiny"])
        try:
            scratch = [p for p in tmp.iterdir() if p.name.startswith(f"enserve-{first.process.pid}-")]
            assert len(scratch) == 1, list(tmp.iterdir())
            assert any(p.name.startswith("pymp-") for p in scratch[0].iterdir())
            assert not [p for p in tmp.iterdir() if p.name.startswith(("pymp-", "enserve-cores-"))]
            segments = [n for n in os.listdir("/dev/shm") if n.startswith(f"enserve_{first.process.pid}_")]
            assert segments, first.log.read_text()
        finally:
            first.process.send_signal(signal.SIGKILL)
            first.process.wait(10)
        assert scratch[0].exists()  # left behind by the kill
        second = start_server(fault_repo, tmp_path, "--trust-code", "models.py", models=["tiny"])
        try:
            assert not scratch[0].exists()
            assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"enserve_{first.process.pid}_")]
        finally:
            assert second.stop() == 0
        assert not [p for p in tmp.iterdir() if p.name.startswith(f"enserve-{second.process.pid}-")]
    finally:
        if env_tmp is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = env_tmp
        tempfile.tempdir = None
        shutil.rmtree(tmp, ignore_errors=True)
