"""A fork server that keeps a spare of itself, so its death costs no re-import.

A fork server takes seconds to start (it imports torch and the member code before it
forks anything: 7–8 s on a 2-core machine). Once it is ready, `SparedForkServer` asks it
for one more child: a *spare*, a copy of the server (same imported modules, its pages
shared copy-on-write) that runs a fork-server loop of its own on a fresh socket and
forks nothing until needed. When the server dies (`kill -9`), the next request for a
worker, or `revive()` as soon as the engine sees the death, promotes the spare to be the
server at once, and a new spare is forked from it in the background. Only when the spare
is gone too (the whole process group was killed) is a server started from scratch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import connection, forkserver, util
from multiprocessing.connection import Connection
from typing import Any

import psutil

from enserve.runtime.memory import adopt_root, forget_root
from enserve.runtime.restarts import pid_alive

log = logging.getLogger("enserve.runtime")

StartSpare = Callable[[socket.socket, Connection], Any]
"""Starts a process, forked from this server, that runs `serve_spare(listener, alive)`;
returns the started process object."""


def serve_spare(listener: socket.socket, alive: Connection) -> None:
    """Body of a spare: a fork-server loop on `listener` until `alive` reaches EOF (the
    engine's process is gone). Modules are imported already: nothing to preload."""
    forkserver.main(listener.detach(), alive.fileno(), [])


@dataclass
class _Spare:
    address: str
    alive_w: int  # closing it stops the spare
    process: Any  # the multiprocessing process object (keeps its pipes open)
    watch: psutil.Process

    def alive(self) -> bool:
        with contextlib.suppress(psutil.Error):
            return bool(self.watch.is_running() and self.watch.status() != psutil.STATUS_ZOMBIE)
        return False

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.alive_w)
        with contextlib.suppress(psutil.Error):
            self.watch.wait(2.0)
        _unlink(self.address)


def _unlink(address: str | None) -> None:
    if address and not util.is_abstract_socket_namespace(address):
        with contextlib.suppress(OSError):
            os.unlink(address)


class SparedForkServer(forkserver.ForkServer):
    """`multiprocessing.forkserver.ForkServer` that promotes a spare when it dies."""

    # the base class's private state (untyped in the stubs)
    _lock: threading.Lock
    _forkserver_pid: int | None
    _forkserver_address: str | None
    _forkserver_alive_fd: int | None

    def __init__(self, preload: list[str], start_spare: StartSpare) -> None:
        super().__init__()
        self.set_forkserver_preload(preload)
        self._start_spare = start_spare
        self._spare: _Spare | None = None
        self._adopted: psutil.Process | None = None  # the server is a promoted spare
        self._making_spare = False
        self._spare_lock = threading.Lock()  # workers may start from several threads

    # --------------------------------------------------------------- the server
    def ensure_running(self) -> None:
        with self._lock:
            pid = self._forkserver_pid
            if pid is not None and pid_alive(pid):
                return
            if pid is not None:
                log.warning("fork server (pid %d) is gone", pid)
                self._forget_unlocked()
                if self._promote_unlocked():
                    return
        super().ensure_running()

    def died(self) -> bool:
        """Was this server started, and is it dead now?"""
        with self._lock:
            pid = self._forkserver_pid
        return pid is not None and not pid_alive(pid)

    def _forget_unlocked(self) -> None:
        if self._adopted is None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._forkserver_pid or -1, os.WNOHANG)
        else:
            forget_root(self._adopted.pid)
        if self._forkserver_alive_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._forkserver_alive_fd)
        _unlink(self._forkserver_address)
        self._forkserver_address = self._forkserver_alive_fd = None
        self._forkserver_pid, self._adopted = None, None

    def _promote_unlocked(self) -> bool:
        spare, self._spare = self._spare, None
        if spare is None:
            return False
        if not spare.alive():
            spare.stop()
            return False
        self._forkserver_address = spare.address
        self._forkserver_alive_fd = spare.alive_w
        self._forkserver_pid, self._adopted = spare.watch.pid, spare.watch
        adopt_root(spare.watch.pid)  # orphaned by the server's death: still ours to count
        log.warning("fork server replaced by its spare (pid %d)", spare.watch.pid)
        self.want_spare()
        return True

    def _stop_unlocked(self) -> None:
        if self._spare is not None:
            self._spare.stop()
            self._spare = None
        if self._adopted is None:
            super()._stop_unlocked()  # type: ignore[misc]
            return
        adopted = self._adopted
        self._forget_unlocked()
        with contextlib.suppress(psutil.Error):
            adopted.wait(5.0)

    # ---------------------------------------------------------------- the spare
    def spare_pid(self) -> int | None:
        with self._lock:
            spare = self._spare
        return spare.watch.pid if spare is not None and spare.alive() else None

    def want_spare(self) -> None:
        """Fork a spare from the running server in the background, unless one is there
        or on its way."""
        with self._spare_lock:
            if self._making_spare or (self._spare is not None and self._spare.alive()):
                return
            self._making_spare = True
        threading.Thread(target=self._make_spare, name="enserve-forkserver-spare",
                         daemon=True).start()

    def _make_spare(self) -> None:
        spare: _Spare | None = None
        try:
            spare = self._fork_spare()
        except Exception as exc:  # the server died meanwhile: the next start retries
            log.warning("could not fork a spare fork server (%s: %s)", type(exc).__name__, exc)
        with self._lock:
            old: _Spare | None = None
            if spare is not None and self._forkserver_pid is None:  # stopped meanwhile
                old = spare
            elif spare is not None:
                old, self._spare = self._spare, spare
            self._making_spare = False
        if old is not None:
            old.stop()

    def _fork_spare(self) -> _Spare:
        address = connection.arbitrary_address("AF_UNIX")  # type: ignore[attr-defined]
        alive_r, alive_w = os.pipe()
        try:
            with socket.socket(socket.AF_UNIX) as listener:
                listener.bind(address)
                os.chmod(address, 0o600)
                listener.listen()
                with Connection(alive_r, writable=False) as alive:
                    process = self._start_spare(listener, alive)
        except BaseException:
            os.close(alive_w)
            _unlink(address)
            raise
        return _Spare(address, alive_w, process, psutil.Process(process.pid))
