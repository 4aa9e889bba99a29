"""The Ray backend (`enserve serve --backend ray`): the ensemble's plan as Ray actors on a
cluster (`enserve.runtime.ray.RayEngine`) behind the server's Backend interface.

The plan comes from the ensemble's folder like the local engine's (`plan.json`, else
planned from `profile.json` on the cluster's devices, else one instance per member spread
over the nodes); a plan without node names runs on the server's own node.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from enserve.datatypes import numpy_dtype
from enserve.result import ValidInputs
from enserve.server.backend import Outcome, engine_outcome
from enserve.server.engine_backend import folder_plan
from enserve.spec import EnsembleSpec


class RayBackend:
    def __init__(self, spec: EnsembleSpec, address: str | None = None, max_batch: int = 256,
                 max_queue: int = 1024) -> None:
        from enserve.runtime.ray.engine import RayEngine

        self.spec = spec
        plan, profile = folder_plan(spec)
        self.engine = RayEngine(spec, plan, profile=profile, address=address,
                                max_batch=max_batch, max_queue=max_queue)
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

    async def infer(self, inputs: ValidInputs, outputs: Sequence[str],
                    deadline: float | None) -> Outcome:
        started = time.perf_counter()
        return engine_outcome(await self.engine.infer(inputs, outputs, deadline), started)

    def stats(self) -> dict[str, Any]:
        return self.engine.stats()

    def memory_bytes(self) -> int:
        """Host memory held on this machine: none (the actors live on the cluster)."""
        return 0

    def shutdown(self) -> None:
        self.engine.stop()

    async def close(self) -> None:
        await asyncio.to_thread(self.shutdown)
