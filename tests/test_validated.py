"""An ensemble validated before skips the output-shape probe; any change probes again."""

from __future__ import annotations

from pathlib import Path

import pytest

import enserve.reference as reference
from enserve.reference import ReferenceExecutor
from enserve.spec import spec_from_dict
from tests.helpers.runtime import make_spec


def test_second_load_skips_the_probe_until_a_member_changes(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("ENSERVE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("ENSERVE_REVALIDATE", raising=False)
    probes: list[str] = []
    real = reference._probe_output_shapes

    def counting(spec, members):  # type: ignore[no-untyped-def]
        probes.append(spec.name)
        return real(spec, members)

    monkeypatch.setattr(reference, "_probe_output_shapes", counting)
    folder = tmp_path / "ens"
    folder.mkdir()
    spec = make_spec(folder, ["net_a", "net_b"])
    assert ReferenceExecutor(spec).output_shape == (-1, 5)
    assert ReferenceExecutor(spec).output_shape == (-1, 5)
    assert len(probes) == 1  # the second load trusted the first validation

    # a member's spec entry changes (a file's bytes would too): validated again
    data = spec.model_dump(mode="json")
    data["members"][1]["preprocess"] = {"scale": 2.0}
    changed = spec_from_dict(data, base_dir=folder, where=str(folder / "ensemble.yaml"))
    assert ReferenceExecutor(changed).output_shape == (-1, 5)
    assert len(probes) == 2
    assert ReferenceExecutor(changed).output_shape == (-1, 5)
    assert len(probes) == 2


def test_disagreeing_members_are_never_remembered(tmp_path: Path, monkeypatch):
    from enserve.errors import SpecError

    monkeypatch.setenv("ENSERVE_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "ens"
    folder.mkdir()
    spec = make_spec(folder, ["net_a", "net_b"])
    models = folder / "models.py"
    models.write_text(models.read_text().replace(
        "def net_b():\n    return _net(2)",
        "def net_b():\n    torch.manual_seed(2)\n    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))"))
    for _ in range(2):
        with pytest.raises(SpecError, match="output shapes disagree"):
            ReferenceExecutor(spec)
