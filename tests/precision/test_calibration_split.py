"""The calibration set's hold-out: int8 calibrates on one part, admission measures on the
other, and the quantized model's cache key follows the part it was calibrated on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from enserve.errors import ModelLoadError, SpecError
from enserve.precision.calibration import (
    calibration_split,
    held_out,
    load_calibration,
    quantization_rows,
    split_rows,
)
from enserve.spec import load_spec
from enserve.variants.quantize import prepared_calibration


def write_spec(folder: Path, accuracy: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "models.py").write_text("from torch import nn\n\n\ndef net():\n"
                                      "    return nn.Linear(6, 3)\n")
    (folder / "ensemble.yaml").write_text(yaml.safe_dump({
        "name": "split",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 6]}],
        "members": [{"name": "a", "source": "python:models.py:net"}],
        "accuracy": accuracy,
    }))
    return folder / "ensemble.yaml"


@pytest.mark.parametrize(("total", "wanted", "expected_q"),
                         [(512, 64, 64), (40, 64, 20), (2, 64, 1), (7, 3, 3), (100, 1, 1)])
def test_split_is_disjoint_covers_every_row_and_is_deterministic(
        total: int, wanted: int, expected_q: int) -> None:
    split = split_rows(total, wanted)
    assert len(split.quantization) == expected_q
    assert not set(split.quantization.tolist()) & set(split.held_out.tolist())
    assert sorted([*split.quantization.tolist(), *split.held_out.tolist()]) == list(range(total))
    assert len(split.held_out) >= total - total // 2
    again = split_rows(total, wanted)
    assert np.array_equal(again.quantization, split.quantization) and again.tag == split.tag


def test_quantization_rows_are_spread_over_a_sorted_set() -> None:
    split = split_rows(100, 10)
    assert split.quantization.tolist() == list(range(0, 100, 10))


def test_one_row_cannot_be_split() -> None:
    with pytest.raises(SpecError, match="at least 2"):
        split_rows(1, 64)


def test_admission_rows_are_disjoint_from_the_quantizers_rows(tmp_path: Path) -> None:
    rows = np.random.default_rng(3).standard_normal((50, 6)).astype(np.float32)
    labels = np.arange(50) % 3
    np.save(tmp_path / "x.npy", rows)
    np.save(tmp_path / "y.npy", labels)
    spec = load_spec(write_spec(tmp_path, {"calibration": "x.npy", "labels": "y.npy",
                                           "quantization_samples": 16}))
    calibration = load_calibration(spec)
    admission = held_out(spec, calibration)
    # what the quantizer is given (after the member's preprocessing: none here)
    quantizer, digest = prepared_calibration(spec, spec.member("a"))
    assert len(quantizer) == 16 and admission.rows == 34
    seen = {r.tobytes() for r in quantizer}
    assert not seen & {r.tobytes() for r in admission.inputs["x"]}
    assert seen | {r.tobytes() for r in admission.inputs["x"]} == {r.tobytes() for r in rows}
    assert np.array_equal(quantization_rows(spec, spec.member("a"), calibration), quantizer)
    # the labels follow their rows
    split = calibration_split(spec, calibration)
    assert np.array_equal(admission.labels, labels[split.held_out])
    # the digests: held-out logits and quantized models are keyed by their own rows
    assert len({digest, admission.digest, calibration.digest}) == 3


def test_a_changed_quantization_subset_changes_the_quantized_models_key(
        tmp_path: Path) -> None:
    keys = {}
    for samples in (8, 16):
        spec = load_spec(write_spec(tmp_path / str(samples),
                                    {"synthetic": 40, "quantization_samples": samples}))
        keys[samples] = prepared_calibration(spec, spec.member("a"))[1]
    assert keys[8] != keys[16]
    same = load_spec(write_spec(tmp_path / "again", {"synthetic": 40,
                                                     "quantization_samples": 8}))
    assert prepared_calibration(same, same.member("a"))[1] == keys[8]


def test_a_set_too_small_to_split_is_refused_for_int8(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, {"synthetic": 1}))
    with pytest.raises(ModelLoadError, match="at least 2"):
        prepared_calibration(spec, spec.member("a"))


def test_cached_int8_checks_and_entries_follow_the_quantization_rows(tmp_path: Path) -> None:
    from enserve.profiler.cache import ResultCache
    from enserve.profiler.run import RunStats, _RunPlan
    from enserve.profiler.settings import select_devices

    cpu = select_devices(["cpu"])[0]
    keys = {}
    for samples in (8, 16):
        path = write_spec(tmp_path / str(samples), {"synthetic": 40,
                                                    "quantization_samples": samples})
        runner = _RunPlan(load_spec(path), str(path), ResultCache(tmp_path / "cache"), [1], 1,
                          0, 1.0, RunStats(), [])
        keys[samples] = {v: (runner._check_key("a", v), runner._entry_key("a", v, cpu, 1.0, 1))
                         for v in ("eager", "int8")}
    assert keys[8]["eager"] == keys[16]["eager"]
    assert keys[8]["int8"][0] != keys[16]["int8"][0]
    assert keys[8]["int8"][1] != keys[16]["int8"][1]
