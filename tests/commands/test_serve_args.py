"""`enserve serve` hands its planning flags to the server's configuration unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from enserve.cli import main


def _config(monkeypatch: pytest.MonkeyPatch, *flags: str) -> Any:
    seen: list[Any] = []
    monkeypatch.setattr("enserve.server.app.run", seen.append)
    assert main(["serve", str(Path("examples")), *flags]) == 0
    return seen[0]


def test_precision_and_plan_policy_reach_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(monkeypatch, "--precision", "fp32", "--plan-policy", "fail",
                     "--refine-profile")
    assert (config.precision, config.plan_policy, config.refine_profile) == ("fp32", "fail", True)
    default = _config(monkeypatch)
    assert default.precision is None and default.plan_policy == "replan"


def test_an_unknown_precision_is_refused_with_its_flag(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _config(monkeypatch, "--precision", "int4")
    assert "--precision" in capsys.readouterr().err
