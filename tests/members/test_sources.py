"""Every source kind loads behind the Member interface and matches the original module."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from enserve.errors import ModelLoadError, SpecError
from enserve.members import load_member
from enserve.spec import spec_from_dict
from tests.helpers.models import random_batch, tiny_module


def spec_with(model_dir: Path, channels: int = 1, **member: object) -> object:
    return spec_from_dict(
        {
            "name": "t",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, channels, 8, 8]}],
            "members": [{"name": "m", **member}],
        },
        base_dir=model_dir,
        where="t.yaml",
    )


def expected(seed: int, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out: np.ndarray = tiny_module(seed)(torch.from_numpy(x)).numpy()
    return out


@pytest.mark.parametrize(
    ("member", "seed", "framework"),
    [
        ({"source": "torchscript:cnn.pt"}, 1, "torch"),
        ({"source": "export:cnn.pt2"}, 2, "torch"),
        ({"source": "onnx:mlp.onnx"}, 3, "onnxruntime"),
        ({"source": "safetensors:cnn.safetensors", "architecture": "python:factory.py:tiny"}, 4, "torch"),
        ({"source": "python:factory.py:tiny", "weights": "cnn_state.pt"}, 1, "torch"),
    ],
)
def test_source_kinds_match_original(model_dir: Path, member: dict[str, str], seed: int, framework: str) -> None:
    loaded = load_member(spec_with(model_dir, **member), "m")  # type: ignore[arg-type]
    x = random_batch(4, seed=seed)
    out = loaded(x)
    assert loaded.framework == framework
    assert out.dtype == np.float32 and out.shape == (4, 5)
    np.testing.assert_allclose(out, expected(seed, x), rtol=1e-4, atol=1e-5)
    assert loaded.param_bytes() > 4 * 8 * 8 * 5
    sig = loaded.signature((1, 1, 8, 8))
    assert sig.input_shape == (-1, 1, 8, 8) and sig.output_shape == (-1, 5)


def test_torchvision_source_is_seeded(model_dir: Path) -> None:
    spec = spec_with(model_dir, channels=3, source="torchvision:mobilenet_v3_small", num_classes=7,
                     seed=3, preprocess={"resize": [32, 32], "mean": [0.5, 0.4, 0.3], "std": [0.25] * 3})
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    a = load_member(spec, "m")(x)  # type: ignore[arg-type]
    b = load_member(spec, "m")(x)  # type: ignore[arg-type]
    assert a.shape == (2, 7)
    np.testing.assert_array_equal(a, b)


def test_python_module_by_dotted_name(model_dir: Path) -> None:
    spec = spec_with(model_dir, source="python:torch.nn:Identity")
    with pytest.raises(SpecError):  # Identity returns the input: not [batch, classes] logits
        from enserve.reference import ReferenceExecutor

        ReferenceExecutor(spec)  # type: ignore[arg-type]


@pytest.mark.parametrize("source", ["onnx:../mlp.onnx", "torchscript:/etc/passwd", "onnx:sub/../../x.onnx"])
def test_paths_may_not_escape_the_spec_folder(model_dir: Path, source: str) -> None:
    sub = model_dir / "inner"
    sub.mkdir(exist_ok=True)
    with pytest.raises(SpecError, match="escapes the spec's folder"):
        load_member(spec_with(sub, source=source), "m")  # type: ignore[arg-type]


class Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pickle code ran",))


def test_pickle_files_are_refused(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (model_dir / "evil.pt").write_bytes(pickle.dumps({"weight": Boom()}))
    torch.save({"w": torch.zeros(1), "obj": Boom()}, model_dir / "evil2.pt")
    for name in ("evil.pt", "evil2.pt"):
        spec = spec_with(model_dir, source="python:factory.py:tiny", weights=name)
        with pytest.raises(ModelLoadError, match="refused"):
            load_member(spec, "m")  # type: ignore[arg-type]
    assert "pickle code ran" not in capsys.readouterr().out


def test_pickle_disguised_as_torchscript_is_refused(model_dir: Path) -> None:
    (model_dir / "fake.pt").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ModelLoadError, match="not a TorchScript archive"):
        load_member(spec_with(model_dir, source="torchscript:fake.pt"), "m")  # type: ignore[arg-type]


def test_weights_that_do_not_match_the_architecture(model_dir: Path) -> None:
    spec = spec_with(model_dir, source="safetensors:cnn.safetensors", architecture="python:factory.py:tiny10")
    with pytest.raises(ModelLoadError, match="don't match the architecture"):
        load_member(spec, "m")  # type: ignore[arg-type]


def test_corrupt_onnx_is_a_clear_error(model_dir: Path) -> None:
    (model_dir / "broken.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(ModelLoadError, match="cannot load ONNX model"):
        load_member(spec_with(model_dir, source="onnx:broken.onnx"), "m")  # type: ignore[arg-type]
