"""The same-node fast lane of `RayEngine`: small batches to an actor without a Ray call.

A plain actor call costs a task submission, a reply object and Ray's callback thread
(about 2 ms here before any work). For an actor on the driver's own node, Ray still places,
restarts and watches the actor, but small batches travel over a Unix-domain socket that the
actor opened for the driver alone: the driver makes a private directory (mode 0700) and a
random token; the actor listens on a fresh socket in that directory, accepts ONE connection
that presents the token (then removes the socket file) and answers `(task, inputs, rows)`
messages on a thread of its own, blocking on the socket (no spinning while idle). The
driver reads every lane on one reader thread and hands each answer on as a done `Future`,
as a plain call's answer would be; when a lane closes (the actor died or was killed) it
hands back everything still outstanding on it, and the engine sends that by plain calls.

Messages are pickled (`multiprocessing.connection.Connection` framing) and only read after
the token matched.
"""

from __future__ import annotations

import contextlib
import hmac
import itertools
import logging
import os
import secrets
import shutil
import socket
import struct
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from enserve.runtime.ray.paths import Answer, Broken

log = logging.getLogger("enserve.runtime.ray")

HELLO = b"enserve-lane-ok"
TOKEN_BYTES = 32
ACCEPT_TIMEOUT_S = 120.0  # the driver connects right after `ready`; a lane never taken closes
HANDSHAKE_TIMEOUT_S = 10.0
SEND_BUFFER = 4 << 20  # asked for (the kernel caps it): a few batches queue without blocking
SEND_TIMEOUT_S = 10  # a send blocked this long (the actor reads nothing): the lane breaks

Handler = Callable[[Any, int, int], Any]  # (inputs, start, stop) -> answer


class LaneTaskError(RuntimeError):
    """The actor's member raised while running a task sent through a lane."""


