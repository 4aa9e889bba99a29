"""The Ray backend (`enserve serve --backend ray`): the ensemble's plan as Ray actors on a
cluster (`enserve.runtime.ray.RayEngine`) behind the server's Backend interface.

The plan comes from the ensemble's folder like the local engine's (`plan.json`, else
planned from `profile.json` on the cluster's devices, else one instance per member spread
over the nodes); a plan without node names runs on the server's own node.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from enserve.datatypes import numpy_dtype
from enserve.server.backend import Outcome, Timing
from enserve.server.engine_backend import PLAN_FILE, PROFILE_FILE
from enserve.spec import EnsembleSpec


class RayBackend:
    def __init__(self, spec: EnsembleSpec, address: str | None = None, max_batch: int = 256,
                 max_queue: int = 1024) -> None:
        from enserve.runtime.ray.engine import RayEngine

        self.spec = spec
        plan_file, profile_file = spec.base_dir / PLAN_FILE, spec.base_dir / PROFILE_FILE
        self.engine = RayEngine(
            spec, plan=plan_file if plan_file.is_file() else None,
            profile=profile_file if profile_file.is_file() and not plan_file.is_file() else None,
            address=address, max_batch=max_batch, max_queue=max_queue)
        self.engine.start()
        try:
            probe = {t.name: np.ones((1, *t.shape[1:]), dtype=numpy_dtype(t.datatype))
                     for t in spec.inputs}
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

    def stats(self) -> dict[str, Any]:
        return self.engine.stats()

    def memory_bytes(self) -> int:
        """Host memory held on this machine: none (the actors live on the cluster)."""
        return 0

    def shutdown(self) -> None:
        self.engine.stop()

    async def close(self) -> None:
        await asyncio.to_thread(self.shutdown)
