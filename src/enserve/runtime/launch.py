"""Where worker processes are forked from: one fork server per set of pre-imported modules.

A worker that runs only ONNX Runtime is forked from a *lean* server (numpy, ONNX Runtime
and the worker module: no torch); a worker that runs PyTorch (eager, TorchScript, fused
graphs, or an ONNX export still to be written) is forked from a *torch* server that has
imported torch and torchvision once; an fx group whose folded-weights file exists
(`enserve.fusion.folded`) from a *fused* server (torch and the fusion code only: its load
runs no architecture code, so it needs neither torchvision nor ONNX Runtime). Each server
starts on first use, so an ensemble of ONNX members never starts the torch one. Servers
only import modules: they never run a model or start a thread pool, so forking them is
safe (nothing is forked after torch started threads). Each server keeps a spare of itself
(`runtime.spare`) that takes over at once when the server dies.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing as mp
import os
import threading
from multiprocessing import forkserver, popen_forkserver, process, reduction, spawn, util
from multiprocessing.context import BaseContext, ForkServerContext
from pathlib import Path
from typing import Any, Literal

from enserve.runtime.spare import SparedForkServer, serve_spare
from enserve.spec import EnsembleSpec

Flavor = Literal["lean", "torch", "fused"]

# Every flavor preloads this module too: a worker unpickles its process object, whose class
# lives here, and importing it (with psutil and logging) in each worker cost 35-50 ms.
PRELOAD: dict[Flavor, list[str]] = {
    "lean": ["enserve.runtime.worker", "onnxruntime", "enserve.runtime.launch",
             "enserve.variants.load", "enserve.members.onnx_shared", "enserve.runtime.preload_warm"],
    "torch": ["enserve.runtime.worker", "onnxruntime", "torch", "torchvision",
              "enserve.members.loaders", "enserve.variants.build", "enserve.runtime.launch",
              "enserve.runtime.preload_warm"],
    # fx groups loaded from their folded-weights file: torch, no torchvision, no ORT
    "fused": ["enserve.runtime.worker", "torch", "enserve.fusion.groups", "enserve.variants.fused",
              "enserve.runtime.launch", "enserve.runtime.preload_warm"],
}

_servers: dict[Flavor, SparedForkServer] = {}
_lock = threading.Lock()


def _server(flavor: Flavor) -> SparedForkServer:
    with _lock:
        server = _servers.get(flavor)
        if server is None:
            server = SparedForkServer(PRELOAD[flavor], lambda listener, alive: _start_spare(
                flavor, listener, alive))
            _servers[flavor] = server
        return server


def _start_spare(flavor: Flavor, listener: Any, alive: Any) -> Any:
    """Fork a spare of the `flavor` server from it (see `runtime.spare`)."""
    spare = _CONTEXTS[flavor].Process(  # type: ignore[attr-defined]
        target=serve_spare, args=(listener, alive), name=f"enserve-spare-{flavor}", daemon=True)
    spare.start()
    return spare


class _ServerPopen(popen_forkserver.Popen):
    """`popen_forkserver.Popen` that asks the `flavor` server instead of the module-wide one."""

    flavor: Flavor = "lean"
    _fds: list[int]

    def _launch(self, process_obj: Any) -> None:
        prep_data = spawn.get_preparation_data(process_obj._name)
        # Workers run enserve's own code only: they never re-import the caller's main
        # script (`python app.py` without a main guard would run again in every worker,
        # and importing it cost each worker 0.3 s in a benchmark script).
        prep_data.pop("init_main_from_path", None)
        prep_data.pop("init_main_from_name", None)
        buf = io.BytesIO()
        mp.context.set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            mp.context.set_spawning_popen(None)
        self.sentinel, w = _server(self.flavor).connect_to_new_process(self._fds)
        parent_w = os.dup(w)  # the child watches it to notice a dead parent
        self.finalizer = util.Finalize(self, util.close_fds,  # type: ignore[attr-defined]
                                       (parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)
        _server(self.flavor).want_spare()  # the server is ready now: keep a spare of it


class _LeanPopen(_ServerPopen):
    flavor: Flavor = "lean"


class _TorchPopen(_ServerPopen):
    flavor: Flavor = "torch"


class _FusedPopen(_ServerPopen):
    flavor: Flavor = "fused"


class LeanProcess(process.BaseProcess):
    """A process forked from the lean server (module-level: process objects are pickled)."""

    _start_method = "forkserver"

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        return _LeanPopen(process_obj)


class TorchProcess(process.BaseProcess):
    """A process forked from the torch server."""

    _start_method = "forkserver"

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        return _TorchPopen(process_obj)


class FusedProcess(process.BaseProcess):
    """A process forked from the fused server (torch without torchvision)."""

    _start_method = "forkserver"

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        return _FusedPopen(process_obj)


class LeanContext(ForkServerContext):
    Process = LeanProcess  # type: ignore[assignment]


class TorchContext(ForkServerContext):
    Process = TorchProcess  # type: ignore[assignment]


class FusedContext(ForkServerContext):
    Process = FusedProcess  # type: ignore[assignment]


_CONTEXTS: dict[Flavor, BaseContext] = {"lean": LeanContext(), "torch": TorchContext(),
                                        "fused": FusedContext()}


def context(flavor: Flavor) -> BaseContext:
    """A multiprocessing context whose processes fork from the `flavor` server."""
    return _CONTEXTS[flavor]


def stop_server(flavor: Flavor) -> bool:
    """Stop the `flavor` fork server if it runs (workers already forked keep running; the
    next worker of that flavor starts it again). True if one was stopped."""
    with _lock:
        server = _servers.get(flavor)
    if server is None or server._forkserver_pid is None:
        return False
    server._stop()  # type: ignore[attr-defined]
    return True


def revive() -> list[str]:
    """Replace every fork server that died, now (its spare takes over; without one a new
    server starts importing in the background). The flavors replaced."""
    with _lock:
        servers = list(_servers.items())
    revived: list[str] = []
    for flavor, server in servers:
        if server.died():
            server.ensure_running()
            revived.append(flavor)
    return revived


def spare_pids() -> dict[str, int]:
    """Process ids of the fork servers' spares running now."""
    with _lock:
        servers = list(_servers.items())
    found = {f: s.spare_pid() for f, s in servers}
    return {f: pid for f, pid in found.items() if pid is not None}


