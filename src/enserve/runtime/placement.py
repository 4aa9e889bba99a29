"""From a plan to worker configurations: which member, variant, device, batch size, thread
count and cores each worker process gets, and the calibration that pins CPU instances to
cores once their cost is measured.

The runtime takes a validated `enserve.formats.plan.Plan` only (load a file with
`enserve.plan.load_plan`, write one by hand with `Plan.of`).
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from enserve.errors import PlanError
from enserve.formats.groups import is_fused_variant
from enserve.formats.plan import Instance, Plan
from enserve.spec import EnsembleSpec


@dataclass(frozen=True)
class WorkerConfig:
    """Everything one worker process needs to build and run its instance."""

    index: int
    member: str
    variant: str | None = None  # None: the member's default variant
    device: str = "cpu"
    batch_size: int = 8
    share: float = 1.0
    cores: tuple[int, ...] | None = None
    covers: tuple[str, ...] = ()  # a fused group: the members whose logits it writes

    @property
    def members(self) -> tuple[str, ...]:
        """The ensemble members this instance computes (several for a fused group)."""
        return self.covers or (self.member,)

    @property
    def fused(self) -> bool:
        return bool(self.covers)

    @property
    def is_cpu(self) -> bool:
        return self.device == "cpu" or self.device.startswith("cpu:")

    @property
    def threads(self) -> int:
        """Intra-op threads: the CPU share in cores (at least 1); 1 on a GPU."""
        return max(1, round(self.share)) if self.is_cpu else 1

    @property
    def label(self) -> str:
        return f"{self.member}#{self.index}"


def available_cores() -> tuple[int, ...]:
    return tuple(sorted(os.sched_getaffinity(0)))


def _covered(spec: EnsembleSpec, index: int, inst: Instance) -> tuple[str, ...]:
    """() for an ordinary member; the covered members for a fused group."""
    names = {m.name for m in spec.members}
    if inst.member in names:
        return ()
    group = inst.group
    if group is None:
        raise PlanError(f"plan instance {index}: member '{inst.member}' is not in ensemble "
                        f"'{spec.name}'")
    unknown = [m for m in group.covers if m not in names]
    if unknown:
        raise PlanError(f"plan instance {index}: fused group '{inst.member}' covers "
                        f"{', '.join(unknown)}, not in ensemble '{spec.name}'")
    if inst.variant is not None and not is_fused_variant(inst.variant):
        raise PlanError(f"plan instance {index}: fused group '{inst.member}' needs a fused "
                        f"variant (e.g. fused-{group.kind}), got '{inst.variant}'")
    return group.covers


def execution_units(configs: Sequence[WorkerConfig]) -> dict[str, tuple[str, ...]]:
    """Each planned unit (a member, or a fused group) -> the members it computes.

    Raises PlanError when a member would be computed by two units (e.g. by a fused group
    and by its own instances): each member's logits must have exactly one producer."""
    units: dict[str, tuple[str, ...]] = {}
    producer: dict[str, str] = {}
    for cfg in configs:
        units.setdefault(cfg.member, cfg.members)
        for m in cfg.members:
            other = producer.setdefault(m, cfg.member)
            if other != cfg.member:
                raise PlanError(f"member '{m}' is planned twice: by '{other}' and by "
                                f"'{cfg.member}' (plan with enserve.plan.fusion."
                                "plan_with_fusion, which uses each member once)")
    return units


def configs_from_plan(spec: EnsembleSpec, plan: Plan) -> list[WorkerConfig]:
    """One WorkerConfig per planned instance; every member must be computed by exactly one
    unit (its own instances, or a fused group's)."""
    configs: list[WorkerConfig] = []
    names = {m.name for m in spec.members}
    for i, inst in enumerate(plan.instances):
        configs.append(
            WorkerConfig(
                index=i,
                member=inst.member,
                variant=inst.variant,
                device=inst.device,
                batch_size=inst.batch_size,
                share=inst.share,
                covers=_covered(spec, i, inst),
            )
        )
    execution_units(configs)
    missing = sorted(names - {m for c in configs for m in c.members})
    if missing:
        raise PlanError(f"the plan runs no instance of member(s) {', '.join(missing)}")
    return configs


def default_configs(
    spec: EnsembleSpec, batch_size: int = 8, cores: Sequence[int] | None = None,
    variant: str | None = None,
) -> list[WorkerConfig]:
    """One CPU instance per member; members share the cores (a balanced split is made once
    their warm-up times are known, see `balance_cores`)."""
    n_cores = len(cores or available_cores())
    members = len(spec.members)
    share = max(1, n_cores // members) if members < n_cores else 1
    return [
        WorkerConfig(index=i, member=m.name, variant=variant, batch_size=batch_size, share=share)
        for i, m in enumerate(spec.members)
    ]


def balance_cores(
    configs: Sequence[WorkerConfig], costs: Mapping[int, float], cores: Sequence[int] | None = None
) -> list[WorkerConfig]:
    """Pin CPU instances to cores, longest first onto the least-loaded cores (LPT).

    `costs` maps a config index to its expected busy time per request batch; an instance
    with share k takes the k least-loaded cores. Instances that fill every core get all.
    """
    pool = list(cores or available_cores())
    load = [(0.0, c) for c in pool]
    heapq.heapify(load)
    out: dict[int, WorkerConfig] = {}
    cpu = [c for c in configs if c.is_cpu]
    for cfg in sorted(cpu, key=lambda c: -costs.get(c.index, 1.0)):
        k = min(len(pool), cfg.threads)
        taken = [heapq.heappop(load) for _ in range(k)]
        cost = costs.get(cfg.index, 1.0) / k
        for busy, core in taken:
            heapq.heappush(load, (busy + cost, core))
        out[cfg.index] = replace(cfg, cores=tuple(sorted(core for _, core in taken)))
    return [out.get(c.index, c) for c in configs]


# ----------------------------------------------------------------------------- calibration
def calibration_inputs(fields: Sequence[tuple[str, str, tuple[int, ...]]]) -> dict[str, np.ndarray]:
    """Random inputs (name, dtype, shape) to time each instance with before pinning."""
    rng = np.random.default_rng(0)
    out = {}
    for name, dtype, shape in fields:
        if np.dtype(dtype).kind == "f":
            out[name] = rng.standard_normal(shape).astype(dtype)
        else:
            out[name] = rng.integers(0, 128, size=shape).astype(dtype)
    return out


def measure_costs(configs: Sequence[WorkerConfig], time_rows: Callable[[WorkerConfig, int], float | None],
                  max_batch: int, attempts: int = 2) -> dict[int, float]:
    """Each CPU instance's expected busy time per row: the fastest of `attempts` timed runs
    of one batch of its size (`time_rows(cfg, rows)`, None when it did not answer; less
    noise from other load), divided among the instances of its unit (which share its
    rows). Input to `balance_cores`."""
    replicas: dict[str, int] = {}
    for cfg in configs:
        replicas[cfg.member] = replicas.get(cfg.member, 0) + 1
    costs: dict[int, float] = {}
    for cfg in configs:
        if not cfg.is_cpu:
            continue
        rows = min(cfg.batch_size, max_batch)
        timings = [t for t in (time_rows(cfg, rows) for _ in range(attempts)) if t is not None]
        per_row = min(timings) / rows if timings else 1.0
        costs[cfg.index] = per_row / replicas[cfg.member]
    return costs
