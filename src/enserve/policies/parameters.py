"""A request's policy parameters (Open Inference Protocol `parameters`), checked.

- `policy`: `full` (every chosen member answers every row) or `cascade` (the calibrated
  cascade of the ensemble's `policy.json`); default: the policy file's `default`
  (`full` for a request with a deadline).
- `members`: a subset of members by name (a list, or a comma-separated string since gRPC
  parameters are scalars); default: all. With `cascade`, stages keep only these members.
- `deadline_ms`: answer within this many milliseconds with the members that made it.
- `min_members`: the fewest members a deadline answer may combine (default 1); fewer by
  the deadline is a timeout error.

Bad values raise `InferenceError` naming the parameter (HTTP 400 / INVALID_ARGUMENT).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from enserve.errors import InferenceError
from enserve.policies.cascade import Cascade, Stage
from enserve.policies.policy_file import POLICIES, Policy, PolicyName
from enserve.spec import EnsembleSpec

MAX_DEADLINE_MS = 3_600_000.0
PARAMETERS = ("policy", "members", "deadline_ms", "min_members")


@dataclass(frozen=True)
class RequestPolicy:
    policy: PolicyName = "full"
    members: tuple[str, ...] | None = None  # None: all members
    deadline_s: float | None = None  # relative to when the request arrived
    min_members: int = 1
    cascade: Cascade | None = None  # the cascade to run (policy == "cascade")

    @property
    def is_default_full(self) -> bool:
        """Nothing asked beyond the plain ensemble."""
        return self.policy == "full" and self.members is None and self.deadline_s is None


def _members(value: Any, spec: EnsembleSpec) -> tuple[str, ...]:
    if isinstance(value, str):
        names = [n.strip() for n in value.split(",") if n.strip()]
    elif isinstance(value, list | tuple) and all(isinstance(n, str) for n in value):
        names = list(value)
    else:
        raise InferenceError("parameter 'members' must be a list of member names or a "
                             f"comma-separated string, got {value!r}")
    known = [m.name for m in spec.members]
    if not names:
        raise InferenceError(f"parameter 'members' is empty; '{spec.name}' has {known}")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InferenceError(f"parameter 'members': unknown member(s) {unknown}; "
                             f"'{spec.name}' has {known}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InferenceError(f"parameter 'members': {repeated} named more than once")
    return tuple(n for n in known if n in names)  # spec order


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InferenceError(f"parameter '{name}' must be a number, got {value!r}")
    return float(value)


def restrict(cascade: Cascade, members: tuple[str, ...]) -> Cascade:
    """The cascade over `members` only (empty stages dropped)."""
    stages = tuple(Stage(tuple(m for m in s.members if m in members), s.threshold)
                   for s in cascade.stages)
    return Cascade(tuple(s for s in stages if s.members), cascade.confidence)


def parse_request_policy(parameters: Mapping[str, Any] | None, spec: EnsembleSpec,
                         policy_file: Policy | None = None) -> RequestPolicy:
    """The request's policy; raises InferenceError for a bad value."""
    parameters = parameters or {}
    policy_file = policy_file or Policy()
    default = "full" if "deadline_ms" in parameters else policy_file.default
    policy = parameters.get("policy", default)
    if policy not in POLICIES:
        raise InferenceError(f"parameter 'policy' must be one of {list(POLICIES)}, got {policy!r}")
    members = _members(parameters["members"], spec) if "members" in parameters else None
    deadline_s = None
    if "deadline_ms" in parameters:
        ms = _number("deadline_ms", parameters["deadline_ms"])
        if not 0 < ms <= MAX_DEADLINE_MS:
            raise InferenceError(f"parameter 'deadline_ms' must be in (0, {MAX_DEADLINE_MS:g}], "
                                 f"got {ms:g}")
        deadline_s = ms / 1000.0
    min_members = 1
    if "min_members" in parameters:
        value = parameters["min_members"]
        if isinstance(value, bool) or not isinstance(value, int):
            raise InferenceError(f"parameter 'min_members' must be an integer, got {value!r}")
        if deadline_s is None:
            raise InferenceError("parameter 'min_members' needs 'deadline_ms'")
        available = len(members) if members is not None else len(spec.members)
        if not 1 <= value <= available:
            raise InferenceError(f"parameter 'min_members' must be in [1, {available}] "
                                 f"(the members asked for), got {value}")
        min_members = value
    cascade = None
    if policy == "cascade":
        if policy_file.cascade is None:
            raise InferenceError(f"parameter 'policy': '{spec.name}' has no calibrated cascade "
                                 f"(run `enserve calibrate` to write its policy.json)")
        if deadline_s is not None:
            raise InferenceError(
                "parameters 'policy': 'cascade' and 'deadline_ms' cannot be combined: "
                "'deadline_ms' applies to policy 'full'. A cascade runs later stages only on "
                "the rows earlier stages left open, so at a deadline each row would have a "
                "different set of members and 'min_members' no single meaning; send "
                "'policy': 'full' with 'deadline_ms', or the cascade without it")
        cascade = policy_file.cascade
        if members is not None:
            cascade = restrict(cascade, members)
    return RequestPolicy(policy, members, deadline_s, min_members, cascade)
