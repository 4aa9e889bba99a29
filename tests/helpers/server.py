"""A tiny model repository written to a temp folder, a real server process over it, and
the session fixtures `repo`, `server` and `oracle`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from enserve.bench import local_server
from enserve.bench.local_server import RunningServer
from enserve.reference import ReferenceExecutor
from enserve.spec import load_spec

__all__ = ["TOKEN", "RunningServer", "start_server", "write_repository"]

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


def start_server(repo: Path, workdir: Path, *extra: str, models: list[str] | None = None) -> RunningServer:
    """`enserve serve` over `repo` with the repository token set (backend `reference` unless
    `extra` names one)."""
    return local_server.start_server(repo, workdir, *extra, models=models,
                                     env={"ENSERVE_REPOSITORY_TOKEN": TOKEN})


@pytest.fixture(scope="session")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_repository(tmp_path_factory.mktemp("repository"))


@pytest.fixture(scope="session")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One real server process for the whole session (slow model left unloaded)."""
    running = start_server(
        repo, tmp_path_factory.mktemp("server"), "--max-batch", "16", "--max-body-mb", "1",
        models=["tiny", "pix", "twoin", "broken"],
    )
    yield running
    code = running.stop()
    assert code == 0, running.log.read_text()


@pytest.fixture(scope="session")
def oracle(repo: Path) -> dict[str, ReferenceExecutor]:
    return {name: ReferenceExecutor(load_spec(repo / name)) for name in ("tiny", "pix", "twoin")}
