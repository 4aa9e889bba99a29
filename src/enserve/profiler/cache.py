"""The profiler's cache: one JSON file per measured entry or admission check."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from enserve.devices import Device

#: Bumped whenever what an entry means changes, so old entries are measured again.
CACHE_FORMAT = 2


class ResultCache:
    """One JSON file per measured entry or admission check, named by a key digest."""

    def __init__(self, root: Path) -> None:
        self.root = root / "profile"

    @staticmethod
    def key(**parts: Any) -> str:
        blob = json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        path = self.root / kind / f"{key}.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def put(self, kind: str, key: str, value: Mapping[str, Any]) -> None:
        path = self.root / kind / f"{key}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(value))
        os.replace(tmp, path)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_identity(device: Device) -> str:
    """What makes measurements on this device comparable: hardware model and size."""
    if device.kind == "cpu":
        return f"cpu|{cpu_model()}|{os.cpu_count()}"
    import torch

    index = int(device.id.split(":")[1]) if ":" in device.id else 0
    return f"cuda|{torch.cuda.get_device_name(index)}|{device.memory_bytes}"
