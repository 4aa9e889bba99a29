"""The profile file: measured (or estimated) latency and memory of each way to run each member.

A profile is JSON (documented in docs/planner.md). The minimal form::

    {"devices": [{"id": "cuda:0", "kind": "cuda", "memory_bytes": 17179869184,
                  "compute_units": 100}],
     "members": [{"name": "resnet50"}],
     "entries": [{"member": "resnet50", "device": "cuda:0", "batch_size": 8, "share": 100,
                  "latency_s": 0.012, "memory_bytes": 350000000}]}

Extra keys are allowed everywhere and kept on a load/save round trip. An entry's optional
`variant` names the execution variant (absent or null = the member's default); `share` is in
the device's compute units; `memory_bytes` is what one instance holds at that batch size.
Members may carry `param_bytes`. The optional top-level `combine_s` is the time to combine
the members' outputs for one batch (added to the predicted completion time).

This module has no torch dependency: the profiler writes this format, the planner reads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from enserve.devices import Device, json_number
from enserve.errors import ProfileError

PROFILE_VERSION = 1


class ProfileDevice(BaseModel):
    """A device as written in a profile (same fields as `enserve.devices.Device`)."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1)
    kind: Literal["cpu", "cuda"]
    memory_bytes: int = Field(gt=0)
    compute_units: float = Field(gt=0, allow_inf_nan=False)

    @field_serializer("compute_units")
    def _units_json(self, value: float) -> int | float:
        return json_number(value)

    def to_device(self) -> Device:
        return Device(self.id, self.kind, self.memory_bytes, self.compute_units)

    @classmethod
    def from_device(cls, device: Device) -> ProfileDevice:
        return cls(**device.to_dict())


class ProfileMember(BaseModel):
    """A member; `default_variant` is the variant it runs as when nothing else is chosen
    (the baseline planners use it), `param_bytes` its weights."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1)
    param_bytes: int | None = Field(default=None, ge=0)
    default_variant: str | None = None


class ProfileEntry(BaseModel):
    """One measured configuration: member x variant x device x batch size x share."""

    model_config = ConfigDict(extra="allow")

    member: str
    device: str
    batch_size: int = Field(ge=1)
    share: float = Field(gt=0, allow_inf_nan=False)
    latency_s: float = Field(gt=0, allow_inf_nan=False)
    memory_bytes: int = Field(ge=0)
    variant: str | None = None

    @field_serializer("share")
    def _share_json(self, value: float) -> int | float:
        return json_number(value)

    def key(self) -> tuple[str, str | None, str, int, float]:
        return (self.member, self.variant, self.device, self.batch_size, self.share)


class Profile(BaseModel):
    model_config = ConfigDict(extra="allow")

    version: int = PROFILE_VERSION
    devices: list[ProfileDevice] = Field(min_length=1)
    members: list[ProfileMember] = Field(min_length=1)
    entries: list[ProfileEntry]
    combine_s: float = Field(default=0.0, ge=0, allow_inf_nan=False)

    @field_validator("devices")
    @classmethod
    def _unique_devices(cls, devices: list[ProfileDevice]) -> list[ProfileDevice]:
        seen: set[str] = set()
        for device in devices:
            if device.id in seen:
                raise ValueError(f"device id '{device.id}' appears twice")
            seen.add(device.id)
        return devices

    @field_validator("members")
    @classmethod
    def _unique_members(cls, members: list[ProfileMember]) -> list[ProfileMember]:
        seen: set[str] = set()
        for member in members:
            if member.name in seen:
                raise ValueError(f"member name '{member.name}' appears twice")
            seen.add(member.name)
        return members

    @model_validator(mode="after")
    def _entries_consistent(self) -> Profile:
        devices = {d.id: d for d in self.devices}
        members = {m.name for m in self.members}
        seen: dict[tuple[str, str | None, str, int, float], int] = {}
        for index, entry in enumerate(self.entries):
            where = f"entries.{index}"
            if entry.member not in members:
                raise ValueError(f"{where}.member: unknown member '{entry.member}'")
            device = devices.get(entry.device)
            if device is None:
                raise ValueError(f"{where}.device: unknown device '{entry.device}'")
            if entry.share > device.compute_units + 1e-9:
                raise ValueError(
                    f"{where}.share: {entry.share:g} exceeds the {device.compute_units:g} "
                    f"compute units of {device.id}"
                )
            previous = seen.setdefault(entry.key(), index)
            if previous != index:
                raise ValueError(f"{where}: same member/variant/device/batch_size/share as "
                                 f"entries.{previous}")
        return self

    # -- conveniences -------------------------------------------------------------------
    def device_list(self) -> list[Device]:
        return [d.to_device() for d in self.devices]

    def member_names(self) -> list[str]:
        return [m.name for m in self.members]

    def entries_for(self, member: str) -> list[ProfileEntry]:
        return [e for e in self.entries if e.member == member]

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=False)


def _format_errors(exc: ValidationError, where: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{where}: field '{loc}': {message}")
    return "\n".join(lines)


def profile_from_dict(data: Any, where: str = "profile") -> Profile:
    """Validate a parsed JSON object; raises ProfileError naming `where` and the field."""
    if not isinstance(data, dict):
        raise ProfileError(f"{where}: expected a JSON object at the top level, "
                           f"got {type(data).__name__}")
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(_format_errors(exc, where)) from None


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile JSON file. Raises ProfileError naming the file and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError(f"{path}: profile file not found") from None
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read profile: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{path}: not valid JSON: {exc}") from None
    return profile_from_dict(data, str(path))


def save_profile(profile: Profile, path: str | Path) -> None:
    """Write a profile as indented JSON (creating parent folders)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(profile_json(profile), encoding="utf-8")


def profile_json(profile: Profile) -> str:
    """JSON text with one device, member or entry per line (readable, diffable)."""
    data = profile.to_json_dict()
    lines = ["{"]
    keys = list(data)
    for i, key in enumerate(keys):
        value = data[key]
        end = "," if i < len(keys) - 1 else ""
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            items = [json.dumps(v, allow_nan=False) for v in value]
            lines.append(f" {json.dumps(key)}: [")
            lines += [f"  {item}," for item in items[:-1]] + [f"  {items[-1]}"]
            lines.append(f" ]{end}")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value, allow_nan=False)}{end}")
    lines.append("}")
    return "\n".join(lines) + "\n"

