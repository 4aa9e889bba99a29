"""Policies through the data plane (reference backend): member subsets, the cascade of a
policy file, deadline answers with a slowed member, bad parameters, metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from enserve.errors import EnserveError
from enserve.members.slowed import SLOW_ENV, slow_members
from enserve.policies.cascade import NEVER, Cascade, Stage, combine_members
from enserve.policies.policy_file import Policy, save_policy
from enserve.reference import ReferenceExecutor
from enserve.server.backend import ReferenceBackend
from enserve.server.dataplane import DataPlane
from enserve.server.errors import Code, ServerError
from enserve.server.policy import PolicyFiles
from enserve.server.protocol import InferRequest, InferResponse
from enserve.server.repository import ModelRepository
from tests.helpers.policies import make_spec, random_inputs


def _close(plane: DataPlane) -> None:
    for entry in plane.repository.entries.values():
        if entry.loaded is not None:
            entry.loaded.backend.shutdown()


@pytest.fixture()
def plane(tmp_path: Path) -> Iterator[DataPlane]:
    (tmp_path / "quad").mkdir()
    make_spec(tmp_path / "quad")
    plane = DataPlane(ModelRepository(tmp_path, ReferenceBackend, unload_timeout_s=5))
    plane.started = True
    plane.policies = PolicyFiles(recheck_s=0.0)  # these tests rewrite policy.json between requests
    yield plane
    _close(plane)


def _infer(plane: DataPlane, x: np.ndarray, **parameters: Any) -> InferResponse:
    async def main() -> InferResponse:
        entry = plane.repository.entries.get("quad")
        if entry is None or entry.loaded is None:
            await plane.repository.load("quad")
        return await plane.infer(InferRequest("quad", inputs={"x": x}, parameters=parameters))
    return asyncio.run(main())


def _oracle(plane: DataPlane) -> ReferenceExecutor:
    return ReferenceExecutor(make_spec(plane.repository.root / "quad"))


def test_member_subset_combines_only_those(plane: DataPlane) -> None:
    x = random_inputs(6)
    response = _infer(plane, x, members=["d", "b"])
    oracle = _oracle(plane)
    expected, _ = combine_members(oracle.spec, oracle.member_logits({"x": x}), ["b", "d"])
    np.testing.assert_allclose(response.outputs["probabilities"], expected, rtol=1e-6)
    assert response.parameters == {"policy": "full", "members": "b,d"}


def test_full_policy_and_never_exiting_cascade_equal_the_reference(plane: DataPlane) -> None:
    x = random_inputs(9, seed=4)
    expected = _oracle(plane).infer(x).probabilities
    np.testing.assert_array_equal(_infer(plane, x, policy="full").outputs["probabilities"],
                                  expected)
    cascade = Cascade((Stage(("a",), NEVER), Stage(("b", "c")), Stage(("d",))))
    save_policy(Policy("cascade", cascade), plane.repository.root / "quad" / "policy.json")
    response = _infer(plane, x)  # the policy file makes cascade the default
    np.testing.assert_array_equal(response.outputs["probabilities"], expected)
    assert response.parameters["policy"] == "cascade"
    assert response.parameters["cascade_exits"] == "0,0,9"


def test_cascade_exits_are_counted_on_metrics(plane: DataPlane) -> None:
    cascade = Cascade((Stage(("a",), 0.0), Stage(("b", "c", "d"))))
    save_policy(Policy("full", cascade), plane.repository.root / "quad" / "policy.json")
    response = _infer(plane, random_inputs(5), policy="cascade")
    assert response.parameters["cascade_exits"] == "5,0"
    assert response.parameters["members"] == "a"
    text = plane.metrics.render().decode()
    assert 'enserve_cascade_answers_total{model="quad",stage="0"} 5.0' in text


def test_cascade_with_a_deadline_is_400_naming_both(plane: DataPlane) -> None:
    cascade = Cascade((Stage(("a",), 0.0), Stage(("b", "c", "d"))))
    save_policy(Policy("full", cascade), plane.repository.root / "quad" / "policy.json")
    with pytest.raises(ServerError, match="'policy': 'cascade' and 'deadline_ms'") as info:
        _infer(plane, random_inputs(2), policy="cascade", deadline_ms=50)
    assert info.value.code is Code.BAD_REQUEST


@pytest.mark.parametrize("parameters, message", [
    ({"members": ["a", "nope"]}, "unknown member"),
    ({"policy": "cascade"}, "no calibrated cascade"),
    ({"policy": "everything"}, "parameter 'policy' must be one of"),
    ({"deadline_ms": -1}, "deadline_ms"),
    ({"deadline_ms": 50, "min_members": 9}, "min_members"),
])
def test_bad_parameters_are_400(plane: DataPlane, parameters: dict[str, Any], message: str) -> None:
    with pytest.raises(ServerError, match=message) as info:
        _infer(plane, random_inputs(2), **parameters)
    assert info.value.code is Code.BAD_REQUEST


@pytest.fixture()
def slowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], DataPlane]]:
    planes: list[DataPlane] = []

    def make(delays: str) -> DataPlane:
        monkeypatch.setenv(SLOW_ENV, delays)
        (tmp_path / "quad").mkdir()
        make_spec(tmp_path / "quad")
        plane = DataPlane(ModelRepository(tmp_path, ReferenceBackend, unload_timeout_s=5))
        plane.started = True
        planes.append(plane)
        return plane
    yield make
    for plane in planes:
        _close(plane)


def test_deadline_answer_leaves_the_slowed_member_out(slowed) -> None:
    plane = slowed("c=2.0")
    x = random_inputs(4)
    started = time.monotonic()
    response = _infer(plane, x, deadline_ms=800, min_members=1)
    assert time.monotonic() - started < 2.0  # answered before the slowed member finished
    used = response.parameters["members"].split(",")
    assert "c" not in used and response.parameters["partial"] is True
    oracle = _oracle(plane)
    expected, _ = combine_members(oracle.spec, oracle.member_logits({"x": x}), used)
    np.testing.assert_allclose(response.outputs["probabilities"], expected, rtol=1e-6)
    text = plane.metrics.render().decode()
    assert 'enserve_partial_answers_total{model="quad"} 1.0' in text
    assert 'enserve_member_late_total{member="c",model="quad"} 1.0' in text
    # lateness: every member once, the one left out too (at the answer's time)
    for member in "abcd":
        assert (f'enserve_member_lateness_seconds_count{{member="{member}",model="quad"}} 1.0'
                in text)


def test_deadline_with_every_member_in_time_is_whole(plane: DataPlane) -> None:
    x = random_inputs(3)
    response = _infer(plane, x, deadline_ms=5000, min_members=4)
    assert response.parameters == {"policy": "full", "members": "a,b,c,d", "partial": False}
    np.testing.assert_allclose(response.outputs["probabilities"],
                               _oracle(plane).infer(x).probabilities, rtol=1e-6)


def test_too_few_members_by_the_deadline_is_a_timeout(slowed) -> None:
    plane = slowed("a=2.0,b=2.0")
    with pytest.raises(ServerError, match="min_members is 3") as info:
        _infer(plane, random_inputs(2), deadline_ms=300, min_members=3)
    assert info.value.code is Code.TIMEOUT and info.value.code.http_status == 504
    text = plane.metrics.render().decode()
    assert 'enserve_deadline_exceeded_total{model="quad"} 1.0' in text


def test_slow_member_hook_parsing() -> None:
    assert slow_members({SLOW_ENV: "a=0.5, b=0"}) == {"a": 0.5, "b": 0.0}
    assert slow_members({}) == {}
    with pytest.raises(EnserveError, match="not MEMBER=SECONDS"):
        slow_members({SLOW_ENV: "a:0.5"})


def test_grpc_response_carries_the_policy_parameters() -> None:
    from enserve.server.grpc import encode_response

    response = InferResponse("quad", "1", "", {"probabilities": np.zeros((1, 5), np.float32)},
                             {"policy": "full", "members": "a,b", "partial": True, "rows": 3})
    params = encode_response(response).parameters
    assert params["members"].string_param == "a,b"
    assert params["partial"].bool_param is True
    assert params["rows"].int64_param == 3


def test_policy_file_is_looked_at_once_per_recheck_period(tmp_path: Path) -> None:
    (tmp_path / "quad").mkdir()
    spec = make_spec(tmp_path / "quad")
    now = [0.0]
    files = PolicyFiles(recheck_s=1.0, clock=lambda: now[0])
    assert files.policy(spec).default == "full"
    save_policy(Policy("cascade", Cascade((Stage(("a",), NEVER), Stage(("b", "c", "d"))))),
                tmp_path / "quad" / "policy.json")
    now[0] = 0.5
    assert files.policy(spec).default == "full"  # not looked at again yet
    now[0] = 1.5
    assert files.policy(spec).default == "cascade"
    (tmp_path / "quad" / "policy.json").unlink()
    now[0] = 3.0
    assert files.policy(spec).default == "full"
