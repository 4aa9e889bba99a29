"""The Ray actor that runs one planned instance (a member, or a fused group).

Created by `RayEngine` pinned to its node (and GPU bundle); it builds the member the way a
local worker does (`enserve.runtime.worker.build_member`; a simulated member directly, so
that its process never imports PyTorch), then answers `run(inputs, start, stop)`: `inputs`
is the batch the engine put into the object store once (Ray hands every actor on a node
the same zero-copy numpy arrays), rows `start:stop` are this chunk.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from enserve.spec import EnsembleSpec


@dataclass(frozen=True)
class ActorConfig:
    """What the actor builds: a plain copy of the instance's WorkerConfig (local device id)."""

    index: int
    member: str
    variant: str | None  # None: the member's default variant
    device: str
    batch_size: int
    share: float
    covers: tuple[str, ...] = ()
    trusted: tuple[str, ...] = ()  # the driver's trusted code (a Ray worker does not inherit
    # the driver's environment, so `--trust-code` travels with the actor)

    @property
    def is_cpu(self) -> bool:
        return self.device == "cpu" or self.device.startswith("cpu:")

    @property
    def threads(self) -> int:
        return max(1, round(self.share)) if self.is_cpu else 1

    @property
    def members(self) -> tuple[str, ...]:
        return self.covers or (self.member,)


class InstanceActor:
    """One planned instance inside a Ray worker process (use through `ray.remote`)."""

    def __init__(self, spec: EnsembleSpec, cfg: ActorConfig) -> None:
        self.cfg = cfg
        if cfg.trusted:
            from enserve.members.trust import add_trusted

            add_trusted(cfg.trusted)
        if not cfg.is_cpu and cfg.share < 100:
            os.environ.setdefault("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", str(round(cfg.share)))
        started = time.perf_counter()
        self.member: Any = _build(spec, cfg)
        self.members = cfg.members
        self.input_names = [spec.input_for(spec.member(m)).name for m in self.members]
        self.load_s = time.perf_counter() - started
        self._running = threading.Lock()  # Ray's calls and the fast lane take turns

    def ready(self, probe: dict[str, np.ndarray],
              lane: tuple[str, bytes] | None = None) -> dict[str, Any]:
        """Warm up on `probe` (one row per input) repeated to the planned batch size, as a
        local worker does (the kernels for the shape it will run); the output shape and this
        process's pid. `lane`: (the driver's private folder, token) to open a fast lane in
        (`enserve.runtime.ray.lane`); its socket's path is returned as `lane`."""
        rows = max(1, self.cfg.batch_size)
        out = self._forward({k: np.repeat(v, rows, axis=0) for k, v in probe.items()}, 0, rows)
        shape = next(iter(out.values())).shape
        info: dict[str, Any] = {"output_shape": [-1, *shape[1:]], "pid": os.getpid(),
                                "load_s": self.load_s}
        if lane is not None and os.path.isdir(lane[0]):  # not there: another machine
            from enserve.runtime.ray.lane import serve_lane

            try:
                info["lane"] = serve_lane(lane[0], lane[1], self.run)
            except OSError as exc:  # e.g. a socket path too long: plain calls, still ready
                info["lane_error"] = f"{type(exc).__name__}: {exc}"
        return info

    def run(self, inputs: dict[str, np.ndarray], start: int, stop: int
            ) -> tuple[dict[str, np.ndarray], float]:
        """Logits of rows start:stop for each member this instance computes, run in pieces
        of the planned batch size, and the compute time."""
        with self._running:
            return self._run(inputs, start, stop)

    def _run(self, inputs: dict[str, np.ndarray], start: int, stop: int
             ) -> tuple[dict[str, np.ndarray], float]:
        t0 = time.perf_counter()
        step = max(1, self.cfg.batch_size)
        pieces = [self._forward(inputs, a, min(stop, a + step)) for a in range(start, stop, step)]
        if len(pieces) == 1:
            return pieces[0], time.perf_counter() - t0
        out = {m: np.concatenate([p[m] for p in pieces]) for m in pieces[0]}
        return out, time.perf_counter() - t0

    def run_graph(self, job: tuple[Any, dict[int, tuple[int, int]]],
                  key: int) -> tuple[dict[str, np.ndarray], float] | None:
        """The compiled-graph form of `run`: `job` is (inputs, actor key -> rows) for the
        whole graph, `key` this actor's; None when it has no rows of this batch. `inputs`
        is the arrays, or for a large batch its object-store reference (read zero-copy)."""
        inputs, spans = job
        span = spans.get(key)
        if span is None:
            return None
        if not isinstance(inputs, dict):
            import ray

            inputs = ray.get(inputs)
        return self.run(inputs, *span)

    def _forward(self, inputs: dict[str, np.ndarray], start: int, stop: int
                 ) -> dict[str, np.ndarray]:
        if self.cfg.covers:  # a FusedMember: every covered member's logits in one run
            rows = {n: inputs[n][start:stop] for n in self.member.input_names}
            stacked = self.member.run_inputs(rows)[0]
            return {m: stacked[i] for i, m in enumerate(self.member.member_names)}
        batch = inputs[self.input_names[0]][start:stop]
        return {self.members[0]: self.member(batch)}


def _build(spec: EnsembleSpec, cfg: ActorConfig) -> Any:
    if not cfg.covers and spec.member(cfg.member).kind == "simulate":
        from enserve.members.preprocess import Preprocessor
        from enserve.members.simulated import load_simulated, parse_target

        m = spec.member(cfg.member)
        where = f"{spec.source_file}: members.{spec.members.index(m)}.source ({m.name})"
        relative, profiled = parse_target(m.target, where)
        simulated = load_simulated(m.name, spec.resolve_path(relative, where), profiled or m.name,
                                num_classes=m.num_classes, seed=m.seed,
                                preprocessor=Preprocessor(m.preprocess), where=where)
        simulated.configure("cpu" if cfg.is_cpu else "cuda", cfg.share)
        return simulated
    from enserve.runtime.placement import WorkerConfig
    from enserve.runtime.worker import build_member

    worker_cfg = WorkerConfig(index=cfg.index, member=cfg.member, variant=cfg.variant,
                              device=cfg.device, batch_size=cfg.batch_size, share=cfg.share,
                              covers=cfg.covers)
    member = build_member(spec, worker_cfg, None)
    if cfg.is_cpu:
        member.set_threads(cfg.threads)
    return member
