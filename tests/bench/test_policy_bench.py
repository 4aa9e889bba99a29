"""`enserve bench --policy cascade`: refuses what it cannot measure, naming it."""

from __future__ import annotations

import numpy as np

from enserve.cli import main
from tests.helpers.policies import make_spec, random_inputs


def test_policy_bench_needs_labelled_data(tmp_path, capsys) -> None:
    make_spec(tmp_path)
    assert main(["bench", str(tmp_path), "--policy", "cascade"]) == 2
    assert "needs --data and --labels" in capsys.readouterr().err
    np.save(tmp_path / "x.npy", random_inputs(4))
    np.save(tmp_path / "y.npy", np.zeros(3, dtype=np.int64))
    assert main(["bench", str(tmp_path), "--policy", "cascade", "--data",
                 str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy")]) == 2
    assert "--data has 4 rows" in capsys.readouterr().err
    np.save(tmp_path / "y.npy", np.zeros(4, dtype=np.int64))
    assert main(["bench", str(tmp_path), "--policy", "cascade", "--data",
                 str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy")]) == 2
    assert "no cascade" in capsys.readouterr().err
