"""Request policies in the server: a member subset, the calibrated cascade, answers at a
deadline from the members that made it (see `enserve.policies`).

A backend that can run part of the ensemble offers `infer_members` (`MemberBackend`);
everything else here only drives it: a cascade is one `infer_members` call per stage on
the rows still open, so the engine's batcher gathers a stage's rows from concurrent
requests into one batch (re-batching).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from enserve.policies.cascade import CascadeRun
from enserve.policies.parameters import RequestPolicy, parse_request_policy
from enserve.policies.policy_file import POLICY_FILE, Policy, load_policy
from enserve.result import EnsembleResult
from enserve.server.backend import Outcome, Timing
from enserve.server.errors import Code, ServerError
from enserve.spec import EnsembleSpec


@runtime_checkable
class MemberBackend(Protocol):
    async def infer_members(self, inputs: Mapping[str, np.ndarray], members: Sequence[str],
                            answer_by: float | None = None, min_members: int = 1) -> Outcome:
        """Run only `members` (their logits come back in `member_logits`) and combine them.
        With `answer_by` (time.monotonic()), answer then with the members done if at least
        `min_members` are (`result.members` names them), else raise a TIMEOUT ServerError;
        work not started by then is dropped."""


@dataclass
class PolicyOutcome:
    outcome: Outcome
    parameters: dict[str, Any] = field(default_factory=dict)  # for the response
    stage_rows: list[int] | None = None  # a cascade's rows answered per stage
    late: tuple[str, ...] = ()  # members left out of a deadline answer


class PolicyFiles:
    """Each ensemble's `policy.json`, read once per change of the file; the file is looked
    at (one `stat`) at most every `recheck_s` seconds, not on every request."""

    def __init__(self, recheck_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.recheck_s = recheck_s
        self._clock = clock
        self._cache: dict[Path, tuple[float | None, Policy]] = {}  # path -> (mtime, policy)
        self._checked: dict[Path, float] = {}  # path -> when its mtime was last read

    def policy(self, spec: EnsembleSpec) -> Policy:
        path = spec.base_dir / POLICY_FILE
        now = self._clock()
        cached = self._cache.get(path)
        if cached is not None and now - self._checked.get(path, -math.inf) < self.recheck_s:
            return cached[1]
        self._checked[path] = now
        try:
            mtime: float | None = path.stat().st_mtime
        except FileNotFoundError:
            mtime = None
        if cached is None or cached[0] != mtime:
            cached = self._cache[path] = (mtime, Policy() if mtime is None else load_policy(path, spec))
        return cached[1]

    def request(self, spec: EnsembleSpec, parameters: Mapping[str, Any] | None) -> RequestPolicy:
        return parse_request_policy(parameters, spec, self.policy(spec))


def _member_backend(backend: object) -> MemberBackend:
    if not isinstance(backend, MemberBackend):
        raise ServerError(f"the {type(backend).__name__} cannot run part of an ensemble "
                          "(parameters 'members', 'policy', 'deadline_ms')")
    return backend


async def run_policy(backend: object, spec: EnsembleSpec, inputs: Mapping[str, np.ndarray],
                     policy: RequestPolicy, arrived: float) -> PolicyOutcome:
    """Answer `inputs` as `policy` asks (not the plain full ensemble: the caller's path)."""
    runner = _member_backend(backend)
    if policy.cascade is not None:
        return await _cascade(runner, spec, inputs, policy)
    members = policy.members or tuple(m.name for m in spec.members)
    answer_by = arrived + policy.deadline_s if policy.deadline_s is not None else None
    outcome = await runner.infer_members(inputs, members, answer_by, policy.min_members)
    used = outcome.result.members or members
    late = tuple(m for m in members if m not in used)
    params: dict[str, Any] = {"policy": "full", "members": ",".join(used)}
    if answer_by is not None:
        params["partial"] = bool(late)
    return PolicyOutcome(outcome, params, None, late)


async def _cascade(runner: MemberBackend, spec: EnsembleSpec, inputs: Mapping[str, np.ndarray],
                   policy: RequestPolicy) -> PolicyOutcome:
    assert policy.cascade is not None
    run = CascadeRun(spec, policy.cascade, inputs)
    timing = Timing()
    started = time.perf_counter()
    while (step := run.next_stage()) is not None:
        stage, part = step
        outcome = await runner.infer_members(part, stage.members)
        timing.queue_s += outcome.timing.queue_s
        timing.member_s.update(outcome.timing.member_s)
        timing.combine_s += outcome.timing.combine_s
        run.feed(outcome.result.member_logits)
    timing.compute_s = time.perf_counter() - started
    answer = run.result()
    stages = len(policy.cascade.stages)
    exits = answer.exits(stages)
    result = answer.result
    reached = tuple(m.name for m in spec.members if m.name in answer.member_rows)
    params = {"policy": "cascade", "members": ",".join(reached),
              "cascade_exits": ",".join(str(n) for n in exits)}
    return PolicyOutcome(Outcome(EnsembleResult(result.probabilities, result.agreement,
                                                result.member_logits, members=reached), timing),
                         params, exits)


def deadline_error(members: Sequence[str], done: Sequence[str], min_members: int,
                   deadline_s: float) -> ServerError:
    return ServerError(
        f"deadline of {deadline_s * 1000:g} ms passed with {len(done)} of {len(members)} "
        f"members answered ({', '.join(done) or 'none'}); min_members is {min_members}",
        Code.TIMEOUT)
