"""Fixtures for runtime tests: every test must leave no shared memory behind."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from enserve.runtime.shm import leaked_segments


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    mine = f"enserve_{os.getpid()}_"  # other engineers' processes share /dev/shm
    before = set(leaked_segments(mine))
    yield
    assert set(leaked_segments(mine)) - before == set(), "shared memory segments leaked"
