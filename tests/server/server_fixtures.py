"""A tiny model repository written to a temp folder, and a real server process over it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

TOKEN = "s3cret-token"

MODELS_PY = '''
import time
import torch
from torch import nn


def _seeded(seed, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def linear():
    return _seeded(1, lambda: nn.Linear(6, 5))


def mlp():
    return _seeded(2, lambda: nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5)))


def pix_linear():
    return _seeded(3, lambda: nn.Sequential(nn.Flatten(), nn.Linear(16, 3)))


def pix_conv():
    return _seeded(4, lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(32, 3)))


class Slow(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(6, 5)

    def forward(self, x):
        time.sleep(0.3)
        return self.inner(x)


def slow():
    return _seeded(5, Slow)
'''

SPECS = {
    "tiny": '''
name: tiny
inputs: [{name: x, datatype: FP32, shape: [-1, 6]}]
members:
  - {name: lin, source: "python:models.py:linear"}
  - {name: mlp, source: "python:models.py:mlp"}
top_k: 2
''',
    "pix": '''
name: pix
inputs: [{name: img, datatype: UINT8, shape: [-1, 1, 4, 4]}]
members:
  - {name: flat, source: "python:models.py:pix_linear", preprocess: {scale: 0.00392156862}}
  - {name: conv, source: "python:models.py:pix_conv", preprocess: {scale: 0.00392156862}}
combiner: majority_vote
''',
    "twoin": '''
name: twoin
inputs:
  - {name: a, datatype: FP32, shape: [-1, 6]}
  - {name: b, datatype: FP64, shape: [-1, 6]}
members:
  - {name: lin, source: "python:models.py:linear", input: a}
  - {name: mlp, source: "python:models.py:mlp", input: b}
combiner: mean_logits
''',
    "slow": '''
name: slow
inputs: [{name: x, datatype: FP32, shape: [-1, 6]}]
members:
  - {name: sleepy, source: "python:models.py:slow"}
''',
    "broken": '''
name: broken
inputs: [{name: x, datatype: FP32, shape: [-1, 6]}]
members:
  - {name: ghost, source: "python:models.py:does_not_exist"}
''',
}


def write_repository(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in SPECS.items():
        folder = root / name
        folder.mkdir(exist_ok=True)
        (folder / "ensemble.yaml").write_text(text)
        (folder / "models.py").write_text(MODELS_PY)
    return root


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
            return httpx.get(f"http://{self.http_url}/v2/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
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


def start_server(repo: Path, workdir: Path, *extra: str, models: list[str] | None = None) -> RunningServer:
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
    env = {**os.environ, "ENSERVE_REPOSITORY_TOKEN": TOKEN}
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 90
    while not port_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait(5)
            raise RuntimeError(f"server did not start:\n{log.read_text()}")
        time.sleep(0.1)
    ports = json.loads(port_file.read_text())
    return RunningServer(process, ports["http"], ports["grpc"], ports["metrics"], log)
