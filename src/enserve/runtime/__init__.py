"""The runtime: a plan executed as worker processes behind one ensemble-level batcher.

Names load on first use, so that a light process (a Ray actor running a simulated member)
can import `enserve.runtime.ray` without PyTorch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from enserve.runtime.engine import Engine
    from enserve.runtime.placement import WorkerConfig

__all__ = ["Engine", "WorkerConfig"]
_WHERE = {"Engine": "enserve.runtime.engine", "WorkerConfig": "enserve.runtime.placement"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'enserve.runtime' has no attribute {name!r}")
