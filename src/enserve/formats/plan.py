"""A plan: which member instances run where, how, and what the cost model predicts for it.

Plan JSON (what `enserve plan --json` prints and the runtime executes)::

    {"algorithm": "greedy", "objective": "throughput",
     "devices": [{"id": "cuda:0", "kind": "cuda", "memory_bytes": ..., "compute_units": 100}],
     "instances": [{"member": "resnet50", "variant": null, "device": "cuda:0",
                    "batch_size": 8, "share": 50, "memory_bytes": 350000000}],
     "predicted": {"throughput": 812.5, "latency_s": 0.031},
     "planning_time_s": 0.004}

`variant` null means the member's default variant (`"default"` and `""` are read as null).
An instance whose `member` is a fused group's name (`fx:a+b`, see `enserve.formats.groups`)
runs the group as one unit; `Instance.group` gives it as data. `throughput` is in samples
(inputs) per second, `latency_s` the completion time of one batch (see
`enserve.plan.cost`); `predicted` is null for a plan that was not planned (made by hand, or
a fused plan split into its members, which also lists `unfused_from`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enserve.devices import Device, DeviceKind, json_number
from enserve.errors import PlanError
from enserve.formats.groups import GroupRef

OBJECTIVES = ("throughput", "latency")
#: How plan files written before the one spelling (null) named the default variant.
_DEFAULT_VARIANT_SPELLINGS = ("default", "")


@dataclass(frozen=True)
class Instance:
    """One running copy of a member (or a fused group): its variant (None: the member's
    default), device, batch size and compute share."""

    member: str
    variant: str | None
    device: str
    batch_size: int
    share: float
    memory_bytes: int

    @property
    def group(self) -> GroupRef | None:
        """The fused group this instance runs, or None for an ordinary member."""
        return GroupRef.parse(self.member)

    def to_dict(self) -> dict[str, Any]:
        return {
            "member": self.member,
            "variant": self.variant,
            "device": self.device,
            "batch_size": self.batch_size,
            "share": json_number(self.share),
            "memory_bytes": int(self.memory_bytes),
        }

    def config_key(self) -> tuple[str, str | None, str, int, float]:
        """The profile entry this instance runs as (member, variant, device, batch, share)."""
        return (self.member, self.variant, self.device, self.batch_size, self.share)


@dataclass(frozen=True)
class Predicted:
    throughput: float
    latency_s: float

    def to_dict(self) -> dict[str, float]:
        return {"throughput": self.throughput, "latency_s": self.latency_s}


@dataclass(frozen=True)
class Plan:
    algorithm: str
    objective: str
    devices: tuple[Device, ...]
    instances: tuple[Instance, ...]
    predicted: Predicted | None
    planning_time_s: float = 0.0
    members: tuple[str, ...] = field(default=(), compare=False)
    #: The hardware fingerprint the plan was made for (`enserve.hardware`), if known.
    hardware: Mapping[str, Any] | None = field(default=None, compare=False)
    #: The precision mix and what the accuracy check measured (`enserve.plan.precision`).
    precision: Mapping[str, Any] | None = field(default=None, compare=False)
    unfused_from: tuple[str, ...] = ()  # the fused groups a split plan was made from

    @property
    def prediction(self) -> Predicted:
        """`predicted` of a plan the planner made; PlanError for one that was not planned."""
        if self.predicted is None:
            raise PlanError(f"plan '{self.algorithm}' was not planned: it has no prediction")
        return self.predicted

    def member_names(self) -> list[str]:
        """Members in profile order when known, else in order of first instance."""
        if self.members:
            return list(self.members)
        seen: dict[str, None] = {}
        for inst in self.instances:
            seen.setdefault(inst.member, None)
        return list(seen)

    def instances_on(self, device_id: str) -> list[Instance]:
        return [i for i in self.instances if i.device == device_id]

    def allocation_matrix(self) -> dict[tuple[str, str], list[Instance]]:
        """(device id, member) -> the instances of that member on that device."""
        matrix: dict[tuple[str, str], list[Instance]] = {}
        for inst in self.instances:
            matrix.setdefault((inst.device, inst.member), []).append(inst)
        return matrix

    def groups(self) -> list[GroupRef]:
        """The fused groups the plan's instances run, in order of first instance."""
        found: dict[str, GroupRef] = {}
        for inst in self.instances:
            group = inst.group
            if group is not None:
                found.setdefault(group.name, group)
        return list(found.values())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "algorithm": self.algorithm,
            "objective": self.objective,
            "devices": [d.to_dict() for d in self.devices],
            "instances": [i.to_dict() for i in self.instances],
            "predicted": self.predicted.to_dict() if self.predicted is not None else None,
            "planning_time_s": self.planning_time_s,
            **({"hardware": dict(self.hardware)} if self.hardware else {}),
            **({"precision": dict(self.precision)} if self.precision else {}),
        }
        if self.unfused_from:
            out["unfused_from"] = list(self.unfused_from)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any, where: str = "plan") -> Plan:
        """Parse plan JSON; raises PlanError naming `where` and the offending field."""
        if not isinstance(data, Mapping):
            raise PlanError(f"{where}: expected a JSON object at the top level")
        for key in ("algorithm", "objective", "devices", "instances", "predicted"):
            if key not in data:
                raise PlanError(f"{where}: field '{key}' is missing")
        devices = []
        for index, raw in enumerate(_list(data["devices"], f"{where}: field 'devices'")):
            try:
                devices.append(Device.from_dict(_mapping(raw, f"{where}: devices.{index}")))
            except ValueError as exc:
                raise PlanError(f"{where}: field 'devices.{index}': {exc}") from None
        device_ids = {d.id for d in devices}
        instances = []
        for index, raw in enumerate(_list(data["instances"], f"{where}: field 'instances'")):
            instances.append(_instance(raw, f"{where}: field 'instances.{index}", device_ids))
        pred: Predicted | None = None
        try:
            if data["predicted"] is not None:
                predicted = _mapping(data["predicted"], f"{where}: field 'predicted'")
                pred = Predicted(float(predicted["throughput"]), float(predicted["latency_s"]))
            planning_time = float(data.get("planning_time_s", 0.0))
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"{where}: field 'predicted': needs numeric throughput and "
                            f"latency_s ({exc})") from None
        extras = {k: data[k] for k in ("hardware", "precision") if isinstance(data.get(k), Mapping)}
        unfused = data.get("unfused_from") or []
        if not isinstance(unfused, list):
            raise PlanError(f"{where}: field 'unfused_from': expected a list")
        return cls(str(data["algorithm"]), str(data["objective"]), tuple(devices),
                   tuple(instances), pred, planning_time,
                   unfused_from=tuple(str(g) for g in unfused), **extras)

    @classmethod
    def of(cls, instances: Iterable[Mapping[str, Any]], algorithm: str = "given",
           objective: str = "throughput") -> Plan:
        """A plan written by hand (not planned, so no prediction): each instance a mapping
        with `member` and any of `variant` (default None), `device` ("cpu"), `batch_size`
        (8), `share` (1) and `memory_bytes` (0). Its devices are the ones the instances
        name, each as large as they need. Raises PlanError naming the bad instance."""
        filled = [{"variant": None, "device": "cpu", "batch_size": 8, "share": 1,
                   "memory_bytes": 0, **_mapping(raw, f"plan: field 'instances.{i}'")}
                  for i, raw in enumerate(instances)]
        devices: dict[str, Device] = {}
        for i, raw in enumerate(filled):
            device_id = str(raw["device"])
            kind: DeviceKind = "cuda" if device_id.startswith("cuda") else "cpu"
            on = [r for r in filled if str(r["device"]) == device_id]
            try:
                devices.setdefault(device_id, Device(
                    device_id, kind, max(1, sum(int(r["memory_bytes"]) for r in on)),
                    max(1.0, sum(float(r["share"]) for r in on))))
            except (TypeError, ValueError) as exc:
                raise PlanError(f"plan: field 'instances.{i}': {exc}") from None
        return cls.from_dict({"algorithm": algorithm, "objective": objective,
                              "devices": [d.to_dict() for d in devices.values()],
                              "instances": filled, "predicted": None})


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise PlanError(f"{where}: expected a list")
    return value


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PlanError(f"{where}: expected an object")
    return value


