"""Warm workers: a pre-imported process (typed commands `Load`, `Infer`, `Unload`,
`StopWorker` over its pipe) that loads an ensemble, from a packed weights file
(`enserve.members.packed`) when given, so a load never pays Python and torch start-up.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import multiprocessing.connection as mpc
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from enserve.errors import ModelLoadError
from enserve.members.packed import load_packed


@dataclass(frozen=True)
class Load:
    """Load the ensemble at `spec_path` (weights from `packed` when given)."""

    spec_path: str
    packed: str | None = None
    fused: bool = True


@dataclass(frozen=True)
class Infer:
    batch: np.ndarray


@dataclass(frozen=True)
class Unload:
    """Drop the loaded ensemble and give its memory back (also a no-op round trip)."""


@dataclass(frozen=True)
class StopWorker:
    """Answer, then exit."""


@dataclass(frozen=True)
class Answer:
    """A command's result: `value` (load seconds, probabilities or None), or `error`."""

    value: Any = None
    error: str | None = None


WarmCommand = Load | Infer | Unload | StopWorker


def _warm_main(conn: mpc.Connection, threads: int) -> None:
    """Worker loop: torch and enserve are imported before the first command arrives."""
    import enserve.fusion.groups
    import enserve.members.loaders  # noqa: F401
    from enserve.devices import release_freed_memory

    torch.set_num_threads(threads)
    runner: Any = None
    while True:
        try:
            cmd: WarmCommand = conn.recv()
        except EOFError:
            return
        try:
            if isinstance(cmd, Load):
                start = time.perf_counter()
                runner = load_runner(cmd.spec_path, cmd.packed, cmd.fused)
                conn.send(Answer(time.perf_counter() - start))
            elif isinstance(cmd, Infer):
                conn.send(Answer(runner(cmd.batch)))
            elif isinstance(cmd, Unload):
                runner = None
                release_freed_memory()
                conn.send(Answer())
            elif isinstance(cmd, StopWorker):
                conn.send(Answer())
                return
            else:
                conn.send(Answer(error=f"unknown command {cmd!r}"))
        except Exception as exc:
            conn.send(Answer(error=f"{type(exc).__name__}: {exc}"))


def load_runner(spec_path: str, packed: str | None = None, fused: bool = True) -> Any:
    """A callable batch -> probabilities for the ensemble at `spec_path`, weights from
    `packed` when given; one fx-fused graph when `fused` and every member is PyTorch."""
    from enserve.fusion import load_fused
    from enserve.reference import ReferenceExecutor
    from enserve.spec import load_spec

    spec = load_spec(spec_path)
    modules = load_packed(spec, packed) if packed else {}
    names = [m.name for m in spec.members]
    if fused and all(m.kind != "onnx" for m in spec.members):
        member = load_fused(spec, names, "fx", modules=modules)
        return lambda x: member.infer(x).probabilities
    from enserve.members import TorchMember
    from enserve.members.preprocess import Preprocessor

    built = {n: TorchMember(n, modules[n], Preprocessor(spec.member(n).preprocess)) for n in modules}
    executor = ReferenceExecutor(spec, members=built if len(built) == len(names) else None)
    return lambda x: executor.infer(x).probabilities


class WarmWorker:
    """One pre-imported process that loads an ensemble and answers batches."""

    def __init__(self, threads: int = 1) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_warm_main, args=(child, threads), daemon=True)
        self.process.start()
        child.close()

    def _call(self, cmd: WarmCommand, timeout: float = 600.0) -> Any:
        self._conn.send(cmd)
        if not self._conn.poll(timeout):
            raise ModelLoadError(f"warm worker did not answer {type(cmd).__name__} within "
                                 f"{timeout:g}s")
        answer: Answer = self._conn.recv()
        if answer.error is not None:
            raise ModelLoadError(f"warm worker: {answer.error}")
        return answer.value

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until the worker has finished its imports (a no-op round trip)."""
        self._call(Unload(), timeout=timeout)

    def load(self, spec_path: str | Path, packed: str | Path | None = None, fused: bool = True) -> float:
        """Load in the worker; returns the worker-side load seconds."""
        return float(self._call(Load(str(spec_path), str(packed) if packed else None, fused)))

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._call(Infer(batch)))

    def unload(self) -> None:
        self._call(Unload())

    def stop(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(ModelLoadError, OSError, EOFError):
                self._call(StopWorker(), timeout=10)
            self.process.join(10)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(5)
        self._conn.close()