# ------------------------------------------------------------------------ actor's end
def serve_lane(folder: str, token: bytes, handler: Handler) -> str:
    """Listen on a fresh Unix socket in `folder` for one connection presenting `token`, then
    answer its tasks with `handler` on a daemon thread until it closes. Returns the path."""
    path = os.path.join(folder, f"lane-{os.getpid()}-{secrets.token_hex(4)}.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        os.chmod(path, 0o600)
        listener.listen(1)
        listener.settimeout(ACCEPT_TIMEOUT_S)
    except OSError:
        listener.close()
        raise
    threading.Thread(target=_serve, args=(listener, path, token, handler),
                     name="enserve-lane", daemon=True).start()
    return path


def _serve(listener: socket.socket, path: str, token: bytes, handler: Handler) -> None:
    try:
        try:
            sock, _ = listener.accept()
        finally:  # one connection only: nobody else can connect from now on
            listener.close()
            with contextlib.suppress(OSError):
                os.unlink(path)
        sock.settimeout(HANDSHAKE_TIMEOUT_S)
        if not hmac.compare_digest(_recv_exact(sock, len(token)), token):
            sock.close()
            return
        sock.sendall(HELLO)
        sock.settimeout(None)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
    except OSError:
        return
    with sock, Connection(os.dup(sock.fileno())) as conn:
        while True:
            try:
                task_id, inputs, start, stop = conn.recv()
            except (EOFError, OSError):
                return
            try:
                reply = (task_id, True, handler(inputs, start, stop))
            except Exception as exc:  # the member raised: that task's answer is the error
                reply = (task_id, False, f"{type(exc).__name__}: {exc}")
            try:
                conn.send(reply)
            except OSError:
                return


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        part = sock.recv(n - len(data))
        if not part:
            raise ConnectionError("lane closed during the handshake")
        data += part
    return data


# ------------------------------------------------------------------------ driver's end
@dataclass(eq=False)
class _Lane:
    lane_id: int
    sock: socket.socket
    conn: Connection
    pending: dict[int, Any] = field(default_factory=dict)  # task id -> what was sent
    send_lock: threading.Lock = field(default_factory=threading.Lock)


class Lanes:
    """The driver's end of every lane: a private directory and token to hand to actors,
    `connect` to the socket an actor opened, `send` a task, one reader thread that hands
    answers to `on_answer` and a closed lane's outstanding tasks to `on_broken`."""

    def __init__(self, on_answer: Answer, on_broken: Broken) -> None:
        self.folder = tempfile.mkdtemp(prefix="enserve-lane-")  # mode 0700
        self.token = secrets.token_bytes(TOKEN_BYTES)
        self._on_answer = on_answer
        self._on_broken = on_broken
        self._lock = threading.Lock()
        self._lanes: dict[int, _Lane] = {}
        self._ids = itertools.count()
        self._closed = False
        self.tasks = 0
        self.broken = 0
        self._wake_r, self._wake_w = socket.socketpair()
        self._reader = threading.Thread(target=self._read_loop, name="enserve-ray-lanes",
                                        daemon=True)
        self._reader.start()

    @property
    def open(self) -> int:
        with self._lock:
            return len(self._lanes)

    def connect(self, path: str, timeout_s: float = HANDSHAKE_TIMEOUT_S) -> int | None:
        """Open the lane an actor listens on at `path`: its id, or None when it cannot be
        opened (the engine then uses plain calls for that actor)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout_s)
            sock.connect(path)
            sock.sendall(self.token)
            if _recv_exact(sock, len(HELLO)) != HELLO:
                raise ConnectionError("unexpected handshake")
            sock.settimeout(None)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            # the engine sends with its lock held: never block on a stuck actor for long
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                            struct.pack("ll", SEND_TIMEOUT_S, 0))
            lane = _Lane(next(self._ids), sock, Connection(os.dup(sock.fileno())))
        except OSError as exc:
            sock.close()
            log.warning("fast lane %s not opened (plain calls): %s", path, exc)
            return None
        with self._lock:
            if self._closed:
                _close(lane)
                return None
            self._lanes[lane.lane_id] = lane
        self._wake()
        return lane.lane_id

    def send(self, lane_id: int, task_id: int, sent: Any, inputs: Any, start: int,
             stop: int) -> bool:
        """Send rows start:stop of `inputs`; `sent` comes back with the answer. False when
        the lane cannot take it (closed, or the send failed): send it another way."""
        with self._lock:
            lane = self._lanes.get(lane_id)
            if lane is None:
                return False
            lane.pending[task_id] = sent
        try:
            with lane.send_lock:
                lane.conn.send((task_id, inputs, start, stop))
        except Exception as exc:
            log.warning("fast lane send failed (%s: %s); plain calls", type(exc).__name__, exc)
            if isinstance(exc, OSError):  # perhaps half written: the lane is done for, the
                _shutdown(lane)  # reader hands back what else it had outstanding
            with self._lock:  # taken by the reader meanwhile: it hands it back itself
                return lane.pending.pop(task_id, None) is None
        with self._lock:
            self.tasks += 1
        return True

    def close_lane(self, lane_id: int) -> list[Any]:
        """Stop using a lane (its actor is being killed or replaced): what it still had
        outstanding, for the caller to send another way."""
        with self._lock:
            lane = self._lanes.pop(lane_id, None)
            if lane is None:
                return []
            outstanding = list(lane.pending.values())
            lane.pending.clear()
        _shutdown(lane)  # the reader sees it close and lets it go
        return outstanding

    def close(self) -> None:
        """Close every lane and the reader (outstanding tasks are dropped: the engine is
        stopping) and remove the directory."""
        with self._lock:
            self._closed = True
            lanes = list(self._lanes.values())
            self._lanes.clear()
        for lane in lanes:
            _shutdown(lane)
        self._wake()
        if self._reader is not threading.current_thread():
            self._reader.join(timeout=5.0)
        shutil.rmtree(self.folder, ignore_errors=True)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    # ----------------------------------------------------------------- reader
    def _read_loop(self) -> None:
        watched: dict[Connection, _Lane] = {}
        try:
            while True:
                with self._lock:
                    if self._closed:
                        break
                    for lane in self._lanes.values():
                        watched.setdefault(lane.conn, lane)
                for ready in wait([*watched, self._wake_r]):
                    if ready is self._wake_r:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                        continue
                    assert isinstance(ready, Connection)
                    lane = watched[ready]
                    if not self._read(lane):
                        del watched[ready]
                        _close(lane)
        finally:
            for lane in watched.values():
                _close(lane)
            self._wake_r.close()
            self._wake_w.close()

    def _read(self, lane: _Lane) -> bool:
        """Hand on one answer from `lane`; False once it has closed."""
        try:
            task_id, ok, payload = lane.conn.recv()
        except (EOFError, OSError) as exc:
            self._lost(lane, f"fast lane closed ({type(exc).__name__}): actor gone?")
            return False
        with self._lock:
            sent = lane.pending.pop(task_id, None)
        if sent is None:
            return True  # given back meanwhile
        done: Future[Any] = Future()
        if ok:
            done.set_result(payload)
        else:
            done.set_exception(LaneTaskError(payload))
        try:
            self._on_answer(sent, done)
        except Exception:
            log.exception("fast lane answer failed")
        return True

    def _lost(self, lane: _Lane, why: str) -> None:
        with self._lock:
            if self._lanes.pop(lane.lane_id, None) is None:
                return  # closed on purpose (close_lane, close): its tasks already given back
            self.broken += 1
            outstanding = list(lane.pending.values())
            lane.pending.clear()
        if outstanding:
            try:
                self._on_broken(outstanding, why)
            except Exception:
                log.exception("fast lane hand-back failed")


def _shutdown(lane: _Lane) -> None:
    with contextlib.suppress(OSError):
        lane.sock.shutdown(socket.SHUT_RDWR)


def _close(lane: _Lane) -> None:
    _shutdown(lane)
    with contextlib.suppress(OSError):
        lane.conn.close()
    with contextlib.suppress(OSError):
        lane.sock.close()
