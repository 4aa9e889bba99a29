"""`simulate:profile.json#member`: profiled latency, held memory, deterministic logits."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from enserve.errors import ModelLoadError, SpecError
from enserve.members import load_member
from enserve.members.simulated import SimulatedMember
from enserve.reference import ReferenceExecutor
from enserve.spec import load_spec

MiB = 2**20

PROFILE = {
    "devices": [{"id": "cuda:0", "kind": "cuda", "memory_bytes": 2**34, "compute_units": 100},
                {"id": "cpu", "kind": "cpu", "memory_bytes": 2**34, "compute_units": 2}],
    "members": [{"name": "resnet50"}],
    "entries": [
        {"member": "resnet50", "device": "cuda:0", "batch_size": 1, "share": 100,
         "latency_s": 0.004, "memory_bytes": 8 * MiB},
        {"member": "resnet50", "device": "cuda:0", "batch_size": 8, "share": 100,
         "latency_s": 0.018, "memory_bytes": 12 * MiB},
        {"member": "resnet50", "device": "cuda:0", "batch_size": 8, "share": 50,
         "latency_s": 0.030, "memory_bytes": 12 * MiB},
        {"member": "resnet50", "device": "cpu", "batch_size": 8, "share": 2,
         "latency_s": 0.2, "memory_bytes": 12 * MiB},
    ],
}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "profile.json").write_text(json.dumps(PROFILE))
    (tmp_path / "ensemble.yaml").write_text(
        "name: sim\n"
        "inputs: [{name: x, datatype: FP32, shape: [-1, 3, 4, 4]}]\n"
        "members:\n"
        "  - {name: a, source: 'simulate:profile.json#resnet50', num_classes: 7}\n"
        "  - {name: resnet50, source: 'simulate:profile.json', num_classes: 7, seed: 3}\n"
        "combiner: mean_prob\n")
    return tmp_path


def test_latency_follows_the_profile(folder: Path) -> None:
    spec = load_spec(folder)
    member = load_member(spec, "a")
    assert isinstance(member, SimulatedMember)
    assert member.device_kind == "cuda" and member.share == 100
    assert member.latency_s(1) == pytest.approx(0.004)
    assert member.latency_s(4) == pytest.approx(0.004 + 0.014 * 3 / 7)
    assert member.latency_s(16) == pytest.approx(0.036)  # scaled beyond the largest batch
    member.configure("cuda", 50)
    assert member.latency_s(8) == pytest.approx(0.030)
    member.configure("cpu", 2)
    assert member.latency_s(8) == pytest.approx(0.2)
    assert member.param_bytes() == 12 * MiB


def test_runs_for_its_latency_and_answers_deterministically(folder: Path) -> None:
    spec = load_spec(folder)
    a, b = load_member(spec, "a"), load_member(spec, "resnet50")
    x = np.random.default_rng(0).standard_normal((8, 3, 4, 4)).astype(np.float32)
    t0 = time.perf_counter()
    out = a(x)
    assert time.perf_counter() - t0 >= 0.018
    assert out.shape == (8, 7) and out.dtype == np.float32
    np.testing.assert_array_equal(out, load_member(spec, "a")(x))
    assert not np.allclose(out, b(x))  # another name and seed: another projection
    assert np.abs(out - a(x[::-1].copy())[::-1]).max() < 1e-6  # row-wise
    result = ReferenceExecutor(spec).infer(x)
    assert result.probabilities.shape == (8, 7)


def test_memory_is_held_up_to_the_cap(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_spec(folder)
    monkeypatch.setenv("ENSERVE_SIMULATE_HOLD_MB", "10")
    member = load_member(spec, "a")
    assert member._held.nbytes == 10 * MiB
    monkeypatch.setenv("ENSERVE_SIMULATE_HOLD_MB", "100")
    assert load_member(spec, "a")._held.nbytes == 12 * MiB


def test_bad_sources_name_the_member(folder: Path) -> None:
    (folder / "bad.yaml").write_text(
        "name: sim\ninputs: [{name: x, datatype: FP32, shape: [-1, 2]}]\n"
        "members: [{name: a, source: 'simulate:profile.json#nobody'}]\n")
    with pytest.raises(ModelLoadError, match="nobody"):
        load_member(load_spec(folder / "bad.yaml"), "a")
    (folder / "bad2.yaml").write_text(
        "name: sim\ninputs: [{name: x, datatype: FP32, shape: [-1, 2]}]\n"
        "members: [{name: a, source: 'simulate:missing.json#a'}]\n")
    with pytest.raises((ModelLoadError, SpecError), match="missing.json"):
        load_member(load_spec(folder / "bad2.yaml"), "a")
