"""`enserve plan --devices` with a cluster: a declaration, a JSON node list, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from enserve.cli import main
from enserve.formats.profile import save_profile
from tests.helpers.profiles import entry, gpu, profile


@pytest.fixture
def profile_file(tmp_path: Path) -> Path:
    prof = profile([gpu(0, 4)], [entry(m, "cuda:0", b, 100, lat * b ** 0.5, 3.0)
                                 for m, lat in (("alpha", 0.01), ("beta", 0.02))
                                 for b in (1, 8)])
    path = tmp_path / "profile.json"
    save_profile(prof, path)
    return path


def test_plan_across_declared_nodes(profile_file: Path, capsys: pytest.CaptureFixture[str]
                                    ) -> None:
    assert main(["plan", "--profile", str(profile_file), "--devices", "3x(cuda:4GB)",
                 "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [d["id"] for d in plan["devices"]] == ["node-0/cuda:0", "node-1/cuda:0",
                                                   "node-2/cuda:0"]
    assert {i["device"].split("/")[0] for i in plan["instances"]} == {
        "node-0", "node-1", "node-2"}  # 3 GiB each: one instance per 4 GiB GPU


def test_plan_from_a_node_list(profile_file: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    nodes = tmp_path / "nodes.json"
    nodes.write_text(json.dumps([{"name": "gpu-a", "devices": "2xcuda:4GB"},
                                 {"name": "gpu-b", "devices": "cuda:4GB"}]))
    assert main(["plan", "--profile", str(profile_file), "--devices", str(nodes),
                 "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert {d["id"] for d in plan["devices"]} == {"gpu-a/cuda:0", "gpu-a/cuda:1",
                                                  "gpu-b/cuda:0"}


def test_bad_declarations_name_the_problem(profile_file: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--profile", str(profile_file), "--devices", "2x(cuda:4GB"]) == 2
    assert "cluster declaration" in capsys.readouterr().err
    assert main(["plan", "--profile", str(profile_file), "--devices", "missing.json"]) == 2
    assert "missing.json" in capsys.readouterr().err
