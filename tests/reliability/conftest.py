from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.faults import write_fault_repository
from tests.helpers.server import RunningServer, start_server


@pytest.fixture(scope="session")
def fault_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fault_repository(tmp_path_factory.mktemp("fault-repository"))


@pytest.fixture(scope="module")
def fault_server(fault_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A reference-backend server with tight connection limits (so tests run in seconds)."""
    running = start_server(
        fault_repo, tmp_path_factory.mktemp("fault-server"), "--max-body-mb", "1",
        "--body-budget-mb", "1.5", "--header-timeout", "1", "--body-timeout", "1",
        "--max-header-kb", "16", "--trust-code", "models.py", "--request-timeout", "0.15",
        models=["tiny", "crashy", "slow"],
    )
    yield running
    running.stop()
