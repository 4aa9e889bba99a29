"""A real `enserve serve` process on free loopback ports, for benchmarks and tests.

`start_server(repo, workdir, ...)` returns once the server has written its port file
(its listeners are bound); `RunningServer.ready()` asks `/v2/health/ready`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 90.0


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    http: int
    grpc: int
    metrics: int
    log: Path

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc}"

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def start_server(repo: Path, workdir: Path, *extra: str, models: list[str] | None = None,
                 env: Mapping[str, str] | None = None) -> RunningServer:
    """Serve `repo` (backend `reference` unless `extra` names one) with one thread, logging
    to `workdir/server.log`; `env` is added to this process's environment."""
    port_file = workdir / "ports.json"
    port_file.unlink(missing_ok=True)
    log = workdir / "server.log"
    args = [sys.executable, "-m", "enserve.cli", "serve", str(repo), "--http-port", "0",
            "--grpc-port", "0", "--metrics-port", "0", "--port-file", str(port_file),
            "--threads", "1", "--log-level", "warning"]
    if "--backend" not in extra:
        args += ["--backend", "reference"]
    args += extra
    for name in models or []:
        args += ["--model", name]
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})
    deadline = time.monotonic() + START_TIMEOUT_S
    while not port_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait(5)
            raise RuntimeError(f"server did not start:\n{log.read_text()}")
        time.sleep(0.1)
    ports = json.loads(port_file.read_text())
    return RunningServer(process, ports["http"], ports["grpc"], ports["metrics"], log)