def _instance(raw: Any, where: str, device_ids: set[str]) -> Instance:
    obj = _mapping(raw, where + "'")
    for key in ("member", "device", "batch_size", "share", "memory_bytes"):
        if key not in obj:
            raise PlanError(f"{where}.{key}' is missing")
    variant = obj.get("variant")
    if variant is not None and not isinstance(variant, str):
        raise PlanError(f"{where}.variant': expected a string or null")
    if variant in _DEFAULT_VARIANT_SPELLINGS:
        variant = None
    try:
        inst = Instance(str(obj["member"]), variant, str(obj["device"]), int(obj["batch_size"]),
                        float(obj["share"]), int(obj["memory_bytes"]))
    except (TypeError, ValueError):
        raise PlanError(f"{where}': batch_size, share and memory_bytes must be numbers") from None
    if inst.device not in device_ids:
        raise PlanError(f"{where}.device': '{inst.device}' is not among the plan's devices")
    if inst.batch_size < 1 or inst.share <= 0 or inst.memory_bytes < 0:
        raise PlanError(f"{where}': batch_size and share must be positive, memory_bytes >= 0")
    return inst


def save_plan(plan: Plan, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(plan.to_json() + "\n", encoding="utf-8")


def load_plan(path: str | Path) -> Plan:
    """Read a plan JSON file; raises PlanError naming the file and field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError(f"{path}: plan file not found") from None
    except json.JSONDecodeError as exc:
        raise PlanError(f"{path}: not valid JSON: {exc}") from None
    return Plan.from_dict(data, str(path))
