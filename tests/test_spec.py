"""Spec parsing: the documented forms are accepted, each kind of error names file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from enserve.errors import EnserveError, SpecError
from enserve.reference import ReferenceExecutor
from enserve.spec import EnsembleSpec, MemberSpec, TensorSpec, dump_spec, load_spec, spec_from_dict

MINIMAL = """\
name: digits
inputs:
  - {name: input, datatype: FP32, shape: [-1, 1, 8, 8]}
members:
  - {name: cnn, source: "torchscript:cnn.pt"}
  - {name: mlp, source: "onnx:mlp.onnx", weight: 2.0}
combiner: weighted_mean_prob   # mean_prob (default) | weighted_mean_prob | ...
"""


def write(folder: Path, text: str, name: str = "ensemble.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_minimal_form_from_the_issue_loads_and_runs(model_dir: Path) -> None:
    spec = load_spec(write(model_dir, MINIMAL))
    assert spec.name == "digits" and spec.version == "1"
    assert spec.member_weights() == [1.0, 2.0]
    assert spec.outputs[0].name == "probabilities"
    executor = ReferenceExecutor(spec)
    import numpy as np

    x = np.random.default_rng(1).standard_normal((2, 1, 8, 8)).astype(np.float32)
    probs = executor.infer(x).probabilities
    assert probs.shape == (2, 5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_spec_folder_resolves_to_its_ensemble_yaml(model_dir: Path) -> None:
    write(model_dir, MINIMAL)
    assert load_spec(model_dir).name == "digits"


def test_spec_is_constructible_in_python_and_round_trips(model_dir: Path) -> None:
    spec = EnsembleSpec(
        name="py",
        inputs=[TensorSpec(name="input", shape=[-1, 1, 8, 8])],
        members=[MemberSpec(name="a", source="onnx:mlp.onnx")],
        base_dir=model_dir,
    )
    again = spec_from_dict(__import__("yaml").safe_load(dump_spec(spec)), base_dir=model_dir)
    assert again.model_dump() == spec.model_dump()


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        ("members:\n  - {name: a, source: 'tensorflow:x'}", "members.0.source", "unknown source kind 'tensorflow'"),
        ("members:\n  - {name: a, source: 'onnx'}", "members.0.source", "not KIND:TARGET"),
        ("members:\n  - {name: a, source: 'onnx:mlp.onnx', weight: -1}", "members.0.weight", "weight must be > 0"),
        ("members:\n  - {name: a, source: 'safetensors:cnn.safetensors'}", "members.0", "needs 'architecture'"),
        ("members:\n  - {name: a, source: 'onnx:mlp.onnx'}\nweights: [1, 2]", "(top level)", "2 values given for 1 members"),
        ("members:\n  - {name: a, source: 'onnx:mlp.onnx'}\n  - {name: a, source: 'onnx:mlp.onnx'}", "(top level)", "repeated: a"),
        ("members:\n  - {name: a, source: 'onnx:mlp.onnx'}\ncombiner: median", "combiner", "'median'"),
        ("members:\n  - {name: a, source: 'onnx:mlp.onnx', input: other}", "(top level)", "'other' is not one of the inputs"),
        ("members: []", "members", "at least 1"),
    ],
)
def test_invalid_specs_name_file_and_field(tmp_path: Path, text: str, field: str, expected: str) -> None:
    header = "name: bad\ninputs:\n  - {name: input, datatype: FP32, shape: [-1, 1, 8, 8]}\n"
    path = write(tmp_path, header + text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert str(path) in message
    assert f"field '{field}'" in message
    assert expected in message


def test_bad_datatype_and_shape(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\ninputs:\n  - {name: i, datatype: FLOAT, shape: [-1, 0]}\nmembers:\n  - {name: a, source: 'onnx:m.onnx'}\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert "inputs.0.datatype" in str(info.value) and "FLOAT" in str(info.value)
    assert "inputs.0.shape" in str(info.value)


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(write(tmp_path, "name: [unclosed"))
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="expected a mapping"):
        load_spec(write(tmp_path, "- just a list"))


def test_missing_model_file_is_named_at_load(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\ninputs:\n  - {name: i, shape: [-1, 1, 8, 8]}\nmembers:\n  - {name: a, source: 'onnx:absent.onnx'}\n")
    with pytest.raises(SpecError) as info:
        ReferenceExecutor(load_spec(path))
    assert "members.0.source" in str(info.value) and "'absent.onnx' not found" in str(info.value)


def test_unknown_torchvision_architecture(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\ninputs:\n  - {name: i, shape: [-1, 3, 32, 32]}\nmembers:\n  - {name: a, source: 'torchvision:resnet19'}\n")
    with pytest.raises(SpecError, match=r"members.0.source \(a\): unknown torchvision architecture 'resnet19'"):
        ReferenceExecutor(load_spec(path))


def test_members_with_disagreeing_output_shapes(model_dir: Path) -> None:
    text = (
        "name: x\ninputs:\n  - {name: i, shape: [-1, 1, 8, 8]}\nmembers:\n"
        "  - {name: five, source: 'onnx:mlp.onnx'}\n"
        "  - {name: ten, source: 'python:factory.py:tiny10'}\n"
    )
    with pytest.raises(SpecError) as info:
        ReferenceExecutor(load_spec(write(model_dir, text, "mismatch.yaml")))
    assert "output shapes disagree" in str(info.value)
    assert "five: [-1, 5]" in str(info.value) and "ten: [-1, 10]" in str(info.value)


def test_python_factory_errors(model_dir: Path) -> None:
    text = "name: x\ninputs:\n  - {name: i, shape: [-1, 1, 8, 8]}\nmembers:\n  - {name: a, source: 'python:factory.py:not_a_module'}\n"
    with pytest.raises(EnserveError, match="returned int, not nn.Module"):
        ReferenceExecutor(load_spec(write(model_dir, text, "badfactory.yaml")))
    text = text.replace("not_a_module", "missing")
    with pytest.raises(EnserveError, match="has no callable 'missing'"):
        ReferenceExecutor(load_spec(write(model_dir, text, "badfactory.yaml")))


def test_member_that_fails_on_the_declared_input_is_named(model_dir: Path) -> None:
    text = (
        "name: x\ninputs:\n  - {name: i, shape: [-1, 1, 8, 8]}\nmembers:\n"
        "  - {name: rgb, source: 'torchvision:resnet18', num_classes: 5}\n"
    )
    with pytest.raises(SpecError) as info:
        ReferenceExecutor(load_spec(write(model_dir, text, "rgb.yaml")))
    assert "member 'rgb' fails on input 'i' [1, 1, 8, 8]" in str(info.value)
    assert "3 channels" in str(info.value)
