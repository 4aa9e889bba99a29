from __future__ import annotations

import json
from pathlib import Path

import pytest

from enserve.cli import main
from enserve.formats.profile import save_profile
from enserve.plan import load_plan
from tests.helpers.profiles import entry, gpu, profile


@pytest.fixture
def profile_file(tmp_path: Path) -> Path:
    prof = profile([gpu(0, 4), gpu(1, 4)],
                   [entry(m, d, b, s, lat * b ** 0.5, 0.5 + 0.1 * b)
                    for m, lat in (("alpha", 0.01), ("beta", 0.02))
                    for d in ("cuda:0", "cuda:1") for b in (1, 8) for s in (50, 100)])
    path = tmp_path / "profile.json"
    save_profile(prof, path)
    return path


def test_json_output_is_a_plan(profile_file: Path, capsys: pytest.CaptureFixture[str],
                               tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    assert main(["plan", "--profile", str(profile_file), "--json", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["algorithm"] == "greedy" and printed["objective"] == "throughput"
    assert printed["predicted"]["throughput"] > 0
    assert load_plan(out).predicted.throughput == pytest.approx(printed["predicted"]["throughput"])


def test_table_and_heatmap(profile_file: Path, capsys: pytest.CaptureFixture[str],
                           tmp_path: Path) -> None:
    png = tmp_path / "matrix.png"
    code = main(["plan", "--profile", str(profile_file), "--algorithm", "shares",
                 "--objective", "latency", "--heatmap", str(png)])
    assert code == 0
    text = capsys.readouterr().out
    assert "alpha" in text and "beta" in text and "cuda:1" in text
    assert "predicted throughput" in text and "completion time" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_declared_devices_and_constraints(profile_file: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["plan", "--profile", str(profile_file), "--devices", "3xcuda:4GB",
                 "--max-latency", "0.05", "--memory-headroom", "0.1", "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert [d["id"] for d in printed["devices"]] == ["cuda:0", "cuda:1", "cuda:2"]
    assert printed["predicted"]["latency_s"] <= 0.05


@pytest.mark.parametrize("args, message", [
    ([], "either a SPEC"),
    (["--devices", "tpu:1GB"], "--devices"),
    (["--max-latency", "0.000001"], "latency"),
])
def test_errors_exit_2_with_a_message(profile_file: Path, capsys: pytest.CaptureFixture[str],
                                      args: list[str], message: str) -> None:
    base = [] if not args else ["--profile", str(profile_file)]
    assert main(["plan", *base, *args]) == 2
    assert message in capsys.readouterr().err
