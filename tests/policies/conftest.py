"""Fixtures: the tiny four-member ensemble of `tests/helpers/policies.py` in a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from enserve.reference import ReferenceExecutor
from enserve.spec import EnsembleSpec
from tests.helpers.policies import make_spec


@pytest.fixture()
def quad(tmp_path: Path) -> EnsembleSpec:
    return make_spec(tmp_path)


@pytest.fixture()
def executor(quad: EnsembleSpec) -> ReferenceExecutor:
    return ReferenceExecutor(quad)
