"""The fast lane (`enserve.runtime.ray.lane`) without Ray: the actor's end runs in a child
process (so that it can really be killed), the driver's end here. Answers are handed on,
a member's error comes back as that task's error, a wrong token is refused, and a lane
whose far end dies hands back everything outstanding (never a task left waiting)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from enserve.runtime.ray.lane import Lanes, LaneTaskError

SRC = Path(__file__).resolve().parents[3] / "src"
CHILD = """
import sys, time
from enserve.runtime.ray.lane import serve_lane

def handler(inputs, start, stop):
    if start < 0:
        if start == -1:
            time.sleep(3600)  # hangs until killed
        raise ValueError("member raised")
    return {name: a[start:stop] * 2 for name, a in inputs.items()}

print(serve_lane(sys.argv[1], bytes.fromhex(sys.argv[2]), handler), flush=True)
time.sleep(3600)
"""


class _Sink:
    def __init__(self) -> None:
        self.answers: dict[Any, Future[Any]] = {}
        self.broken: list[tuple[list[Any], str]] = []
        self.changed = threading.Condition()

    def answer(self, sent: Any, done: Future[Any]) -> None:
        with self.changed:
            self.answers[sent] = done
            self.changed.notify_all()

    def lost(self, outstanding: list[Any], why: str) -> None:
        with self.changed:
            self.broken.append((outstanding, why))
            self.changed.notify_all()

    def wait(self, check: Any) -> None:
        with self.changed:
            assert self.changed.wait_for(check, timeout=30)


@pytest.fixture
def lanes() -> Iterator[tuple[Lanes, _Sink]]:
    sink = _Sink()
    hub = Lanes(sink.answer, sink.lost)
    yield hub, sink
    hub.close()
    assert not os.path.exists(hub.folder)


def _actor_end(hub: Lanes, token: bytes | None = None) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", CHILD, hub.folder,
                              (token or hub.token).hex()], stdout=subprocess.PIPE, text=True,
                             env=env)
    assert child.stdout is not None
    return child, child.stdout.readline().strip()


def test_answers_come_back_and_a_members_error_is_that_tasks_error(
        lanes: tuple[Lanes, _Sink]) -> None:
    hub, sink = lanes
    assert stat.S_IMODE(os.stat(hub.folder).st_mode) == 0o700
    child, path = _actor_end(hub)
    try:
        lane = hub.connect(path)
        assert lane is not None
        assert not os.path.exists(path)  # one connection only: the socket file is gone
        x = {"x": np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)}
        assert hub.send(lane, 1, "first", x, 0, 2)
        assert hub.send(lane, 2, "second", x, 2, 5)
        assert hub.send(lane, 3, "bad", x, -2, 0)
        sink.wait(lambda: len(sink.answers) == 3)
        np.testing.assert_array_equal(sink.answers["first"].result()["x"], x["x"][0:2] * 2)
        np.testing.assert_array_equal(sink.answers["second"].result()["x"], x["x"][2:5] * 2)
        with pytest.raises(LaneTaskError, match="member raised"):
            sink.answers["bad"].result()
        assert hub.tasks == 3 and hub.open == 1 and not sink.broken
    finally:
        child.kill()
        child.wait()


def test_a_wrong_token_is_refused(lanes: tuple[Lanes, _Sink]) -> None:
    hub, _sink = lanes
    child, path = _actor_end(hub, token=b"\x01" * len(hub.token))
    try:
        assert hub.connect(path, timeout_s=10) is None
        assert hub.open == 0
    finally:
        child.kill()
        child.wait()


def test_a_killed_actor_end_hands_back_what_is_outstanding(lanes: tuple[Lanes, _Sink]) -> None:
    hub, sink = lanes
    child, path = _actor_end(hub)
    lane = hub.connect(path)
    assert lane is not None
    x = {"x": np.zeros((2, 3), np.float32)}
    assert hub.send(lane, 1, "hangs", x, -1, 0)
    assert hub.send(lane, 2, "queued", x, 0, 1)
    time.sleep(0.2)  # let the child take the first task (the test holds either way)
    child.kill()
    child.wait()
    sink.wait(lambda: bool(sink.broken))
    outstanding, why = sink.broken[0]
    assert sorted(outstanding) == ["hangs", "queued"] and "closed" in why
    assert not sink.answers and hub.broken == 1 and hub.open == 0
    assert not hub.send(lane, 3, "after", x, 0, 1)  # the caller sends it another way


def test_closing_a_lane_returns_its_outstanding_tasks(lanes: tuple[Lanes, _Sink]) -> None:
    hub, sink = lanes
    child, path = _actor_end(hub)
    try:
        lane = hub.connect(path)
        assert lane is not None
        assert hub.send(lane, 1, "hangs", {"x": np.zeros((1, 3), np.float32)}, -1, 0)
        assert hub.close_lane(lane) == ["hangs"]
        assert hub.close_lane(lane) == [] and hub.open == 0
        time.sleep(0.2)  # a closed lane is not reported as broken
        assert not sink.broken and hub.broken == 0
    finally:
        child.kill()
        child.wait()


def test_an_instance_actors_lane_answers_as_its_run_does(lanes: tuple[Lanes, _Sink],
                                                         tmp_path: Path) -> None:
    """The real actor class (no Ray needed to build it): `ready` opens a lane that answers
    as `run` does; a lane that cannot be opened leaves the actor ready, without one."""
    from enserve.runtime.ray.actor import ActorConfig, InstanceActor
    from enserve.spec import load_spec
    from tests.helpers.models import FACTORY_FILE, random_batch

    hub, sink = lanes
    folder = tmp_path / "spec"
    folder.mkdir()
    (folder / "models.py").write_text(FACTORY_FILE)
    (folder / "ensemble.yaml").write_text(
        "name: t\ninputs: [{name: x, datatype: FP32, shape: [-1, 1, 8, 8]}]\n"
        "members:\n  - {name: m, source: 'python:models.py:tiny10'}\ncombiner: mean_prob\n")
    actor = InstanceActor(load_spec(folder), ActorConfig(0, "m", None, "cpu", 4, 1.0))
    probe = {"x": random_batch(1)}
    info = actor.ready(probe, (hub.folder, hub.token))
    lane = hub.connect(info["lane"])
    assert lane is not None
    x = {"x": random_batch(7, seed=3)}
    assert hub.send(lane, 1, "rows", x, 2, 7)
    sink.wait(lambda: "rows" in sink.answers)
    got, _ = sink.answers["rows"].result()
    want, _ = actor.run(x, 2, 7)
    np.testing.assert_array_equal(got["m"], want["m"])
    too_long = tmp_path / ("d" * 110)  # a Unix socket path has at most 108 bytes
    too_long.mkdir()
    info = actor.ready(probe, (str(too_long), hub.token))
    assert "lane" not in info and "too long" in info["lane_error"]
