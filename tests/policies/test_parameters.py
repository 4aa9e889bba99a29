"""Request policy parameters and the policy file: good values parse, bad ones are named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from enserve.errors import InferenceError, SpecError
from enserve.policies.cascade import Cascade, Stage
from enserve.policies.parameters import parse_request_policy
from enserve.policies.policy_file import Policy, load_policy, save_policy, spec_policy

CASCADE = Cascade((Stage(("a",), 0.9), Stage(("b",), 0.8), Stage(("c", "d"))))


def test_defaults_and_good_values(quad) -> None:
    plain = parse_request_policy({}, quad)
    assert plain.policy == "full" and plain.members is None and plain.is_default_full
    chosen = parse_request_policy({"members": ["d", "b"], "deadline_ms": 20,
                                   "min_members": 2}, quad)
    assert chosen.members == ("b", "d")  # spec order
    assert chosen.deadline_s == pytest.approx(0.02) and chosen.min_members == 2
    assert parse_request_policy({"members": "a, c"}, quad).members == ("a", "c")
    policy = Policy("cascade", CASCADE)
    assert parse_request_policy({}, quad, policy).cascade == CASCADE
    assert parse_request_policy({"policy": "full"}, quad, policy).cascade is None
    # a deadline without a policy means the full ensemble, even where cascade is the default
    assert parse_request_policy({"deadline_ms": 5}, quad, policy).policy == "full"
    restricted = parse_request_policy({"policy": "cascade", "members": ["a", "c"]}, quad, policy)
    assert restricted.cascade is not None
    assert [s.members for s in restricted.cascade.stages] == [("a",), ("c",)]


@pytest.mark.parametrize("parameters, message", [
    ({"policy": "fastest"}, "parameter 'policy' must be one of"),
    ({"policy": 3}, "parameter 'policy' must be one of"),
    ({"policy": "cascade"}, "no calibrated cascade"),
    ({"members": []}, "'members' is empty"),
    ({"members": ["a", "zz"]}, r"unknown member\(s\) \['zz'\]"),
    ({"members": ["a", "a"]}, "named more than once"),
    ({"members": 7}, "must be a list of member names"),
    ({"deadline_ms": 0}, "'deadline_ms' must be in"),
    ({"deadline_ms": -5}, "'deadline_ms' must be in"),
    ({"deadline_ms": "soon"}, "'deadline_ms' must be a number"),
    ({"deadline_ms": True}, "'deadline_ms' must be a number"),
    ({"min_members": 2}, "'min_members' needs 'deadline_ms'"),
    ({"deadline_ms": 10, "min_members": 5}, r"'min_members' must be in \[1, 4\]"),
    ({"deadline_ms": 10, "min_members": 3, "members": ["a", "b"]},
     r"'min_members' must be in \[1, 2\]"),
    ({"deadline_ms": 10, "min_members": 1.5}, "'min_members' must be an integer"),
])
def test_bad_values_are_named(quad, parameters, message) -> None:
    with pytest.raises(InferenceError, match=message):
        parse_request_policy(parameters, quad)


def test_cascade_with_deadline_is_refused(quad) -> None:
    with pytest.raises(InferenceError, match="'cascade' and 'deadline_ms' cannot be combined"):
        parse_request_policy({"policy": "cascade", "deadline_ms": 5}, quad,
                             Policy("cascade", CASCADE))


def test_policy_file_round_trip(quad, tmp_path: Path) -> None:
    policy = Policy("cascade", CASCADE, {"a": 1.0, "b": 0.4, "c": 0.1, "d": 0.1},
                    {"rows": 10})
    save_policy(policy, quad.base_dir / "policy.json")
    loaded = spec_policy(quad)
    assert loaded.cascade == CASCADE and loaded.default == "cascade"
    assert loaded.reach == policy.reach and loaded.calibration == {"rows": 10}
    assert spec_policy(quad.model_copy(update={"base_dir": tmp_path / "nowhere"})).default == "full"


@pytest.mark.parametrize("data, message", [
    ({"default": "cascade"}, "'cascade' needs a 'cascade' section"),
    ({"cascade": {"stages": [{"members": ["a", "b"]}]}}, "in no stage"),
    ({"cascade": {"stages": [{"members": ["a", "b", "c", "d"], "threshold": -1}]}},
     "field 'cascade.stages.0.threshold'"),
    ({"cascade": {"confidence": "entropy", "stages": [{"members": ["a", "b", "c", "d"]}]}},
     "field 'cascade.confidence'"),
    ({"reach": {"zz": 0.5}}, "not a member"),
    ({"reach": {"a": 1.5}}, r"not in \[0, 1\]"),
    ({"surprise": 1}, "field 'surprise'"),
])
def test_bad_policy_files_are_named(quad, data, message) -> None:
    path = quad.base_dir / "policy.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SpecError, match=message) as info:
        load_policy(path, quad)
    assert str(path) in str(info.value)


def test_unreadable_policy_file(quad) -> None:
    path = quad.base_dir / "policy.json"
    path.write_text("{not json")
    with pytest.raises(SpecError, match="cannot read policy file"):
        load_policy(path, quad)
