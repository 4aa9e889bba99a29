"""What an ONNX Runtime worker does at start-up: the model's digest is remembered per file
(no re-hash of its bytes), and the output shape is read from the model (no warm-up run)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from enserve.members import onnx_shared
from enserve.members.onnx_member import OnnxMember
from tests.helpers.onnx_models import write_linear_onnx


def test_the_digest_is_remembered_until_the_file_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    model = tmp_path / "m.onnx"
    write_linear_onnx(model, 12, 5, seed=1)
    first = onnx_shared.optimized_path(model, tmp_path / "cache")

    def no_hashing(path: Path) -> str:
        raise AssertionError(f"{path} hashed again")

    with monkeypatch.context() as patched:
        patched.setattr(onnx_shared, "_file_digest", no_hashing)
        assert onnx_shared.optimized_path(model, tmp_path / "cache") == first

    write_linear_onnx(model, 12, 5, seed=2)  # other bytes: another digest, another copy
    assert onnx_shared.optimized_path(model, tmp_path / "cache") != first


def test_the_output_shape_is_read_from_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ENSERVE_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "m.onnx"
    write_linear_onnx(model, 12, 5, seed=3)
    member = OnnxMember("m", model)
    out = member(np.random.default_rng(0).standard_normal((2, 3, 2, 2)).astype(np.float32))
    assert member.known_output_shape() == (-1, *out.shape[1:]) == (-1, 5)
