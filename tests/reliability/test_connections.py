"""Bounded connections: header size, header and body read timeouts (slowloris), HTTP/0.9,
and a budget on request-body bytes in flight with admission before the body is read.

The fault server runs with --max-header-kb 16 --header-timeout 1 --body-timeout 1
--max-body-mb 1 --body-budget-mb 1.5. What is tested is that the server cuts a connection,
not how fast: each test waits up to CUT_WITHIN_S (30x the timeouts) and passes as soon as
the connection is closed, so a busy machine only makes a failure slower to report."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

from tests.helpers.server import RunningServer

CUT_WITHIN_S = 30.0


def _connect(server: RunningServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.http), timeout=10)
    return sock


def _read_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection (or `timeout`)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    deadline = time.monotonic() + seconds
    data = b""
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True, data
        if not chunk:
            return True, data
        data += chunk
    return False, data


def _trickle(sock: socket.socket, done: threading.Event) -> None:
    """One body byte every 0.2 s (a gap below the 1 s body timeout) until `done` or the
    connection is gone, so the connection stays admitted however slow the machine."""
    while not done.wait(0.2):
        try:
            sock.sendall(b" ")
        except OSError:
            return


def test_http09_refused(fault_server: RunningServer) -> None:
    with _connect(fault_server) as sock:
        sock.sendall(b"GET /v2/health/ready\r\n\r\n")
        reply = _read_all(sock)
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    assert b'"ready"' not in reply


def test_huge_header_refused(fault_server: RunningServer) -> None:
    with _connect(fault_server) as sock:
        sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        try:
            for _ in range(64):  # up to 4 MB of one header
                sock.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = _read_all(sock, 5)
    assert sent < 4 * 1024 * 1024 or reply.startswith(b"HTTP/1.1 431"), (sent, reply[:200])
    assert reply.startswith(b"HTTP/1.1 431") or reply == b"", reply[:200]


def test_many_small_headers_refused(fault_server: RunningServer) -> None:
    headers = "".join(f"X-H{i}: {'v' * 100}\r\n" for i in range(400))  # ~45 KB > 16 KB
    with _connect(fault_server) as sock:
        sock.sendall(f"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
        reply = _read_all(sock)
    assert reply.startswith(b"HTTP/1.1 431"), reply[:200]


def test_slow_headers_are_cut(fault_server: RunningServer) -> None:
    """slowloris: a request line, then one header byte now and then; and a silent connection."""
    with _connect(fault_server) as slow, _connect(fault_server) as silent:
        slow.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < CUT_WITHIN_S and not closed:
            try:
                slow.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            closed, _ = _closed_within(slow, 0.5)
        assert closed, (f"a connection trickling its headers was kept for {CUT_WITHIN_S:g} s "
                        "(header timeout 1 s)")
        closed, data = _closed_within(silent, CUT_WITHIN_S)
        assert closed, f"a silent connection was kept for {CUT_WITHIN_S:g} s"
        assert data == b"" or data.startswith(b"HTTP/1.1 408")


def test_stalled_body_is_cut(fault_server: RunningServer) -> None:
    with _connect(fault_server) as sock:
        sock.sendall(b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"in")
        closed, data = _closed_within(sock, CUT_WITHIN_S)
    assert closed, f"a request whose body stalled was kept for {CUT_WITHIN_S:g} s (body timeout 1 s)"
    assert data == b"" or data.startswith(b"HTTP/1.1 408"), data[:200]


def test_body_budget_refuses_before_reading(fault_server: RunningServer) -> None:
    """Two bodies of 0.9 MB do not fit a 1.5 MB budget: the second is refused with 503 and
    Retry-After while the first is still being sent, before a byte of its body is read."""
    size = 900 * 1024
    head = (f"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\n\r\n").encode()
    with _connect(fault_server) as first, _connect(fault_server) as second:
        first.sendall(head + b"{")  # admitted: its 0.9 MB are reserved, the body trickles
        done = threading.Event()
        threading.Thread(target=_trickle, args=(first, done), daemon=True).start()
        time.sleep(0.5)  # the first is admitted before the second asks
        second.sendall(head)  # no body byte sent
        reply = _read_all(second, CUT_WITHIN_S)
        done.set()
        assert reply.startswith(b"HTTP/1.1 503"), reply[:300]
        assert b"retry-after: 1" in reply.lower()
        assert b"budget" in reply
    # once the first connection is gone, the budget is free again
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 6], "data": [0.5] * 6}]})
    deadline = time.monotonic() + CUT_WITHIN_S
    status = 0
    while time.monotonic() < deadline and status != 200:
        status = httpx.post(f"http://{fault_server.http_url}/v2/models/tiny/infer",
                            content=body.encode() + b" " * (size - len(body)), timeout=10).status_code
        time.sleep(0.1)
    assert status == 200


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compression_bomb_refused(fault_server: RunningServer, encoding: str) -> None:
    import gzip
    import zlib

    raw = b"[" + b"0," * (20 * 1024 * 1024) + b"0]"
    packed = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)
    response = httpx.post(f"http://{fault_server.http_url}/v2/models/tiny/infer", content=packed,
                          headers={"Content-Encoding": encoding}, timeout=30)
    assert response.status_code == 413, response.text
