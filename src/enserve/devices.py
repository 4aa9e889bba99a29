"""Devices a plan can place member instances on: detected here, or declared by the user.

A device has an id (`cpu`, `cuda:0`, ...), a kind, a memory size in bytes and a number of
compute units. Compute units are CPU cores for a CPU and percent (100) for a GPU, the unit
of the CUDA MPS active-thread percentage; a member instance's `share` is counted in them.

Declaring devices we don't have (`parse_device_decl`), comma-separated items::

    ITEM := [COUNT "x"] KIND [":" MEMORY] [":" UNITS]

* KIND is `cpu` or `cuda`; ids are numbered per kind in order of appearance:
  `cuda:0`, `cuda:1`, ... and `cpu`, `cpu:1`, ...
* MEMORY is a number with a unit: B, KB, MB, GB, TB (or KiB, MiB, GiB, TiB, same thing).
  Units are binary (1 GB = 2**30 bytes) because GPU and RAM sizes are quoted that way:
  a "16 GB" GPU holds 16 GiB. Required.
* UNITS is the number of compute units: required for `cpu` (its cores), default 100 for `cuda`.

Examples: `4xcuda:16GB` (four 16 GiB GPUs), `cpu:64GB:16` (16 cores, 64 GiB),
`cpu:8GB:2,2xcuda:80GB`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

DeviceKind = Literal["cpu", "cuda"]
DEVICE_KINDS: tuple[DeviceKind, ...] = ("cpu", "cuda")
GPU_COMPUTE_UNITS = 100.0

_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_ITEM = re.compile(r"^(?:(\d+)\s*[xX]\s*)?([a-zA-Z]+)((?::[^:,]*)*)$")
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?$", re.IGNORECASE)


def json_number(value: float) -> int | float:
    """Write integral floats as ints so JSON reads `100`, not `100.0`."""
    return int(value) if float(value).is_integer() else float(value)


@dataclass(frozen=True)
class Device:
    """One device. `compute_units`: CPU cores, or 100 (percent) for a GPU."""

    id: str
    kind: DeviceKind
    memory_bytes: int
    compute_units: float

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("device id must not be empty")
        if self.kind not in DEVICE_KINDS:
            raise ValueError(f"device {self.id}: kind must be one of {DEVICE_KINDS}, got {self.kind!r}")
        if self.memory_bytes <= 0:
            raise ValueError(f"device {self.id}: memory_bytes must be positive")
        if not (self.compute_units > 0 and math.isfinite(self.compute_units)):
            raise ValueError(f"device {self.id}: compute_units must be positive")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "memory_bytes": int(self.memory_bytes),
            "compute_units": json_number(self.compute_units),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Device:
        """Build from a JSON object (extra keys ignored); raises ValueError naming the field."""
        for key in ("id", "kind", "memory_bytes", "compute_units"):
            if key not in data:
                raise ValueError(f"device is missing field '{key}'")
        try:
            memory = int(data["memory_bytes"])
            units = float(data["compute_units"])
        except (TypeError, ValueError):
            raise ValueError(
                f"device {data['id']}: memory_bytes and compute_units must be numbers"
            ) from None
        return cls(str(data["id"]), cast(DeviceKind, data["kind"]), memory, units)


def _cpu_memory_bytes() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 30  # unknown: a conservative 1 GiB


def _cpu_cores() -> int:
    sched_getaffinity = getattr(os, "sched_getaffinity", None)
    if sched_getaffinity is not None:
        return max(1, len(sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def detect_devices(include_cuda: bool = True) -> list[Device]:
    """The CPU (usable cores, total RAM) and, if torch sees any, every CUDA GPU."""
    devices = [Device("cpu", "cpu", _cpu_memory_bytes(), float(_cpu_cores()))]
    if include_cuda:
        try:
            import torch
        except ImportError:
            return devices
        if torch.cuda.is_available():
            for index in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(index)
                devices.append(
                    Device(f"cuda:{index}", "cuda", int(props.total_memory), GPU_COMPUTE_UNITS)
                )
    return devices


def parse_memory(text: str) -> int:
    """`16GB` -> 17179869184 (binary units, see the module docstring)."""
    match = _MEMORY.match(text.strip())
    if match is None:
        raise ValueError(f"memory {text!r}: expected a number and a unit, e.g. 16GB or 512MB")
    number, prefix = match.groups()
    has_unit = bool(prefix) or text.strip().upper().endswith("B")
    if not has_unit:
        raise ValueError(f"memory {text!r}: give a unit, e.g. {text}GB")
    return int(float(number) * _UNITS[prefix.upper()])


def parse_device_decl(text: str) -> list[Device]:
    """Parse a declaration such as `4xcuda:16GB` or `cpu:64GB:16,2xcuda:80GB` into devices."""
    devices: list[Device] = []
    counters = {kind: 0 for kind in DEVICE_KINDS}
    items = [item.strip() for item in text.split(",")]
    if not any(items):
        raise ValueError("empty device declaration")
    for item in items:
        match = _ITEM.match(item)
        if match is None:
            raise ValueError(f"device declaration {item!r}: expected [COUNTx]KIND:MEMORY[:UNITS]")
        count_text, kind_text, rest = match.groups()
        kind = kind_text.lower()
        if kind not in DEVICE_KINDS:
            raise ValueError(f"device declaration {item!r}: kind must be one of {DEVICE_KINDS}")
        fields = [f.strip() for f in rest.split(":")[1:]]
        if not fields or not fields[0]:
            raise ValueError(f"device declaration {item!r}: give the memory, e.g. {kind}:16GB")
        if len(fields) > 2:
            raise ValueError(f"device declaration {item!r}: too many ':' fields")
        memory = parse_memory(fields[0])
        if len(fields) == 2 and fields[1]:
            try:
                units = float(fields[1])
            except ValueError:
                raise ValueError(
                    f"device declaration {item!r}: compute units {fields[1]!r} is not a number"
                ) from None
        elif kind == "cuda":
            units = GPU_COMPUTE_UNITS
        else:
            raise ValueError(f"device declaration {item!r}: give the core count, e.g. cpu:8GB:4")
        count = int(count_text) if count_text else 1
        if count < 1:
            raise ValueError(f"device declaration {item!r}: count must be at least 1")
        for _ in range(count):
            index = counters[kind]
            counters[kind] += 1
            device_id = f"cuda:{index}" if kind == "cuda" else ("cpu" if index == 0 else f"cpu:{index}")
            devices.append(Device(device_id, cast(DeviceKind, kind), memory, units))
    return devices


def release_freed_memory() -> None:
    """Collect garbage and ask glibc to give freed heap pages back to the OS."""
    gc.collect()
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(libc_name).malloc_trim(0)
