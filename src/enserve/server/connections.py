"""Connection limits for the HTTP listeners: uvicorn's httptools protocol with guards.

- the request line and headers may take at most `max_header_bytes` (else 431) and must
  arrive within `header_timeout_s` of the connection opening or the request starting
  (slowloris; else 408 and the connection closes);
- a request body must keep arriving: no gap longer than `body_timeout_s` while the server
  is reading it (else 408 and close);
- at most `max_connections` connections are open at once (more get 503 and are closed);
- HTTP/0.9 (a request line without a version) is refused with 400;
- once the server drains (`begin_drain`), every response closes its connection
  (`Connection: close`), so a client never sends on a keep-alive connection the server is
  about to close: each request that reaches the server gets an answer.

The body-bytes budget (admission before a body is read) lives in `server/http.py`, where
the request's declared size is known.
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("enserve.server")

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large",
            503: b"Service Unavailable"}


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int = 64 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 1024


def guarded_protocol(limits: ConnectionLimits) -> type[HttpToolsProtocol]:
    """A uvicorn `http` protocol class enforcing `limits` (pass it as `Config(http=...)`)."""

    class GuardedProtocol(_Guarded):
        pass

    GuardedProtocol.limits = limits
    return GuardedProtocol


def begin_drain(server: Any) -> int:
    """Stop a uvicorn `server` from accepting connections and make each open one close after
    its next response; returns how many connections are open."""
    for listener in getattr(server, "servers", []):
        listener.close()
    connections = list(server.server_state.connections)
    for connection in connections:
        if isinstance(connection, _Guarded):
            connection.begin_drain()
    return len(connections)


async def connections_closed(servers: list[Any], timeout_s: float) -> None:
    """Wait (at most `timeout_s`) until no connection of `servers` is open: draining clients
    have each had their last answer, with `Connection: close`."""
    until = asyncio.get_running_loop().time() + timeout_s
    while any(s.server_state.connections for s in servers):
        if asyncio.get_running_loop().time() >= until:
            return
        await asyncio.sleep(0.02)


class _Guarded(HttpToolsProtocol):
    limits = ConnectionLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_headers = True  # reading a request line and headers (or waiting for one)
        self._header_bytes = 0
        self._header_due: float | None = None  # loop time by which the headers must be in
        self._body_due: float | None = None  # loop time by which more body must arrive
        self._reading_body = False
        self._refused = False
        self._draining = False

    # --- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        _sweeper(self.loop, self.limits).add(self)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(503, "too many open connections; retry later")
            return
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        _sweeper(self.loop, self.limits).discard(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_headers:
            self._header_bytes += len(data)
        elif self._reading_body:
            self._arm_body_timer()
        super().data_received(data)
        if self._in_headers and not self._refused and self._header_bytes > self.limits.max_header_bytes:
            # still no end of headers past the limit: the parser would keep buffering them
            self._refuse(431, f"request headers exceed {self.limits.max_header_bytes} bytes")

    # --- parser callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers, self._header_bytes = True, 0
        if self._header_due is None:
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._cancel(header=True)
        self._in_headers = False
        if self.parser.get_http_version() == "0.9":
            self._refuse(400, "HTTP/0.9 is not supported")
            return
        size = sum(len(n) + len(v) + 4 for n, v in self.headers) + len(self.url)
        if size > self.limits.max_header_bytes:
            self._refuse(431, f"request headers exceed {self.limits.max_header_bytes} bytes")
            return
        super().on_headers_complete()
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False
        self._reading_body = True
        self._arm_body_timer()

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._reading_body = False
        self._cancel(header=False)
        self._in_headers, self._header_bytes = True, 0  # what follows is the next request
        if self._refused:
            return
        super().on_message_complete()

    # --- shutdown -----------------------------------------------------------------------
    def begin_drain(self) -> None:
        """From now on, close the connection after each response (the one in progress too)."""
        self._draining = True
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False

    # --- timers (deadlines checked by the loop's sweeper: no timer object per request) ---
    def _arm_header_timer(self) -> None:
        self._header_due = self.loop.time() + self.limits.header_timeout_s

    def _arm_body_timer(self) -> None:
        self._body_due = self.loop.time() + self.limits.body_timeout_s

    def _cancel(self, header: bool) -> None:
        if header:
            self._header_due = None
        else:
            self._body_due = None

    def _cancel_timers(self) -> None:
        self._header_due = self._body_due = None

    def check_deadlines(self, now: float) -> None:
        """Called by the sweeper: act on a phase that ran past its time."""
        if self._header_due is not None and now >= self._header_due:
            self._header_timeout()
        if self._body_due is not None and now >= self._body_due:
            self._body_timeout()

    def _header_timeout(self) -> None:
        self._header_due = None
        if self._in_headers and (self.cycle is None or self.cycle.response_complete):
            self._refuse(408, f"request headers not received within {self.limits.header_timeout_s:g} s")

    def _body_timeout(self) -> None:
        self._body_due = None
        if not self._reading_body or self.cycle is None or self.cycle.response_complete:
            return
        if self.flow.read_paused:  # the server is not reading: not the client's delay
            self._arm_body_timer()
            return
        self._refuse(408, f"request body stalled for more than {self.limits.body_timeout_s:g} s")

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` with a JSON error and close the connection."""
        self._refused = True
        self._cancel_timers()
        if self.transport is None or self.transport.is_closing():
            return
        log.info("closing connection from %s: %s", self.client, message)
        body = json.dumps({"error": message}).encode()
        head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % (
            status, _REASONS[status], len(body))
        if status == 503:
            head += b"retry-after: 1\r\n"
        self.transport.write(head + b"connection: close\r\n\r\n" + body)
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.close()


class _Sweeper:
    """Checks the open guarded connections of one event loop every `period_s` for a header
    or body deadline passed. One periodic callback per loop replaces a timer armed and
    cancelled per request (two or three per request on a keep-alive connection)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, period_s: float) -> None:
        self.loop = loop
        self.period_s = period_s
        self.connections: set[_Guarded] = set()
        self._handle: asyncio.TimerHandle | None = None

    def add(self, connection: _Guarded) -> None:
        self.connections.add(connection)
        if self._handle is None:
            self._handle = self.loop.call_later(self.period_s, self._tick)

    def discard(self, connection: _Guarded) -> None:
        self.connections.discard(connection)

    def _tick(self) -> None:
        self._handle = None
        now = self.loop.time()
        for connection in list(self.connections):
            try:
                connection.check_deadlines(now)
            except Exception:  # one connection's trouble never stops the others' checks
                log.exception("connection deadline check failed")
        if self.connections:
            self._handle = self.loop.call_later(self.period_s, self._tick)


_SWEEPERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[ConnectionLimits, _Sweeper]] = (
    weakref.WeakKeyDictionary())


def _sweeper(loop: asyncio.AbstractEventLoop, limits: ConnectionLimits) -> _Sweeper:
    """The loop's sweeper for connections under `limits`; it checks ten times per the
    shorter timeout (at most once a second, at least every 50 ms)."""
    per_loop = _SWEEPERS.setdefault(loop, {})
    sweeper = per_loop.get(limits)
    if sweeper is None:
        period = min(1.0, max(0.05, min(limits.header_timeout_s, limits.body_timeout_s) / 10))
        sweeper = per_loop[limits] = _Sweeper(loop, period)
    return sweeper
