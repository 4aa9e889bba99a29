"""The child-process side of profiling: one process per check or measured setting.

Children fork from a fork server that imported torch, torchvision and onnxruntime once,
so they start in milliseconds and never count those libraries as instance memory. Each
child pins its cores and sets its thread count before torch runs anything, so settings
never leak between measurements (torch's intra-op pool cannot shrink once started).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

from enserve.formats.groups import is_fused_variant
from enserve.spec import load_spec

MAX_SECONDS_PER_BATCH = 20.0
TASK_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class Task:
    """One child process's job: check a variant, or measure it at one (device, share)."""

    kind: Literal["check", "measure", "calibrate"]
    spec_path: str
    member: str
    variant: str
    device: str = "cpu"
    share: float = 1.0
    batch_sizes: tuple[int, ...] = ()
    repeats: int = 10
    warmup: int = 2
    cache_dir: str = ""
    allow_reduced_precision: bool = False
    use_mps: bool = False
    max_seconds: float = MAX_SECONDS_PER_BATCH
    out: str = ""  # calibrate: where to save the logits (.npy)
    nice: int = 0  # added to the child's niceness (background refinement: lower priority)
    cores: tuple[int, ...] = ()  # pin to these cores (default: the first `share` usable)


@dataclass(frozen=True)
class Checked:
    """A variant's admission check (`VariantCheck.to_dict()` plus `weights_bytes`)."""

    result: dict[str, Any]


@dataclass(frozen=True)
class Measured:
    """One profile entry: a batch size measured at the task's setting."""

    entry: dict[str, Any]


@dataclass(frozen=True)
class Calibrated:
    """The member's logits on the calibration set were saved to `out` (.npy)."""

    out: str


@dataclass(frozen=True)
class ChildError:
    message: str


@dataclass(frozen=True)
class ChildDone:
    """The child's last message."""


ChildMessage = Checked | Measured | Calibrated | ChildError
Send = Callable[[ChildMessage], None]


def _read_status() -> dict[str, int]:
    """VmRSS, VmHWM, RssFile and RssShmem of this process in bytes ({} without /proc)."""
    values: dict[str, int] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssFile", "RssShmem"):
                    values[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return values


def _file_backed(status: Mapping[str, int]) -> int:
    return status.get("RssFile", 0) + status.get("RssShmem", 0)


def _instance_peak_bytes(start: Mapping[str, int], now: Mapping[str, int]) -> int:
    """Peak RSS growth since `start`, minus the growth of file-backed pages.

    Library code (oneDNN, MKL, ORT kernels) paged in on first use counts in RSS but is
    shared by every process on the machine, not held per instance; it stays resident, so
    its growth by now is what it added to the peak.
    """
    growth = now.get("VmHWM", 0) - start.get("VmRSS", 0)
    return max(growth - max(_file_backed(now) - _file_backed(start), 0), 0)


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        pass


def _set_up_child(task: Task) -> None:
    """Pin cores and set thread counts (CPU) or the MPS percentage (GPU) before torch runs."""
    if task.nice > 0:
        with contextlib.suppress(OSError):
            os.nice(task.nice)
    if task.device.startswith("cuda"):
        if task.use_mps:
            os.environ["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(int(task.share))
        threads = 1
    else:
        threads = len(task.cores) if task.cores else int(task.share)
        if hasattr(os, "sched_setaffinity"):
            cores = list(task.cores) or sorted(os.sched_getaffinity(0))[:threads]
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, cores)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already started: harmless here
        torch.set_num_interop_threads(1)


def _timed_runs(run: Callable[[], object], repeats: int, warmup: int, max_seconds: float,
                sync: Callable[[], None]) -> list[float]:
    for _ in range(warmup):
        run()
    sync()
    times: list[float] = []
    started = time.perf_counter()
    for i in range(repeats):
        t0 = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - t0)
        if i >= 2 and time.perf_counter() - started > max_seconds:
            break
    return times


def _measure(task: Task, send: Send) -> None:
    import gc

    import torch

    from enserve.variants.fused import group_of, load_fused_variant
    from enserve.variants.load import load_variant
    from enserve.variants.samples import random_request

    spec = load_spec(task.spec_path)
    fused = is_fused_variant(task.variant)
    # A fused group reads the request of its members (one shared input).
    member_spec = spec.member(group_of(spec, task.member).covers[0] if fused else task.member)
    inputs = {b: random_request(spec, member_spec, b, seed=b) for b in task.batch_sizes}
    on_gpu = task.device.startswith("cuda")
    threads = 1 if on_gpu else int(task.share)

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize(task.device)

    gc.collect()
    _reset_peak_rss()
    start = _read_status()
    base = start.get("VmRSS", 0)
    member: Any
    if fused:
        member = load_fused_variant(spec, task.member, task.variant, threads)
    else:
        member = load_variant(spec, task.member, task.variant, threads=threads,
                              cache_dir=Path(task.cache_dir), device=task.device)
    loaded = _read_status().get("VmRSS", 0)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(task.device)
    for batch in sorted(task.batch_sizes):
        x = inputs[batch]
        times = _timed_runs(lambda x=x: member(x), task.repeats, task.warmup,  # type: ignore[misc]
                            task.max_seconds, sync)
        if on_gpu:
            memory = int(torch.cuda.max_memory_allocated(task.device))
        else:
            memory = _instance_peak_bytes(start, _read_status())
        send(Measured({
            "member": task.member, "device": task.device, "batch_size": batch,
            "share": task.share, "variant": task.variant,
            "latency_s": statistics.median(times), "latency_min_s": min(times),
            "repeats": len(times), "memory_bytes": memory,
            "loaded_bytes": max(loaded - base, 0), "process_base_bytes": base,
            "load_average_1min": load_average(),
        }))


