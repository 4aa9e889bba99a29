"""The runtime: a plan executed as worker processes behind one ensemble-level batcher."""

from enserve.runtime.engine import Engine
from enserve.runtime.placement import WorkerConfig

__all__ = ["Engine", "WorkerConfig"]
