"""The worker process: builds one planned instance of a member, then answers tasks.

Inputs are read in place from the input arena and logits written into the output arena;
only `Task`/`Done` records cross the pipe. A worker exits when told to stop or when its pipe
closes (the engine is gone), so it never outlives its engine for long.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from enserve.errors import ModelLoadError
from enserve.fusion.member import FusedMember
from enserve.members import Member
from enserve.runtime.corelocks import CoreLocks
from enserve.runtime.messages import Attach, Done, Failed, Pin, Ready, Stop, Task
from enserve.runtime.placement import WorkerConfig
from enserve.runtime.prefetch import wait_until_read
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
        if "torch" in sys.modules:  # torch members set their threads when built, too
            sys.modules["torch"].set_num_threads(cfg.threads)
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
    """The member in the planned variant (through `enserve.variants`), or
    the fused group (`enserve.fusion.load_fused`) for an instance that covers several."""
    if cfg.fused:
        return build_fused(spec, cfg, cache_dir)
    from enserve.variants import default_variant, load_variant

    member_spec = spec.member(cfg.member)
    variant = default_variant(member_spec) if cfg.variant is None else cfg.variant
    device = "cpu" if cfg.is_cpu else "cuda:0"  # CUDA_VISIBLE_DEVICES is set
    return load_variant(spec, member_spec, variant, cfg.threads, cache_dir, device=device)


def build_fused(spec: EnsembleSpec, cfg: WorkerConfig, cache_dir: Path | None = None) -> FusedMember:
    """A fused group's instance; the engine combines, so no combiner goes in the graph."""
    from enserve.variants.fused import load_fused_variant

    if not cfg.is_cpu:
        raise ModelLoadError(f"{cfg.label}: fused groups run on the CPU only (planned on "
                             f"{cfg.device})")
    return load_fused_variant(spec, cfg.member, cfg.variant, cfg.threads, cache_dir)


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
    # and so is SIGTERM sent to the whole process group (systemd, `kill -- -PGID`): the
    # server drains, answering in-flight requests, then stops its workers itself
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
        comm.write(PROCESS_NAME)  # how `ps` and the tests tell workers apart
    order = [m.name for m in spec.members]
    out_fields = [output_field(order.index(m)) for m in cfg.members]  # in cfg.members order
    try:
        notes = apply_device_share(cfg)
        member = build_member(spec, cfg, cache_dir)
        if cfg.is_cpu and cfg.cores:
            pin_process(cfg.cores)  # threads the runtime just started
        inputs = Arena.attach(in_layout)
        run = _runner(spec, cfg, member, inputs)
        # One small batch (one row) warms the kernels (first-use set-up, weight reorders)
        # and tells the output shape; the engine times full batches itself when it
        # calibrates placement, so there is no second, timed warm-up call. A member that
        # declares its output shape and has nothing to set up (ONNX Runtime on its
        # optimized copy) skips it: ready sooner, its first batch pays the page faults.
        shape = member.known_output_shape()
        started = time.perf_counter()
        if shape is None:
            probe = {n: _warmup_batch(in_layout.field(n).shape, in_layout.field(n).dtype, 1)
                     for n in run.input_names}
            shape = (-1, *run.call(probe).shape[2:])
        warmup_s = time.perf_counter() - started
        conn.send(Ready(os.getpid(), shape, warmup_s, member.framework, member.variant,
                        tuple(notes)))
    except BaseException as exc:  # reported to the engine, then exit
        with contextlib.suppress(OSError):
            conn.send(Failed(-1, f"{cfg.label}: start-up failed: {type(exc).__name__}: {exc}"))
        return
    outputs = Arena.attach(out_layout) if out_layout is not None else None
    _serve(conn, run, inputs, outputs, out_fields, lock_dir, cfg.cores or (),
           _weight_files(spec, cfg, cache_dir))


def _weight_files(spec: EnsembleSpec, cfg: WorkerConfig, cache_dir: Path | None) -> list[Path]:
    from enserve.runtime.launch import weight_files

    return weight_files(spec, cfg.member, cfg.variant, cfg.device, cache_dir)


class _Runner:
    """Runs the instance on named input rows; returns logits stacked `[members, B, C]`."""

    def __init__(self, member: Member, input_names: list[str]) -> None:
        self.member = member
        self.input_names = input_names

    def call(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        if isinstance(self.member, FusedMember):
            return self.member.run_inputs(arrays)[0]
        return self.member(arrays[self.input_names[0]])[None]


def _runner(spec: EnsembleSpec, cfg: WorkerConfig, member: Member, inputs: Arena) -> _Runner:
    if isinstance(member, FusedMember):
        if member.member_names != list(cfg.members):
            raise ModelLoadError(f"{cfg.label}: fused group computes {member.member_names}, "
                                 f"planned {list(cfg.members)}")
        return _Runner(member, list(member.input_names))
    return _Runner(member, [spec.input_for(spec.member(cfg.member)).name])


def _serve(
    conn: Connection, run: _Runner, inputs: Arena, outputs: Arena | None,
    out_fields: Sequence[str], lock_dir: str | None, cores: Sequence[int],
    unread: Sequence[Path] = (),
) -> None:
    locks = CoreLocks(lock_dir, cores)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if isinstance(msg, Task):
            queued = time.perf_counter()
            if msg.deadline is not None and time.monotonic() > msg.deadline:
                try:  # its answer is no longer waited for: drop it, don't queue behind it
                    conn.send(Done(msg.task_id, 0.0, 0.0, skipped=True))
                except OSError:
                    return
                continue
            if msg.delay_s > 0:
                time.sleep(msg.delay_s)
            try:
                if outputs is None:
                    raise RuntimeError("output arena not attached")
                arrays = {n: inputs.view(n, msg.slot)[msg.start:msg.stop]
                          for n in run.input_names}
                if unread:  # first batch: weights in memory before the core is taken
                    wait_until_read(unread)
                    unread = ()
                with locks.hold():
                    started = time.perf_counter()
                    stacked = run.call(arrays)
                    compute = time.perf_counter() - started
                if stacked.shape[0] != len(out_fields):
                    raise ValueError(f"instance returned logits of {stacked.shape[0]} members, "
                                     f"expected {len(out_fields)}")
                targets = [outputs.view(f, msg.slot)[msg.start:msg.stop] for f in out_fields]
                if stacked.shape[1:] != targets[0].shape:
                    raise ValueError(f"member returned {list(stacked.shape[1:])}, expected "
                                     f"{list(targets[0].shape)}")
                for logits, target in zip(stacked, targets, strict=True):
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
