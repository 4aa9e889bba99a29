"""Code named by a spec runs only when the operator trusts it (defect 9)."""

from __future__ import annotations

from pathlib import Path

import pytest

from enserve.errors import SpecError
from enserve.members.loaders import build_architecture
from enserve.members.trust import ENV, is_trusted
from enserve.spec import load_spec

SPEC = """
name: t
inputs: [{name: x, datatype: FP32, shape: [-1, 6]}]
members:
  - {name: m, source: "safetensors:w.safetensors", architecture: "%s"}
"""
MODELS = "import torch\n\ndef lin():\n    return torch.nn.Linear(6, 2)\n"


def _spec(tmp_path: Path, arch: str) -> object:
    (tmp_path / "models.py").write_text(MODELS)
    (tmp_path / "ensemble.yaml").write_text(SPEC % arch)
    return load_spec(tmp_path / "ensemble.yaml")


@pytest.mark.parametrize("arch", ["python:os:getpid", "python:models.py:lin", "python:torch.nn:Linear"])
def test_refused_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arch: str) -> None:
    monkeypatch.delenv(ENV, raising=False)
    spec = _spec(tmp_path, arch)
    with pytest.raises(SpecError, match="not trusted.*--trust-code"):
        build_architecture(spec, spec.members[0], arch, "architecture")


def test_trusted_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec(tmp_path, "python:models.py:lin")
    monkeypatch.setenv(ENV, "models.py")
    assert build_architecture(spec, spec.members[0], "python:models.py:lin", "architecture") is not None
    with pytest.raises(SpecError, match="not trusted"):  # a file name trusts that file, not modules
        build_architecture(spec, spec.members[0], "python:os:getpid", "architecture")
    monkeypatch.setenv(ENV, str(tmp_path))  # a folder trusts the .py files under it
    assert build_architecture(spec, spec.members[0], "python:models.py:lin", "architecture") is not None
    monkeypatch.setenv(ENV, "torch")  # a module trusts its sub-modules
    assert is_trusted("torch.nn") and not is_trusted("torchvision")
    monkeypatch.setenv(ENV, "*")
    assert is_trusted("os")
