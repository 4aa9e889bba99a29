"""Calibration on a tiny ensemble: thresholds, order, accuracy bound, bookkeeping, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from enserve.cli import main
from enserve.errors import EnserveError
from enserve.formats.profile import profile_from_dict
from enserve.policies.calibrate import calibrate, costs_from_profile
from enserve.policies.cascade import run_cascade
from enserve.policies.policy_file import load_policy
from tests.helpers.policies import Recorder, random_inputs

COSTS = {"a": 1.0, "b": 2.0, "c": 40.0, "d": 60.0}


def _labelled(executor, rows=400, seed=3, noise=0.1):
    """Inputs, and labels: the full ensemble's answer with a share of labels changed."""
    x = random_inputs(rows, seed)
    logits = executor.member_logits({"x": x})
    labels = executor.combine(logits).probabilities.argmax(-1)
    rng = np.random.default_rng(seed)
    flip = rng.random(rows) < noise
    labels[flip] = (labels[flip] + 1) % 5
    return x, logits, labels


def _run_accuracy(spec, executor, cascade, x, labels):
    out = run_cascade(spec, cascade, {"x": x}, Recorder(executor))
    return float((out.result.probabilities.argmax(-1) == labels).mean()), out


def test_zero_drop_keeps_full_accuracy_and_matches_the_run(quad, executor) -> None:
    x, logits, labels = _labelled(executor)
    cal = calibrate(quad, logits, labels, COSTS, max_accuracy_drop=0.0)
    assert cal.accuracy >= cal.full_accuracy
    accuracy, out = _run_accuracy(quad, executor, cal.cascade, x, labels)
    assert accuracy == pytest.approx(cal.accuracy)
    stages = len(cal.cascade.stages)
    assert np.allclose(np.array(out.exits(stages)) / len(x), cal.exit_rates)
    for member, rows in out.member_rows.items():
        assert rows / len(x) == pytest.approx(cal.reach[member])


def test_larger_drop_is_cheaper_and_cheap_members_go_first(quad, executor) -> None:
    x, logits, labels = _labelled(executor)
    strict = calibrate(quad, logits, labels, COSTS, max_accuracy_drop=0.0)
    loose = calibrate(quad, logits, labels, COSTS, max_accuracy_drop=0.05)
    assert loose.cost_s <= strict.cost_s <= loose.full_cost_s
    assert loose.accuracy >= loose.full_accuracy - 0.05 - 1e-12
    assert loose.cost_s < loose.full_cost_s  # something exits early
    assert loose.cascade.stages[0].members[0] in ("a", "b")
    assert loose.speedup > 1
    accuracy, _ = _run_accuracy(quad, executor, loose.cascade, x, labels)
    assert accuracy == pytest.approx(loose.accuracy)


def test_exit_rates_and_reach_are_consistent(quad, executor) -> None:
    _, logits, labels = _labelled(executor)
    cal = calibrate(quad, logits, labels, COSTS, max_accuracy_drop=0.03)
    assert sum(cal.exit_rates) == pytest.approx(1.0)
    first = cal.cascade.stages[0].members
    assert all(cal.reach[m] == 1.0 for m in first)
    expected = sum(cal.reach[m] * COSTS[m] for m in COSTS)
    assert cal.cost_s == pytest.approx(expected)


def test_calibrate_refuses_bad_inputs(quad, executor) -> None:
    _, logits, labels = _labelled(executor, rows=20)
    with pytest.raises(EnserveError, match="no cost"):
        calibrate(quad, logits, labels, {"a": 1.0})
    with pytest.raises(EnserveError, match="row count"):
        calibrate(quad, logits, labels[:5], COSTS)
    with pytest.raises(EnserveError, match="accuracy drop"):
        calibrate(quad, logits, labels, COSTS, max_accuracy_drop=1.5)


def test_costs_from_profile() -> None:
    profile = profile_from_dict({
        "devices": [{"id": "cpu", "kind": "cpu", "memory_bytes": 10**9, "compute_units": 2}],
        "members": [{"name": "a"}, {"name": "b"}],
        "entries": [
            {"member": "a", "device": "cpu", "batch_size": 8, "share": 1, "latency_s": 0.08,
             "memory_bytes": 1},
            {"member": "a", "device": "cpu", "batch_size": 16, "share": 2, "latency_s": 0.08,
             "memory_bytes": 1},
            {"member": "b", "device": "cpu", "batch_size": 1, "share": 1, "latency_s": 0.5,
             "memory_bytes": 1}]})
    assert costs_from_profile(profile, ["a", "b"]) == pytest.approx({"a": 0.01, "b": 0.5})
    with pytest.raises(EnserveError, match="member 'c'"):
        costs_from_profile(profile, ["c"])


def test_cli_writes_a_policy_the_server_can_load(quad, executor, tmp_path: Path, capsys) -> None:
    x, _, labels = _labelled(executor, rows=200)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", labels)
    code = main(["calibrate", str(quad.base_dir), "--data", str(tmp_path / "x.npy"),
                 "--labels", str(tmp_path / "y.npy"), "--max-accuracy-drop", "0.02", "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    policy = load_policy(quad.base_dir / "policy.json", quad)
    assert policy.default == "cascade" and policy.cascade is not None
    assert printed["calibration"]["cost_source"].startswith("measured")
    assert set(policy.reach) == {"a", "b", "c", "d"}


def test_cli_names_the_bad_file(quad, tmp_path: Path, capsys) -> None:
    np.save(tmp_path / "x.npy", random_inputs(4))
    np.save(tmp_path / "y.npy", np.zeros(3, dtype=np.int64))
    code = main(["calibrate", str(quad.base_dir), "--data", str(tmp_path / "x.npy"),
                 "--labels", str(tmp_path / "y.npy")])
    assert code == 2
    assert "has 4 rows but --labels" in capsys.readouterr().err
    code = main(["calibrate", str(quad.base_dir), "--data", str(tmp_path / "missing.npy"),
                 "--labels", str(tmp_path / "y.npy")])
    assert code == 2
    assert "missing.npy: file not found" in capsys.readouterr().err
