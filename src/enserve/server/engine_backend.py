"""The runtime engine (one worker process per planned instance) behind the server's Backend.

The engine validates, batches and combines by itself; this adapter only starts it (with
`plan.json` from the ensemble's folder, else a plan made from its `profile.json`, else the
engine's default plan), learns the class count with one
probe request, and maps its answers onto `Outcome`.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from enserve.datatypes import numpy_dtype
from enserve.server.backend import Outcome, Timing
from enserve.spec import EnsembleSpec

PLAN_FILE = "plan.json"
PROFILE_FILE = "profile.json"


def engine_available() -> str | None:
    """None when `enserve.runtime.engine.Engine` can be used, else the reason it can't."""
    try:
        module = importlib.import_module("enserve.runtime.engine")
    except ImportError as exc:
        return f"the runtime engine is not available ({exc})"
    if not hasattr(module, "Engine"):
        return "enserve.runtime.engine has no Engine"
    return None


class EngineBackend:
    def __init__(self, spec: EnsembleSpec, max_batch: int = 256, max_queue: int = 1024,
                 plan_policy: str = "replan", hang_timeout_s: float | None = 30.0) -> None:
        from enserve.runtime.engine import Engine, load_plan_file

        self.spec = spec
        plan_file, profile_file = spec.base_dir / PLAN_FILE, spec.base_dir / PROFILE_FILE
        plan: Any = None
        if plan_file.is_file():
            from enserve.plan_policy import fit_plan

            plan = fit_plan(spec.base_dir, load_plan_file(plan_file), plan_policy,
                            where=f"{spec.name}: {plan_file}")
        self.engine = Engine(
            spec, plan=plan,
            profile=profile_file if profile_file.is_file() and not plan_file.is_file() else None,
            max_batch=max_batch, max_queue=max_queue, task_timeout_s=hang_timeout_s,
        )
        self.engine.start()
        shape = self.engine.output_shape  # reported by the workers: no probe request
        if shape is not None:
            self._classes = int(shape[-1])
            return
        try:
            probe = {
                t.name: np.ones((1, *t.shape[1:]), dtype=numpy_dtype(t.datatype)) for t in spec.inputs
            }
            self._classes = int(self.engine.infer_sync(probe, timeout=120).probabilities.shape[-1])
        except BaseException:
            self.engine.stop()
            raise

    def output_classes(self) -> int | None:
        return self._classes

    async def infer(self, inputs: Mapping[str, np.ndarray], deadline: float | None) -> Outcome:
        started = time.perf_counter()
        result = await self.engine.infer(inputs)
        return Outcome(result, Timing(compute_s=time.perf_counter() - started))

    def unhealthy(self) -> str | None:
        """Why the ensemble cannot answer now (a member without a ready worker), or None."""
        return self.engine.unhealthy()

    def member_health(self) -> dict[str, tuple[bool, int]]:
        return self.engine.member_health()

    def stats(self) -> dict[str, Any]:
        return {**self.engine.stats(), "predicted_throughput": self.engine.predicted_throughput}

    def memory_bytes(self) -> int:
        """Memory the engine's worker processes really hold: their PSS, in which pages
        shared between instances (weights mapped from one file, the fork server's
        libraries) count once in total rather than once per process."""
        from enserve.runtime.memory import pids_memory

        return pids_memory(self.engine.worker_pids().values()).pss

    def shutdown(self) -> None:
        self.engine.stop()

    async def close(self) -> None:
        await asyncio.to_thread(self.shutdown)
