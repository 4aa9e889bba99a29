"""`--json` prints JSON alone on stdout: the output pipes into a JSON parser."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from enserve.formats.profile import save_profile
from tests.helpers.profiles import cpu, entry, profile


def _enserve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "enserve.cli", *args], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("algorithm", ["greedy", "shares", "exact", "batch-only", "sequential"])
def test_plan_json_pipes_into_a_json_parser(tmp_path: Path, algorithm: str) -> None:
    path = tmp_path / "profile.json"
    save_profile(profile([cpu(4)], [
        entry("a", "cpu", 4, 1, 0.010, 1), entry("a", "cpu", 4, 2, 0.006, 1),
        entry("b", "cpu", 4, 1, 0.020, 1), entry("b", "cpu", 4, 2, 0.012, 1),
    ]), path)
    done = _enserve("plan", "--profile", str(path), "--algorithm", algorithm, "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)  # nothing but the plan: no solver banner
    assert plan["algorithm"] == algorithm
    assert "HiGHS" not in done.stdout


def test_predict_json_pipes_into_a_json_parser() -> None:
    done = _enserve("predict", "examples/digits", "--input", "examples/digits/samples.npy",
                    "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["model_name"] == "digits"