def server_pids() -> dict[str, int]:
    """Process ids of the fork servers running now."""
    with _lock:
        found = {f: s._forkserver_pid for f, s in _servers.items()}
    return {f: pid for f, pid in found.items() if pid is not None}


def flavor(spec: EnsembleSpec, member: str, variant: str | None, device: str = "cpu",
           cache_dir: Path | None = None) -> Flavor:
    """The fork server an instance starts from: `fused` for an fx group on the CPU whose
    folded-weights file exists (its load runs no architecture code), else `torch` or
    `lean` by `needs_torch`."""
    from enserve.formats.groups import parse_group_name, variant_options

    group = parse_group_name(member)
    if group is not None and group.kind == "fx" and device.startswith("cpu"):
        from enserve.fusion.folded_key import folded_path

        cl = variant_options(variant or "fused-fx")["channels_last"]
        if folded_path(spec, group.covers, cl, cache_dir).is_file():
            return "fused"
    return "torch" if needs_torch(spec, member, variant, device, cache_dir) else "lean"


def needs_torch(spec: EnsembleSpec, member: str, variant: str | None, device: str = "cpu",
                cache_dir: Path | None = None) -> bool:
    """Whether an instance of `member` (a member or fused group name) in `variant`
    (None = the member's default) will run PyTorch: the `onnx` variant of a PyTorch
    member does only while its ONNX export is not cached yet."""
    from enserve.formats.groups import parse_group_name
    from enserve.variants.names import default_variant

    if not device.startswith("cpu"):
        return True
    group = parse_group_name(member)
    if group is not None:
        return group.kind != "onnx"
    member_spec = spec.member(member)
    if member_spec.kind in ("onnx", "simulate"):
        return False
    chosen = default_variant(member_spec) if variant is None else variant
    if chosen != "onnx":
        return True
    from enserve.variants.load import cached_onnx

    return cached_onnx(spec, member_spec, cache_dir) is None


def weight_files(spec: EnsembleSpec, member: str, variant: str | None, device: str = "cpu",
                 cache_dir: Path | None = None) -> list[Path]:
    """The files an ONNX Runtime instance of `member` will map (its model's optimized
    copy: `.onnx` and `.data`), where they exist; [] for anything else. Imports no ORT."""
    from enserve.formats.groups import parse_group_name

    if not device.startswith("cpu") or parse_group_name(member) is not None:
        return []
    from enserve.members.onnx_shared import known_optimized_path
    from enserve.variants.load import cached_onnx
    from enserve.variants.names import default_variant

    model: Path | None = None
    with contextlib.suppress(Exception):  # best effort: the worker reads them anyway
        member_spec = spec.member(member)
        if member_spec.kind == "onnx":
            model = spec.resolve_path(member_spec.target, member)
        elif (default_variant(member_spec) if variant is None else variant) == "onnx":
            model = cached_onnx(spec, member_spec, cache_dir)
        final = None if model is None else known_optimized_path(model)
        if final is not None:  # not known: the workers hash the model and write the copy
            return [p for p in (final, final.with_suffix(".data")) if p.is_file()]
    return []
