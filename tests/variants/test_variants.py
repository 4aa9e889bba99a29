"""Execution variants: each builds, matches the reference, and wrong ones are rejected."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from enserve.errors import SpecError
from enserve.members import Member, load_member
from enserve.spec import load_spec, spec_from_dict
from enserve.variants import (
    VARIANTS,
    available_variants,
    check_variant,
    default_variant,
    load_variant,
    member_fingerprint,
    random_request,
)

EXACT = ["eager", "channels_last", "torchscript", "onnx", "export"]


@pytest.mark.parametrize("variant", EXACT)
def test_exact_variant_is_admitted_and_matches_reference(
    tiny_spec_path: Path, tmp_path: Path, variant: str
) -> None:
    spec = load_spec(tiny_spec_path)
    check = check_variant(spec, "tiny", variant, cache_dir=tmp_path / "cache")
    assert check.admitted, check.reason
    assert check.rel_error is not None and check.rel_error <= 1e-4

    member = load_variant(spec, "tiny", variant, threads=1, cache_dir=tmp_path / "cache")
    assert member.variant == variant
    request = random_request(spec, spec.member("tiny"), batch=5, seed=42)
    assert np.abs(request).max() > 0
    expected = load_member(spec, "tiny")(request)
    got = member(request)
    assert got.shape == expected.shape == (5, 5)
    assert np.max(np.abs(got - expected)) <= 1e-4 * np.max(np.abs(expected))


@pytest.mark.slow
def test_compile_variant_is_admitted(tiny_spec_path: Path, tmp_path: Path) -> None:
    spec = load_spec(tiny_spec_path)
    check = check_variant(spec, "other", "compile", cache_dir=tmp_path)
    assert check.admitted, check.reason


def test_bf16_needs_opt_in_and_reports_accuracy(tiny_spec_path: Path, tmp_path: Path) -> None:
    spec = load_spec(tiny_spec_path)
    refused = check_variant(spec, "tiny", "bf16", cache_dir=tmp_path)
    assert not refused.admitted and refused.reduced_precision
    assert "opt-in" in refused.reason
    accepted = check_variant(spec, "tiny", "bf16", cache_dir=tmp_path, allow_reduced_precision=True)
    assert accepted.admitted
    assert accepted.max_abs_prob_diff is not None and 0 <= accepted.max_abs_prob_diff <= 1
    assert accepted.top1_agreement is not None and 0 <= accepted.top1_agreement <= 1
    assert accepted.rel_error is not None and accepted.rel_error > 0


class Perturbed(Member):
    """Wraps a member and adds a small error to its logits."""

    def __init__(self, inner: Member, scale: float) -> None:
        super().__init__(inner.name, inner.preprocessor)
        self.inner, self.scale = inner, scale

    def run(self, batch: np.ndarray) -> np.ndarray:
        out = self.inner.run(batch)
        return out + self.scale * np.abs(out).max()

    def param_bytes(self) -> int:
        return self.inner.param_bytes()


def test_wrong_variant_is_rejected(tiny_spec_path: Path) -> None:
    spec = load_spec(tiny_spec_path)
    reference = load_member(spec, "tiny")
    wrong = Perturbed(load_member(spec, "tiny"), scale=1e-3)
    check = check_variant(spec, "tiny", "eager", reference=reference, candidate=wrong)
    assert not check.admitted
    assert check.rel_error is not None and check.rel_error > 1e-4
    assert "exceeds" in check.reason
    barely = Perturbed(load_member(spec, "tiny"), scale=1e-6)
    assert check_variant(spec, "tiny", "eager", reference=reference, candidate=barely).admitted


def test_variant_that_fails_is_rejected_not_raised(
    tiny_spec_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import enserve.variants.check as check_module

    def broken(*args: object, **kwargs: object) -> Member:
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(check_module, "load_variant", broken)
    check = check_variant(load_spec(tiny_spec_path), "tiny", "onnx")
    assert not check.admitted and "exporter exploded" in check.reason


def _no_export(*args: object, **kwargs: object) -> None:
    raise AssertionError("exported again instead of reading the cache")


def test_onnx_export_is_cached_and_keyed_by_weights(
    tiny_spec_path: Path, tmp_path: Path, change_weights: Callable[[int], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = tmp_path / "cache"
    spec = load_spec(tiny_spec_path)
    load_variant(spec, "tiny", "onnx", cache_dir=cache)
    files = sorted((cache / "artifacts").glob("tiny-onnx-*.onnx"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    with monkeypatch.context() as patched:  # a cache hit exports nothing
        patched.setattr(torch.onnx, "export", _no_export)
        load_variant(spec, "tiny", "onnx", cache_dir=cache)
    assert files[0].stat().st_mtime_ns == mtime

    before = member_fingerprint(spec, "tiny")
    change_weights(99)
    assert member_fingerprint(spec, "tiny") != before
    member = load_variant(spec, "tiny", "onnx", cache_dir=cache)
    assert len(list((cache / "artifacts").glob("tiny-onnx-*.onnx"))) == 2
    request = random_request(spec, spec.member("tiny"), batch=2, seed=5)
    np.testing.assert_allclose(member(request), load_member(spec, "tiny")(request),
                               rtol=1e-4, atol=1e-4 * np.abs(member(request)).max())


def test_names_and_defaults(tiny_spec_path: Path) -> None:
    spec = load_spec(tiny_spec_path)
    member = spec.member("tiny")
    assert default_variant(member) == "eager"
    assert available_variants(member) == EXACT
    assert set(available_variants(member, include_opt_in=True)) == set(VARIANTS)
    with pytest.raises(SpecError, match="unknown variant 'fast'"):
        load_variant(spec, "tiny", "fast")


def test_onnx_source_runs_only_as_onnx(tiny_spec_path: Path, tmp_path: Path) -> None:
    spec = load_spec(tiny_spec_path)
    onnx_file = tiny_spec_path.parent / "tiny.onnx"
    member = load_variant(spec, "tiny", "onnx", cache_dir=tmp_path)
    onnx_file.write_bytes(Path(member._model).read_bytes())  # type: ignore[attr-defined]
    onnx_spec = spec_from_dict(
        {"name": "o", "inputs": [{"name": "input", "shape": [-1, 3, 12, 12]}],
         "members": [{"name": "o", "source": "onnx:tiny.onnx"}]},
        base_dir=tiny_spec_path.parent,
    )
    assert default_variant(onnx_spec.member("o")) == "onnx"
    assert available_variants(onnx_spec.member("o")) == ["onnx"]
    assert check_variant(onnx_spec, "o", "onnx").admitted
    with pytest.raises(SpecError, match="available: onnx"):
        load_variant(onnx_spec, "o", "eager")


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_cuda_eager_matches_cpu(tiny_spec_path: Path) -> None:
    spec = load_spec(tiny_spec_path)
    member = load_variant(spec, "tiny", "eager", device="cuda:0")
    request = random_request(spec, spec.member("tiny"), batch=3, seed=1)
    expected = load_member(spec, "tiny")(request)
    assert np.max(np.abs(member(request) - expected)) <= 1e-3 * np.max(np.abs(expected))
