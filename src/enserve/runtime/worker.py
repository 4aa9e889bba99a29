"""The worker process: builds one planned instance of a member, then answers tasks.

Inputs are read in place from the input arena and logits written into the output arena;
only `Task`/`Done` records cross the pipe. A worker exits when told to stop or when its pipe
closes (the engine is gone), so it never outlives its engine for long.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from enserve.members import Member, load_member
from enserve.runtime.corelocks import CoreLocks
from enserve.runtime.messages import Attach, Done, Failed, Pin, Ready, Stop, Task
from enserve.runtime.placement import WorkerConfig
from enserve.runtime.shm import Arena, ArenaLayout
from enserve.spec import EnsembleSpec

MPS_PIPE_DEFAULT = "/tmp/nvidia-mps"
PROCESS_NAME = "enserve-worker"


def output_field(member_index: int) -> str:
    return f"logits_{member_index}"


def pin_process(cores: Sequence[int]) -> None:
    """Move every thread of this process onto `cores` (threads started later inherit it)."""
    mask = set(cores)
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except FileNotFoundError:
        tids = [0]
    for tid in tids:
        with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
            os.sched_setaffinity(tid, mask)


def mps_running() -> bool:
    pipe_dir = os.environ.get("CUDA_MPS_PIPE_DIRECTORY", MPS_PIPE_DEFAULT)
    return os.path.exists(os.path.join(pipe_dir, "control"))


def apply_device_share(cfg: WorkerConfig) -> list[str]:
    """Set threads/affinity (CPU) or device/MPS percentage (GPU); return notes to log."""
    notes: list[str] = []
    if cfg.is_cpu:
        if cfg.cores:
            pin_process(cfg.cores)
        import torch

        torch.set_num_threads(cfg.threads)
        return notes
    index = cfg.device.partition(":")[2] or "0"
    os.environ["CUDA_VISIBLE_DEVICES"] = index
    if cfg.share < 100:
        if mps_running():
            os.environ["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(round(cfg.share))
        else:
            notes.append(
                f"{cfg.label}: no MPS daemon runs, so the {cfg.share:g}% share of {cfg.device} "
                "is not enforced; the instance time-shares the whole GPU"
            )
    return notes


def build_member(spec: EnsembleSpec, cfg: WorkerConfig, cache_dir: Path | None) -> Member:
    """The member in the planned variant (through `enserve.variants` where it exists)."""
    member_spec = spec.member(cfg.member)
    try:
        from enserve.variants import default_variant, load_variant
    except ImportError:
        if cfg.variant not in ("default", "eager"):
            raise ValueError(f"variant '{cfg.variant}' needs enserve.variants") from None
        return load_member(spec, member_spec, threads=cfg.threads)
    variant = default_variant(member_spec) if cfg.variant == "default" else cfg.variant
    kwargs: dict[str, Any] = {}
    if "device" in inspect.signature(load_variant).parameters:
        kwargs["device"] = "cpu" if cfg.is_cpu else "cuda:0"  # CUDA_VISIBLE_DEVICES is set
    return load_variant(spec, member_spec, variant, cfg.threads, cache_dir, **kwargs)


def _warmup_batch(shape: Sequence[int], dtype: str, rows: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    full = (rows, *shape[1:])
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(full).astype(dtype)
    return rng.integers(0, 128, size=full).astype(dtype)


def worker_main(
    spec: EnsembleSpec,
    cfg: WorkerConfig,
    conn: Connection,
    in_layout: ArenaLayout,
    out_layout: ArenaLayout | None,
    lock_dir: str | None,
    cache_dir: Path | None,
) -> None:
    """Process entry point (must stay importable at module level for spawn/forkserver)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the engine's to handle
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
        comm.write(PROCESS_NAME)  # how `ps` and the tests tell workers apart
    member_spec = spec.member(cfg.member)
    member_index = [m.name for m in spec.members].index(cfg.member)
    tensor = spec.input_for(member_spec)
    try:
        notes = apply_device_share(cfg)
        member = build_member(spec, cfg, cache_dir)
        if cfg.is_cpu and cfg.cores:
            pin_process(cfg.cores)  # threads the runtime just started
        inputs = Arena.attach(in_layout)
        rows = min(cfg.batch_size, in_layout.field(tensor.name).shape[0])
        field = in_layout.field(tensor.name)
        probe = _warmup_batch(field.shape, field.dtype, rows)
        member(probe)
        started = time.perf_counter()
        out = member(probe)
        warmup_s = time.perf_counter() - started
        conn.send(Ready(os.getpid(), (-1, *out.shape[1:]), warmup_s, member.framework,
                        member.variant, tuple(notes)))
    except BaseException as exc:  # reported to the engine, then exit
        with contextlib.suppress(OSError):
            conn.send(Failed(-1, f"{cfg.label}: start-up failed: {type(exc).__name__}: {exc}"))
        return
    outputs = Arena.attach(out_layout) if out_layout is not None else None
    _serve(conn, member, inputs, outputs, tensor.name, output_field(member_index), lock_dir,
           cfg.cores or ())


def _serve(
    conn: Connection, member: Member, inputs: Arena, outputs: Arena | None,
    input_field: str, out_field: str, lock_dir: str | None, cores: Sequence[int],
) -> None:
    locks = CoreLocks(lock_dir, cores)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if isinstance(msg, Task):
            queued = time.perf_counter()
            try:
                if outputs is None:
                    raise RuntimeError("output arena not attached")
                with locks.hold():
                    started = time.perf_counter()
                    logits = member(inputs.view(input_field, msg.slot)[msg.start:msg.stop])
                    compute = time.perf_counter() - started
                target = outputs.view(out_field, msg.slot)[msg.start:msg.stop]
                if logits.shape != target.shape:
                    raise ValueError(f"member returned {list(logits.shape)}, expected "
                                     f"{list(target.shape)}")
                target[...] = logits
                reply: Done | Failed = Done(msg.task_id, compute, started - queued)
            except Exception as exc:  # a bad task must not kill the worker
                reply = Failed(msg.task_id, f"{type(exc).__name__}: {exc}")
            try:
                conn.send(reply)
            except OSError:
                return
        elif isinstance(msg, Attach):
            outputs = Arena.attach(msg.layout)
        elif isinstance(msg, Pin):
            pin_process(msg.cores)
            locks.close()
            locks = CoreLocks(lock_dir, msg.cores)
        elif isinstance(msg, Stop):
            return