def _check(task: Task, send: Send) -> None:
    from enserve.members import load_member
    from enserve.variants.check import check_variant
    from enserve.variants.load import load_variant

    spec = load_spec(task.spec_path)
    if is_fused_variant(task.variant):
        _check_fused(spec, task, send)
        return
    cache_dir = Path(task.cache_dir)
    weights: int | None = None
    try:
        candidate = load_variant(spec, task.member, task.variant, threads=1, cache_dir=cache_dir)
        weights = candidate.param_bytes()
    except Exception as exc:
        send(_not_built(task, exc))
        return
    reference = load_member(spec, task.member, threads=1)
    result = check_variant(spec, task.member, task.variant, candidate=candidate,
                           reference=reference,
                           allow_reduced_precision=task.allow_reduced_precision)
    # Frozen TorchScript inlines its weights as constants: count the reference's instead.
    send(Checked({**result.to_dict(), "weights_bytes": weights or reference.param_bytes()}))


def _not_built(task: Task, exc: Exception) -> Checked:
    return Checked({"member": task.member, "variant": task.variant, "admitted": False,
                    "rel_error": None, "reason": f"failed to build: {exc}",
                    "weights_bytes": None})


def _check_fused(spec: Any, task: Task, send: Send) -> None:
    from enserve.variants.fused import check_fused_variant, load_fused_variant

    try:
        candidate = load_fused_variant(spec, task.member, task.variant, threads=1)
    except Exception as exc:
        send(_not_built(task, exc))
        return
    result = check_fused_variant(spec, task.member, task.variant, candidate=candidate)
    send(Checked({**result.to_dict(), "weights_bytes": candidate.param_bytes()}))


def _child_main(task: Task, conn: Connection) -> None:
    def send(msg: ChildMessage | ChildDone) -> None:
        conn.send(msg)

    try:
        _set_up_child(task)
        if task.kind == "check":
            _check(task, send)
        elif task.kind == "calibrate":
            from enserve.profiler.accuracy import calibrate_in_child

            calibrate_in_child(task.spec_path, task.member, task.variant, task.out,
                               int(task.share), task.cache_dir)
            send(Calibrated(task.out))
        else:
            _measure(task, send)
    except BaseException as exc:  # report, never hang the parent
        send(ChildError(f"{type(exc).__name__}: {exc}"))
    finally:
        send(ChildDone())
        conn.close()


_CONTEXT: Any = None
# Imported once by the fork server so that children neither pay for nor count (as
# instance memory) the libraries every worker process loads anyway.
_PRELOAD = ["torch", "torchvision", "onnxruntime", "onnx", "enserve.variants.build",
            "enserve.variants.check", "enserve.variants.fused", "enserve.fusion.groups",
            "enserve.profiler.child", "enserve.profiler.accuracy"]


def _context() -> Any:
    """A forkserver context that imports torch once; children fork from it cheaply."""
    global _CONTEXT
    if _CONTEXT is None:
        ctx: Any
        if "forkserver" in mp.get_all_start_methods():
            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload(_PRELOAD)
        else:
            ctx = mp.get_context("spawn")
        _CONTEXT = ctx
    return _CONTEXT


def run_task(task: Task, on_message: Send, timeout_s: float = TASK_TIMEOUT_S) -> None:
    """Run one task in a child process, passing its messages on; errors become messages."""
    ctx = _context()
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child_main, args=(task, send), daemon=True)
    process.start()
    send.close()
    deadline = time.monotonic() + timeout_s
    done = False
    try:
        while not done:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not receive.poll(remaining):
                on_message(ChildError(f"timed out after {timeout_s:.0f} s"))
                break
            try:
                msg: ChildMessage | ChildDone = receive.recv()
            except EOFError:
                on_message(ChildError(f"worker exited with code {process.exitcode}"))
                break
            if isinstance(msg, ChildDone):
                done = True
            else:
                on_message(msg)
    finally:
        receive.close()
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join()


def load_average() -> float | None:
    """The 1-minute load average (other processes competing for the cores), if known."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None
