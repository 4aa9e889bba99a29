"""The Ray actor that runs one planned instance (a member, or a fused group).

Created by `RayEngine` pinned to its node (and GPU bundle); it builds the member the way a
local worker does (`enserve.runtime.worker.build_member`), then answers `run(inputs, start,
stop)`: `inputs` is the batch the engine put into the object store once (Ray hands every
actor on a node the same zero-copy numpy arrays), rows `start:stop` are this chunk.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Any

import numpy as np

from enserve.cluster import split_device_id
from enserve.runtime.placement import WorkerConfig
from enserve.spec import EnsembleSpec


class InstanceActor:
    """One planned instance inside a Ray worker process (use through `ray.remote`)."""

    def __init__(self, spec: EnsembleSpec, cfg: WorkerConfig) -> None:
        local = replace(cfg, device=split_device_id(cfg.device)[1], cores=None)
        self.cfg = local
        if not local.is_cpu and local.share < 100:
            os.environ.setdefault("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", str(round(local.share)))
        from enserve.runtime.worker import build_member

        started = time.perf_counter()
        self.member: Any = build_member(spec, local, None)
        configure = getattr(self.member, "configure", None)
        if callable(configure):  # a simulated member follows its planned device and share
            configure("cpu" if local.is_cpu else "cuda", local.share)
        if local.is_cpu:
            self.member.set_threads(local.threads)
        self.members = local.members
        self.input_names = [spec.input_for(spec.member(m)).name for m in self.members]
        self.load_s = time.perf_counter() - started

    def ready(self, probe: dict[str, np.ndarray]) -> dict[str, Any]:
        """Warm up on `probe` (one row per input); the output shape and this process's pid."""
        out = self._forward(probe, 0, 1)
        shape = next(iter(out.values())).shape
        return {"output_shape": [-1, *shape[1:]], "pid": os.getpid(), "load_s": self.load_s,
                "node_id": _node_id()}

    def run(self, inputs: dict[str, np.ndarray], start: int, stop: int
            ) -> tuple[dict[str, np.ndarray], float]:
        """Logits of rows start:stop for each member this instance computes, and the
        compute time."""
        t0 = time.perf_counter()
        out = self._forward(inputs, start, stop)
        return out, time.perf_counter() - t0

    def pid(self) -> int:
        return os.getpid()

    def _forward(self, inputs: dict[str, np.ndarray], start: int, stop: int
                 ) -> dict[str, np.ndarray]:
        if self.cfg.fused:  # a FusedMember: every covered member's logits in one run
            rows = {n: inputs[n][start:stop] for n in self.member.input_names}
            stacked = self.member.run_inputs(rows)[0]
            return {m: stacked[i] for i, m in enumerate(self.member.member_names)}
        batch = inputs[self.input_names[0]][start:stop]
        return {self.members[0]: self.member(batch)}


def _node_id() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())
