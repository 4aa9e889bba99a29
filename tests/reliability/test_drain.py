"""Shutdown drain: every request that reaches the server gets an answer.

A request sent on an idle keep-alive connection while the server drains must be answered
(503 with `Connection: close`) instead of the connection being closed under it; new
connections are refused once the drain begins; admitted requests finish with 200."""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.server import RunningServer, start_server

SLOW_BODY = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 6],
                                    "data": [0.5] * 6}]})


def _slow_request(server: RunningServer, codes: list[int]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.http, timeout=60)
    conn.request("POST", "/v2/models/slow/infer", SLOW_BODY, {"Content-Type": "application/json"})
    codes.append(conn.getresponse().status)
    conn.close()


@pytest.fixture
def draining_server(fault_repo: Path, tmp_path: Path) -> RunningServer:
    server = start_server(fault_repo, tmp_path, "--trust-code", "models.py", models=["slow"])
    deadline = time.monotonic() + 60
    while not server.ready():
        assert time.monotonic() < deadline, server.log.read_text()
        time.sleep(0.05)
    return server


def test_drain_answers_requests_on_idle_keep_alive_connections(draining_server: RunningServer) -> None:
    server = draining_server
    idle = http.client.HTTPConnection("127.0.0.1", server.http, timeout=30)
    idle.request("GET", "/v2/health/live")
    first = idle.getresponse()
    first.read()
    assert first.status == 200 and first.getheader("connection") != "close"

    codes: list[int] = []
    busy = [threading.Thread(target=_slow_request, args=(server, codes)) for _ in range(4)]
    for t in busy:
        t.start()
    time.sleep(0.1)  # let them be admitted: they keep the drain going for >= 0.3 s each
    server.process.send_signal(signal.SIGTERM)
    try:
        while True:  # the same keep-alive connection, until the server says it is draining
            idle.request("GET", "/v2/health/ready")
            reply = idle.getresponse()
            reply.read()
            if reply.status != 200:
                break
        assert reply.status == 503
        assert reply.getheader("connection") == "close"
        assert reply.getheader("retry-after") is not None
        with pytest.raises(ConnectionRefusedError):  # the listener closed when the drain began
            http.client.HTTPConnection("127.0.0.1", server.http, timeout=5).connect()
        for t in busy:
            t.join(60)
        assert codes == [200] * 4
        assert server.process.wait(60) == 0
    finally:
        idle.close()
        server.stop()
