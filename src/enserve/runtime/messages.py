"""The small control messages that travel over worker pipes (tensors never do)."""

from __future__ import annotations

from dataclasses import dataclass

from enserve.runtime.shm import ArenaLayout


@dataclass(frozen=True)
class Task:
    """Run the member on rows [start, stop) of the input slot; write logits to the same rows
    of the member's output slot."""

    task_id: int
    slot: int
    start: int
    stop: int
    deadline: float | None = None  # time.monotonic(): a task not started by then is skipped
    delay_s: float = 0.0  # test hook (ENSERVE_SLOW_MEMBERS): sleep this long first


@dataclass(frozen=True)
class Attach:
    """Map the output arena (sent once the output shape is known)."""

    layout: ArenaLayout


@dataclass(frozen=True)
class Pin:
    """Move every thread of the worker onto these cores."""

    cores: tuple[int, ...]


@dataclass(frozen=True)
class Stop:
    """Finish the current task and exit."""


@dataclass(frozen=True)
class Ready:
    """The worker loaded its member and ran it once."""

    pid: int
    output_shape: tuple[int, ...]
    warmup_s: float
    framework: str
    variant: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Done:
    task_id: int
    compute_s: float
    wait_s: float
    skipped: bool = False  # the task's deadline had passed: nothing was computed


@dataclass(frozen=True)
class Failed:
    """A task (task_id >= 0) or the start-up (task_id == -1) failed; the worker keeps serving
    after a task failure and exits after a start-up failure."""

    task_id: int
    message: str


ToWorker = Task | Attach | Pin | Stop
FromWorker = Ready | Done | Failed
