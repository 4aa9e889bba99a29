"""The planning problem: the options each member can run as, on the devices we plan for.

An *option* is one profile entry made concrete on a plan device: (member, variant, device,
batch size, share) with its latency and memory. A plan is a count of instances per option.
Algorithms work on count vectors over `Problem.options`; `to_plan` turns one into a `Plan`.

Profile entries are looked up by device id. A plan device whose id has no entries borrows
the entries of the first profile device of the same kind (same-kind devices are assumed to
run at the same speed); its own memory and compute units still apply.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from enserve.devices import Device
from enserve.errors import PlanError, ProfileError
from enserve.formats.plan import OBJECTIVES, Instance
from enserve.formats.profile import Profile, ProfileEntry

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
EPS = 1e-9


def group_sum(index: IntArray, weights: npt.ArrayLike, length: int) -> FloatArray:
    """Sum `weights` by `index` (np.bincount, typed as float)."""
    return np.asarray(np.bincount(index, weights=weights, minlength=length), dtype=np.float64)


@dataclass(frozen=True)
class Constraints:
    """Optional limits a plan must respect.

    max_latency_s: bound on the predicted completion time of a batch (combine included).
    min_throughput: samples/s the plan must sustain (useful with the latency objective).
    memory_headroom: fraction of each device's memory kept free (0.1 = use at most 90%).
    time_sharing: allow instances whose shares sum above a device's compute units
        (they then time-share it, see `enserve.plan.cost`); False = partitions only.
    max_instances_per_device: cap on instances per device (keeps plans and searches small).
    """

    max_latency_s: float | None = None
    min_throughput: float | None = None
    memory_headroom: float = 0.0
    time_sharing: bool = True
    max_instances_per_device: int = 16

    def __post_init__(self) -> None:
        if self.max_latency_s is not None and not self.max_latency_s > 0:
            raise PlanError("max_latency_s must be positive")
        if self.min_throughput is not None and not self.min_throughput > 0:
            raise PlanError("min_throughput must be positive")
        if not 0 <= self.memory_headroom < 1:
            raise PlanError("memory_headroom must be a fraction in [0, 1)")
        if self.max_instances_per_device < 1:
            raise PlanError("max_instances_per_device must be at least 1")


@dataclass(frozen=True)
class Option:
    member: str
    variant: str | None
    device: str
    batch_size: int
    share: float
    latency_s: float
    memory_bytes: int

    @property
    def capacity(self) -> float:
        """Samples per second one instance sustains while it has its share to itself."""
        return self.batch_size / self.latency_s

    def instance(self) -> Instance:
        return Instance(self.member, self.variant, self.device, self.batch_size, self.share,
                        self.memory_bytes)


@dataclass(frozen=True, eq=False)
class Problem:
    """Devices, members and options, with the per-option numbers as numpy arrays."""

    devices: tuple[Device, ...]
    members: tuple[str, ...]
    options: tuple[Option, ...]
    objective: str
    constraints: Constraints
    combine_s: float
    opt_member: IntArray
    opt_device: IntArray
    cap: FloatArray
    share: FloatArray
    lat: FloatArray
    mem: FloatArray
    work: FloatArray  # latency x share: compute-unit-seconds one batch takes
    units: FloatArray  # per device
    usable_mem: FloatArray  # per device, after headroom
    max_count: IntArray  # per option: most instances that could ever be placed
    opt_config: IntArray  # per option: id of (member, variant, batch size, share)
    default_variants: tuple[str | None, ...] = ()  # per member, from the profile

    @property
    def n_members(self) -> int:
        return len(self.members)

    @property
    def n_devices(self) -> int:
        return len(self.devices)

    def options_of(self, member: int) -> IntArray:
        return np.flatnonzero(self.opt_member == member)

    def options_on(self, device: int) -> IntArray:
        return np.flatnonzero(self.opt_device == device)

    def zero_counts(self) -> IntArray:
        return np.zeros(len(self.options), dtype=np.int64)


def _entries_by_device(profile: Profile, devices: Sequence[Device]) -> dict[str, list[ProfileEntry]]:
    grouped: dict[str, list[ProfileEntry]] = {}
    for entry in profile.entries:
        grouped.setdefault(entry.device, []).append(entry)
    result: dict[str, list[ProfileEntry]] = {}
    for device in devices:
        if device.id in grouped:
            result[device.id] = grouped[device.id]
            continue
        for source in profile.devices:
            if source.kind == device.kind and source.id in grouped:
                result[device.id] = grouped[source.id]
                break
        else:
            result[device.id] = []
    return result


def build_problem(
    profile: Profile,
    devices: Sequence[Device] | None = None,
    objective: str = "throughput",
    constraints: Constraints | None = None,
    *,
    prune: bool = True,
    require_all_members: bool = True,
    filter_options: bool = True,
) -> Problem:
    """Turn a profile into options on `devices` (default: the profile's own devices).

    Drops options that can never be used (share above the device, memory above the usable
    memory, latency above the bound) and, when `prune`, options dominated by another option
    of the same member on the same device. Raises PlanError naming a member left with none.
    """
    if objective not in OBJECTIVES:
        raise PlanError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
    constraints = constraints or Constraints()
    devices = tuple(devices) if devices is not None else tuple(profile.device_list())
    if not devices:
        raise PlanError("no devices to plan for")
    if len({d.id for d in devices}) != len(devices):
        raise PlanError("device ids must be unique")
    members = tuple(profile.member_names())
    usable = [d.memory_bytes * (1.0 - constraints.memory_headroom) for d in devices]
    latency_budget = None
    if constraints.max_latency_s is not None:
        latency_budget = constraints.max_latency_s - profile.combine_s
    by_device = _entries_by_device(profile, devices)

    options: list[Option] = []
    for device, mem_limit in zip(devices, usable, strict=True):
        for e in by_device[device.id]:
            if filter_options and (
                e.share > device.compute_units + EPS
                or e.memory_bytes > mem_limit
                or (latency_budget is not None and e.latency_s > latency_budget + EPS)
            ):
                continue
            options.append(Option(e.member, e.variant, device.id, e.batch_size, e.share,
                                  e.latency_s, e.memory_bytes))
    if prune:
        latency_matters = objective == "latency" or constraints.max_latency_s is not None
        options = _prune_dominated(options, latency_matters)
    member_index = {m: i for i, m in enumerate(members)}
    options.sort(key=lambda o: (member_index[o.member], o.device, o.variant or "", o.batch_size,
                                o.share))
    if require_all_members:
        _check_every_member_has_options(profile, devices, usable, latency_budget, options)

    device_index = {d.id: j for j, d in enumerate(devices)}
    opt_device = np.array([device_index[o.device] for o in options], dtype=np.int64)
    mem = np.array([float(o.memory_bytes) for o in options])
    usable_arr = np.array(usable, dtype=np.float64)
    per_device_cap = constraints.max_instances_per_device
    with np.errstate(divide="ignore"):
        by_memory = np.where(mem > 0, np.floor(usable_arr[opt_device] / np.maximum(mem, 1.0)),
                             per_device_cap)
    max_count = np.minimum(by_memory, per_device_cap).astype(np.int64)
    lat = np.array([o.latency_s for o in options])
    share = np.array([o.share for o in options])
    cap = np.array([o.capacity for o in options])
    if options:
        max_count = _useful_counts(cap, share, mem, max_count, opt_device, usable_arr,
                                   np.array([d.compute_units for d in devices]),
                                   [member_index[o.member] for o in options], len(members))
    configs: dict[tuple[str, str | None, int, float], int] = {}
    opt_config = np.array([configs.setdefault((o.member, o.variant, o.batch_size, o.share),
                                              len(configs)) for o in options], dtype=np.int64)
    return Problem(
        devices=devices,
        members=members,
        options=tuple(options),
        objective=objective,
        constraints=constraints,
        combine_s=profile.combine_s,
        opt_member=np.array([member_index[o.member] for o in options], dtype=np.int64),
        opt_device=opt_device,
        cap=cap,
        share=share,
        lat=lat,
        mem=mem,
        work=lat * share,
        units=np.array([d.compute_units for d in devices], dtype=np.float64),
        usable_mem=usable_arr,
        max_count=max_count,
        opt_config=opt_config,
        default_variants=tuple(m.default_variant for m in profile.members),
    )


def _useful_counts(cap: FloatArray, share: FloatArray, mem: FloatArray, max_count: IntArray,
                   opt_device: IntArray, usable: FloatArray, units: FloatArray,
                   opt_member: list[int], n_members: int) -> IntArray:
    """Tighten per-option counts: no plan sustains more than X_ub = min over members of
    what each device could give that member alone (compute x best samples per unit, memory x
    best samples per byte, slots x best instance), and more than ceil(X_ub / c_k) instances
    of an option are never needed (dropping one still leaves enough capacity)."""
    member = np.array(opt_member)
    per_unit = cap / share
    per_byte = cap / np.maximum(mem, 1.0)
    slots = max_count.max(initial=0)
    upper = np.inf
    for i in range(n_members):
        total = 0.0
        for d in range(len(units)):
            here = (member == i) & (opt_device == d) & (max_count > 0)
            if here.any():
                total += min(units[d] * per_unit[here].max(), usable[d] * per_byte[here].max(),
                             slots * cap[here].max())
        upper = min(upper, total)
    if not np.isfinite(upper):
        return max_count
    needed = np.ceil(upper / cap * (1 + 1e-9)).astype(np.int64)
    return np.asarray(np.minimum(max_count, np.maximum(needed, 1)), dtype=np.int64)


def _dominates(a: Option, b: Option, latency_matters: bool) -> bool:
    """True if `a` is never worse than `b` for any plan (so `b` can be dropped)."""
    return (
        a.capacity >= b.capacity * (1 - EPS)
        and a.share <= b.share + EPS
        and a.memory_bytes <= b.memory_bytes
        and (not latency_matters or a.latency_s <= b.latency_s * (1 + EPS))
    )


def _prune_dominated(options: list[Option], latency_matters: bool) -> list[Option]:
    """Drop the options another of the same member on the same device dominates
    (`_dominates`; of two that dominate each other, the first is kept)."""
    groups: dict[tuple[str, str], list[Option]] = {}
    for option in options:
        groups.setdefault((option.member, option.device), []).append(option)
    kept: list[Option] = []
    for group in groups.values():
        dominated = _dominated_in(group, latency_matters)
        kept.extend(b for b, gone in zip(group, dominated, strict=True) if not gone)
    return kept


def _dominated_in(group: list[Option], latency_matters: bool) -> BoolArray:
    """For each option: does another dominate it (`_dominates`, all pairs at once)?"""
    cap = np.array([o.capacity for o in group])
    share = np.array([o.share for o in group], dtype=np.float64)
    mem = np.array([o.memory_bytes for o in group], dtype=np.float64)
    dom = ((cap[:, None] >= cap[None, :] * (1 - EPS)) & (share[:, None] <= share[None, :] + EPS)
           & (mem[:, None] <= mem[None, :]))  # dom[a, b]: a dominates b
    if latency_matters:
        lat = np.array([o.latency_s for o in group])
        dom &= lat[:, None] <= lat[None, :] * (1 + EPS)
    index = np.arange(len(group))
    beats = dom & (~dom.T | (index[:, None] < index[None, :]))
    np.fill_diagonal(beats, False)
    return np.asarray(beats.any(axis=0), dtype=np.bool_)


def format_bytes(count: float) -> str:
    """`1.5 GiB (1610612736 bytes)`: human size plus the exact count."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            human = f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
            return f"{human} ({math.ceil(count)} bytes)"
        value /= 1024
    raise AssertionError("unreachable")


def _check_every_member_has_options(
    profile: Profile,
    devices: Sequence[Device],
    usable: Sequence[float],
    latency_budget: float | None,
    options: Sequence[Option],
) -> None:
    have = {o.member for o in options}
    problems = []
    by_device = _entries_by_device(profile, devices)
    for member in profile.member_names():
        if member in have:
            continue
        entries = [(d, u, e) for d, u in zip(devices, usable, strict=True)
                   for e in by_device[d.id] if e.member == member]
        if not entries:
            problems.append(f"member '{member}' has no profile entries for devices "
                            f"{', '.join(d.id for d in devices)}")
            continue
        share_ok = [(d, u, e) for d, u, e in entries if e.share <= d.compute_units + EPS]
        if not share_ok:
            problems.append(f"member '{member}': every profiled share exceeds the compute units "
                            f"of the devices")
            continue
        fast = share_ok
        if latency_budget is not None:
            fast = [(d, u, e) for d, u, e in share_ok if e.latency_s <= latency_budget + EPS]
            if not fast:
                fastest = min(e.latency_s for _, _, e in share_ok)
                problems.append(f"member '{member}': its fastest configuration takes "
                                f"{fastest:.4g} s, above the latency budget "
                                f"{latency_budget:.4g} s (bound minus combine time)")
                continue
        d, u, e = min(fast, key=lambda item: item[2].memory_bytes - item[1])
        problems.append(f"member '{member}' does not fit on any device: it needs at least "
                        f"{format_bytes(e.memory_bytes)} on {d.id}, which has "
                        f"{format_bytes(u)} usable; {format_bytes(e.memory_bytes - u)} missing"
                        + (" (counting only configurations within the latency budget)"
                           if latency_budget is not None else ""))
    if problems:
        raise PlanError("; ".join(problems))


def option_index(problem: Problem) -> dict[tuple[str, str | None, str, int, float], int]:
    return {(o.member, o.variant, o.device, o.batch_size, o.share): k
            for k, o in enumerate(problem.options)}


def counts_from_instances(problem: Problem, instances: Sequence[Instance]) -> IntArray:
    """Count vector for a list of instances; ProfileError if one has no profile entry."""
    index = option_index(problem)
    counts = problem.zero_counts()
    for inst in instances:
        k = index.get(inst.config_key())
        if k is None:
            raise ProfileError(
                f"the profile has no entry for instance {inst.member} (variant {inst.variant}) on "
                f"{inst.device} at batch size {inst.batch_size} and share {inst.share:g}")
        counts[k] += 1
    return counts

