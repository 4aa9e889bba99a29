"""The server as the CLI runs it: a process of its own."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from enserve.server import app
from enserve.server.app import ServerConfig


def test_the_cli_server_freezes_import_time_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    """`run` (the process-owning server) moves what is imported before serving out of the
    cyclic collector's full passes, which would otherwise block the event loop on every
    eviction's collection."""
    seen: list[int] = []

    class Stub:
        def __init__(self, config: object) -> None:
            pass

        async def serve(self) -> None:
            seen.append(gc.get_freeze_count())

    monkeypatch.setattr(app, "EnserveServer", Stub)
    gc.unfreeze()
    try:
        app.run(ServerConfig(repository=Path(".")))
    finally:
        gc.unfreeze()
    assert seen and seen[0] > 1000
