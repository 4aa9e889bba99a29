"""The runtime engine (one worker process per planned instance) behind the server's Backend.

The engine batches and combines by itself; this adapter starts it (with `plan.json` from
the ensemble's folder, else a plan made from its `profile.json`, else the engine's default
plan), hands it the request's validated inputs, the outputs asked for and the deadline,
and maps its answer onto `Outcome` (per-member times included).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from enserve.formats.plan import Plan, load_plan
from enserve.formats.profile import Profile, load_profile
from enserve.result import ValidInputs
from enserve.server.backend import Outcome, Timing, engine_outcome
from enserve.spec import EnsembleSpec

if TYPE_CHECKING:
    from enserve.profiler.background import BackgroundRefiner

PLAN_FILE = "plan.json"
PROFILE_FILE = "profile.json"


def folder_plan(spec: EnsembleSpec) -> tuple[Plan | None, Profile | None]:
    """The ensemble folder's `plan.json`, else its `profile.json` (to plan from), else
    neither; raises PlanError / ProfileError naming a bad file."""
    plan_file, profile_file = spec.base_dir / PLAN_FILE, spec.base_dir / PROFILE_FILE
    if plan_file.is_file():
        return load_plan(plan_file), None
    if profile_file.is_file():
        return None, load_profile(profile_file)
    return None, None


def _needs_new_plan(plan: Plan | None, profile: Profile | None, plan_policy: str) -> bool:
    """No plan and no profile, or a plan from other hardware that `replan` would redo."""
    if plan is None:
        return profile is None
    from enserve.hardware import current_hardware, hardware_from
    from enserve.plan_policy import mismatch

    return (plan_policy == "replan" and hardware_from(plan.hardware) is not None
            and mismatch(plan, current_hardware()) is not None)


def _say(name: str) -> Callable[[str], None]:
    import sys

    def say(line: str) -> None:
        print(f"{name}: {line}", file=sys.stderr, flush=True)
    return say


class EngineBackend:
    def __init__(self, spec: EnsembleSpec, max_batch: int = 256, max_queue: int = 1024,
                 plan_policy: str = "replan", hang_timeout_s: float | None = 30.0,
                 refine_profile: bool = False, precision: str | None = None) -> None:
        from enserve.runtime.engine import Engine

        self.spec = spec
        self._engine_args: dict[str, Any] = {"max_batch": max_batch, "max_queue": max_queue,
                                             "task_timeout_s": hang_timeout_s}
        self.refiner: BackgroundRefiner | None = None
        plan, profile = folder_plan(spec)
        if refine_profile and _needs_new_plan(plan, profile, plan_policy):
            # A first plan within a minute, refined while serving (docs/profiling.md).
            from enserve.profiler.background import refined_first_plan

            plan, self.refiner = refined_first_plan(spec.base_dir, say=_say(spec.name),
                                                    precision=precision or "auto")
        elif plan is not None:
            from enserve.plan_policy import fit_plan

            plan = fit_plan(spec.base_dir, plan, plan_policy,
                            where=f"{spec.name}: {spec.base_dir / PLAN_FILE}",
                            precision=precision)
        self.engine = Engine(spec, plan, profile=profile, **self._engine_args)
        self.engine.start()
        if self.refiner is not None:
            self.refiner.switch = self.switch_plan
            self.refiner.start()
        shape = self.engine.output_shape  # reported by the workers: no probe request
        self._classes = int(shape[-1]) if shape else None

    def switch_plan(self, plan: Plan) -> None:
        """Start an engine on `plan`, send new requests to it, then stop the old one (it
        finishes what it holds). A request that picked the old engine just before it
        stopped may be refused as unavailable."""
        from enserve.runtime.engine import Engine

        new = Engine(self.spec, plan, **self._engine_args)
        new.start()
        old, self.engine = self.engine, new
        old.stop()

    def output_classes(self) -> int | None:
        return self._classes

    async def infer(self, inputs: ValidInputs, outputs: Sequence[str],
                    deadline: float | None) -> Outcome:
        started = time.perf_counter()
        return engine_outcome(await self.engine.infer(inputs, outputs, deadline), started)

    def unhealthy(self) -> str | None:
        """Why the ensemble cannot answer now (a member without a ready worker), or None."""
        return self.engine.unhealthy()

    def member_health(self) -> dict[str, tuple[bool, int]]:
        return self.engine.member_health()

    async def infer_members(self, inputs: Mapping[str, np.ndarray], members: Sequence[str],
                            answer_by: float | None = None, min_members: int = 1) -> Outcome:
        """Only `members` (their logits included); with `answer_by`, the engine answers then
        with the members done (see `Engine.submit`)."""
        started = time.perf_counter()
        result = await self.engine.infer(inputs, [f"logits_{m}" for m in members],
                                         members=members, answer_by=answer_by,
                                         min_members=min_members)
        total = time.perf_counter() - started
        return Outcome(result, Timing(queue_s=result.queue_s,
                                      compute_s=max(0.0, total - result.queue_s),
                                      member_s=dict(result.member_s)))

    def stats(self) -> dict[str, Any]:
        out = {**self.engine.stats(), "predicted_throughput": self.engine.predicted_throughput}
        if self.refiner is not None:
            out["refinement"] = self.refiner.status().to_dict()
        return out

    def memory_bytes(self) -> int:
        """Memory the engine's worker processes really hold: their PSS, in which pages
        shared between instances (weights mapped from one file, the fork server's
        libraries) count once in total rather than once per process."""
        from enserve.runtime.memory import pids_memory

        return pids_memory(self.engine.worker_pids().values()).pss

    def shutdown(self) -> None:
        if self.refiner is not None:
            self.refiner.stop()
        self.engine.stop()

    async def close(self) -> None:
        await asyncio.to_thread(self.shutdown)
