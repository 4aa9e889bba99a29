"""The engine's ordered read of the workers' weight files (`runtime.prefetch`)."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

import pytest

from enserve.members import onnx_shared
from enserve.members.onnx_member import OnnxMember
from enserve.members.onnx_shared import read_ahead
from enserve.runtime import prefetch
from enserve.runtime.launch import weight_files
from enserve.runtime.prefetch import OrderedRead, read_order, read_whole, wait_until_read
from enserve.spec import spec_from_dict
from tests.helpers.onnx_models import write_linear_onnx


def _file(path: Path, size: int) -> Path:
    path.write_bytes(b"\0" * size)
    return path


def test_small_model_files_first_then_biggest_member(tmp_path: Path) -> None:
    small = [_file(tmp_path / f"{n}.onnx", 10) for n in ("a", "b", "c")]
    data = [_file(tmp_path / f"{n}.data", s) for n, s in (("a", 200), ("b", 900), ("c", 500))]
    missing = [tmp_path / "gone.onnx", tmp_path / "gone.data"]
    groups = [[small[0], data[0]], [small[1], data[1]], missing, [], [small[2], data[2]]]
    assert read_order(groups) == [*small, data[1], data[2], data[0]]


def test_repeated_files_read_once(tmp_path: Path) -> None:
    f = _file(tmp_path / "a.data", 100)
    assert read_order([[f], [f]]) == [f]


def test_reads_in_order_and_unlocks_each_file_after_its_read(tmp_path: Path) -> None:
    files = [_file(tmp_path / f"{n}.data", 100) for n in "abc"]
    seen: list[tuple[int, int]] = []
    go = threading.Event()

    def fake_read(fd: int) -> None:
        go.wait(10)
        seen.append((os.fstat(fd).st_ino, len(seen)))

    reader = OrderedRead(files, read=fake_read)
    fd = os.open(files[2], os.O_RDONLY)
    try:  # locked while queued: a worker's read-ahead would fail to take it
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            raise AssertionError("queued file not locked")
        except BlockingIOError:
            pass
        go.set()
        assert reader.wait(10)
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # free once read
    finally:
        os.close(fd)
    assert [ino for ino, _ in seen] == [f.stat().st_ino for f in files]


def test_a_worker_waits_for_its_files_to_be_read_not_for_the_rest(tmp_path: Path) -> None:
    mine, other = _file(tmp_path / "mine.data", 100), _file(tmp_path / "other.data", 100)
    unread = _file(tmp_path / "nobody.data", 100)
    read_mine, read_other = threading.Event(), threading.Event()

    def fake_read(fd: int) -> None:
        (read_mine if os.fstat(fd).st_ino == mine.stat().st_ino else read_other).wait(10)

    reader = OrderedRead([mine, other], read=fake_read)
    waiter = threading.Thread(target=wait_until_read, args=([mine, unread],), daemon=True)
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive()  # its file is still being read
    read_mine.set()
    waiter.join(10)
    assert not waiter.is_alive()  # done although the other file is not read yet
    wait_until_read([tmp_path / "missing.data"])  # a file that is not there: no wait
    read_other.set()
    assert reader.wait(10)


def test_close_drops_unread_files(tmp_path: Path) -> None:
    files = [_file(tmp_path / f"{n}.data", 100) for n in "ab"]
    started, go = threading.Event(), threading.Event()
    seen: list[int] = []

    def fake_read(fd: int) -> None:
        started.set()
        go.wait(10)
        seen.append(os.fstat(fd).st_ino)

    reader = OrderedRead(files, read=fake_read)
    started.wait(10)
    reader.close(timeout_s=0)  # while the first file is being read
    go.set()
    reader.close(timeout_s=10)
    assert seen == [files[0].stat().st_ino]


def test_worker_read_ahead_leaves_a_locked_file_alone(tmp_path: Path, monkeypatch) -> None:
    f = _file(tmp_path / "a.data", 100)
    advised: list[int] = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, *a: advised.append(fd))
    holder = os.open(f, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        read_ahead(f)
        assert advised == []
    finally:
        os.close(holder)
    read_ahead(f)
    assert len(advised) == 1


def test_read_whole_reads_every_byte(tmp_path: Path) -> None:
    f = _file(tmp_path / "a.data", 3 << 20)
    fd = os.open(f, os.O_RDONLY)
    try:
        read_whole(fd)  # no error, returns after the whole file
    finally:
        os.close(fd)


def test_weight_files_are_the_optimized_copy_once_written(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENSERVE_CACHE_DIR", str(tmp_path / "cache"))
    write_linear_onnx(tmp_path / "m.onnx", 300, 5, seed=1)  # weights big enough to store apart
    spec = spec_from_dict(
        {"name": "one", "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3, 10, 10]}],
         "members": [{"name": "m", "source": "onnx:m.onnx"}], "combiner": "mean_prob"},
        base_dir=tmp_path, where=str(tmp_path / "ensemble.yaml"))
    hashed: list[Path] = []
    with monkeypatch.context() as patched:  # not optimized yet: the worker hashes and writes it
        patched.setattr(onnx_shared, "_file_digest", lambda path: hashed.append(path) or "0" * 64)
        assert weight_files(spec, "m", None) == []
    assert hashed == []  # the engine reads none of the model's bytes
    OnnxMember("m", tmp_path / "m.onnx")
    found = weight_files(spec, "m", None)
    assert [p.suffix for p in found] == [".onnx", ".data"]
    assert all(p.is_relative_to(tmp_path / "cache") for p in found)
    assert weight_files(spec, "m", None, device="cuda:0") == []


def test_workers_forked_from_the_engine_do_not_hold_its_read_locks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With `start_method="fork"` each worker gets copies of the reader's locked files; it
    must let them go, or its wait for its own weights would never end."""
    import numpy as np

    from enserve.reference import ReferenceExecutor
    from enserve.runtime import Engine

    monkeypatch.setenv("ENSERVE_CACHE_DIR", str(tmp_path / "cache"))
    for i, name in enumerate(("a", "b")):
        write_linear_onnx(tmp_path / f"{name}.onnx", 300, 5, seed=i)
    spec = spec_from_dict(
        {"name": "two", "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3, 10, 10]}],
         "members": [{"name": n, "source": f"onnx:{n}.onnx"} for n in ("a", "b")],
         "combiner": "mean_prob"},
        base_dir=tmp_path, where=str(tmp_path / "ensemble.yaml"))
    x = np.random.default_rng(11).standard_normal((3, 3, 10, 10)).astype(np.float32)
    expected = ReferenceExecutor(spec).infer(x)
    with Engine(spec, max_batch=4, pin=False) as engine:  # writes the optimized copies
        engine.infer_sync(x, timeout=60)
    assert weight_files(spec, "a", None)  # so the next engine locks and reads them

    def slow_read(fd: int) -> None:  # the workers fork while the files are still locked
        time.sleep(0.5)
        read_whole(fd)

    monkeypatch.setattr(prefetch, "read_whole", slow_read)
    with Engine(spec, max_batch=4, pin=False, start_method="fork") as engine:
        result = engine.infer_sync(x, timeout=60)
    np.testing.assert_allclose(result.probabilities, expected.probabilities, rtol=1e-5, atol=1e-6)
