"""From a plan to worker configurations: which member, variant, device, batch size, thread
count and cores each worker process gets.

The runtime reads plans through duck typing: any object with `.instances` (or a mapping with
an "instances" list) whose items carry `member`, `variant`, `device`, `batch_size` and
`share` works — the planner's `Plan` class, or a plan JSON file loaded as a dict.
"""

from __future__ import annotations

import heapq
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from enserve.errors import PlanError
from enserve.formats.groups import is_fused_variant, parse_group_name
from enserve.spec import EnsembleSpec

DEFAULT_VARIANTS = ("default", "", None)


@dataclass(frozen=True)
class WorkerConfig:
    """Everything one worker process needs to build and run its instance."""

    index: int
    member: str
    variant: str = "default"
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


def _field(item: Any, name: str, default: Any = None) -> Any:
    if isinstance(item, Mapping):
        return item.get(name, default)
    return getattr(item, name, default)


def plan_instances(plan: Any) -> list[Any]:
    """The instance list of a plan object, a plan dict, or a path to a plan JSON file."""
    if isinstance(plan, (str, Path)):
        try:
            plan = json.loads(Path(plan).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise PlanError(f"{plan}: cannot read plan: {exc}") from None
    instances = _field(plan, "instances")
    if not isinstance(instances, Sequence) or isinstance(instances, (str, bytes)):
        raise PlanError("a plan needs an 'instances' list")
    return list(instances)


def predicted_throughput(plan: Any) -> float | None:
    """The plan's predicted ensemble throughput (requests/s), where it carries one."""
    if plan is None or isinstance(plan, (str, Path)):
        return None
    predicted = _field(plan, "predicted")
    value = _field(predicted, "throughput") if predicted is not None else None
    if value is None:
        value = _field(plan, "predicted_throughput")
    return float(value) if isinstance(value, (int, float)) else None


def _covered(spec: EnsembleSpec, index: int, member: Any, variant: Any) -> tuple[str, ...]:
    """() for an ordinary member; the covered members for a fused group's name."""
    names = {m.name for m in spec.members}
    if member in names:
        return ()
    group = parse_group_name(str(member))
    if group is None:
        raise PlanError(f"plan instance {index}: member '{member}' is not in ensemble "
                        f"'{spec.name}'")
    unknown = [m for m in group.covers if m not in names]
    if unknown:
        raise PlanError(f"plan instance {index}: fused group '{member}' covers "
                        f"{', '.join(unknown)}, not in ensemble '{spec.name}'")
    if variant not in DEFAULT_VARIANTS and not is_fused_variant(variant):
        raise PlanError(f"plan instance {index}: fused group '{member}' needs a fused "
                        f"variant (e.g. fused-{group.kind}), got '{variant}'")
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


def configs_from_plan(spec: EnsembleSpec, plan: Any) -> list[WorkerConfig]:
    """One WorkerConfig per planned instance; every member must be computed by exactly one
    unit (its own instances, or a fused group's)."""
    configs: list[WorkerConfig] = []
    names = {m.name for m in spec.members}
    for i, inst in enumerate(plan_instances(plan)):
        member = _field(inst, "member")
        variant = _field(inst, "variant")
        covers = _covered(spec, i, member, variant)
        batch = int(_field(inst, "batch_size", 8) or 8)
        share = float(_field(inst, "share", 1) or 1)
        if batch < 1 or share <= 0:
            raise PlanError(f"plan instance {i} ({member}): batch_size and share must be positive")
        configs.append(
            WorkerConfig(
                index=i,
                member=member,
                variant="default" if variant in DEFAULT_VARIANTS else str(variant),
                device=str(_field(inst, "device", "cpu") or "cpu"),
                batch_size=batch,
                share=share,
                covers=covers,
            )
        )
    execution_units(configs)
    missing = sorted(names - {m for c in configs for m in c.members})
    if missing:
        raise PlanError(f"the plan runs no instance of member(s) {', '.join(missing)}")
    return configs


def default_configs(
    spec: EnsembleSpec, batch_size: int = 8, cores: Sequence[int] | None = None,
    variant: str = "default",
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
