"""scripts/gpu_check.sh: a clean "no GPU here" without CUDA, and a CPU dry run of its code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_without_cuda_it_says_so_and_exits_cleanly() -> None:
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert "no GPU here" in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_dry_run_on_the_cpu_compares_precisions_with_the_reference(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu",
               "--parts", "precision", "--spec", str(ROOT / "examples" / "digits"),
               "--batch", "4", "--repeats", "2", "--out", str(tmp_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads((tmp_path / "gpu_check.json").read_text())["precision"]
    assert set(rows) == {"fp32", "bf16"}
    assert rows["fp32"]["max_abs_prob_diff"] < 1e-5  # same weights, same device as the oracle
    assert rows["bf16"]["top1_agreement"] >= 0.5
