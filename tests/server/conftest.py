from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the helpers next to this file

from server_fixtures import RunningServer, start_server, write_repository

from enserve.reference import ReferenceExecutor
from enserve.spec import load_spec


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
