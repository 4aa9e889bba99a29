"""The reference executor on the demo ensemble, request validation and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from enserve.cli import main
from enserve.demo.digits import DEFAULT_SPEC, digits_split, evaluate
from enserve.errors import InferenceError
from enserve.reference import ReferenceExecutor
from enserve.result import validate_inputs
from enserve.spec import load_spec

SAMPLES = DEFAULT_SPEC.parent / "samples.npy"


@pytest.fixture(scope="module")
def digits() -> ReferenceExecutor:
    return ReferenceExecutor(load_spec(DEFAULT_SPEC))


def test_demo_ensemble_beats_its_best_member() -> None:
    acc = evaluate(DEFAULT_SPEC)
    assert acc.samples == 540
    best_name, best = acc.best_member
    assert best > 0.95, acc.members
    assert acc.ensemble > best, f"ensemble {acc.ensemble} vs {best_name} {best}"


def test_reference_executor_combines_member_outputs(digits: ReferenceExecutor) -> None:
    x = digits_split().x_test[:5]
    result = digits.infer(x)
    assert result.probabilities.shape == (5, 10)
    np.testing.assert_allclose(result.probabilities.sum(1), 1.0, rtol=1e-5)
    assert set(result.member_logits) == {"cnn", "dwcnn", "mlp", "cnn5"}
    again = digits.combine(digits.member_logits({"input": x}))
    np.testing.assert_array_equal(again.probabilities, result.probabilities)
    outputs = result.outputs(digits.spec, ["probabilities", "top_k_indices", "logits_cnn", "agreement"])
    assert outputs["top_k_indices"].shape == (5, 3)
    assert outputs["agreement"].max() <= 4


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"other": np.zeros((1, 1, 8, 8), np.float32)}, "unknown input"),
        ({}, "missing input 'input'"),
        ({"input": np.zeros((1, 8, 8), np.float32)}, "has 3 axes, expected 4"),
        ({"input": np.zeros((1, 1, 8, 9), np.float32)}, "axis 3 is 9, expected 8"),
        ({"input": np.full((1, 1, 8, 8), np.nan, np.float32)}, "NaN"),
        ({"input": np.zeros((1, 1, 8, 8), np.complex64)}, "datatype complex64 given, FP32 expected"),
        ({"input": np.zeros((0, 1, 8, 8), np.float32)}, "empty batch"),
    ],
)
def test_validate_inputs_rejects_bad_requests(digits: ReferenceExecutor, inputs: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(InferenceError, match=message):
        validate_inputs(digits.spec, inputs)


def test_validate_inputs_casts_compatible_dtypes(digits: ReferenceExecutor) -> None:
    out = validate_inputs(digits.spec, {"input": np.zeros((2, 1, 8, 8), np.float64)})
    assert out["input"].dtype == np.float32
    with pytest.raises(InferenceError, match="exceeds the limit 1"):
        validate_inputs(digits.spec, {"input": np.zeros((2, 1, 8, 8), np.float32)}, max_batch=1)


def test_cli_predict_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(DEFAULT_SPEC), "--input", str(SAMPLES)]) == 0
    out = capsys.readouterr().out
    assert "members agreeing" in out and "/4" in out


def test_cli_predict_json_matches_reference(digits: ReferenceExecutor, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(DEFAULT_SPEC.parent), "--input", str(SAMPLES), "--json"]) == 0
    response = json.loads(capsys.readouterr().out)
    assert response["model_name"] == "digits"
    (out,) = response["outputs"]
    assert out["name"] == "probabilities" and out["datatype"] == "FP32" and out["shape"] == [8, 10]
    expected = digits.infer(np.load(SAMPLES)).probabilities
    np.testing.assert_allclose(np.array(out["data"]).reshape(8, 10), expected, rtol=1e-6)


def test_cli_predict_image(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(DEFAULT_SPEC), "--input", str(DEFAULT_SPEC.parent / "sample.png"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["outputs"][0]["shape"] == [1, 10]


def test_cli_errors_name_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(DEFAULT_SPEC), "--input", str(tmp_path / "none.npy")]) == 2
    assert "none.npy: input file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((2, 3), np.float32))
    assert main(["predict", str(DEFAULT_SPEC), "--input", str(bad)]) == 2
    assert "input 'input'" in capsys.readouterr().err
    pickled = tmp_path / "obj.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert main(["predict", str(DEFAULT_SPEC), "--input", str(pickled)]) == 2
    assert "pickles are refused" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "nospec.yaml"), "--input", str(bad)]) == 2
    assert "spec file not found" in capsys.readouterr().err


def test_cli_demo(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    assert "ensemble beats its best member" in capsys.readouterr().out


def test_demo_trains_from_scratch_and_still_beats_its_best_member(tmp_path: Path) -> None:
    import shutil

    from enserve.demo.digits import train

    folder = tmp_path / "digits"
    shutil.copytree(DEFAULT_SPEC.parent, folder)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    timings = train(folder / "ensemble.yaml")  # its time: benchmarks/planning_time.py --train
    assert set(timings) == {"cnn", "dwcnn", "mlp", "cnn5"}
    acc = evaluate(folder / "ensemble.yaml")
    assert acc.ensemble > acc.best_member[1]
