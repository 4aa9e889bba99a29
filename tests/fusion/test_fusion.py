"""Fused paths must equal the reference executor on random inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from enserve.errors import ModelLoadError, SpecError
from enserve.fusion import FusionGroup, fusion_candidates, load_fused
from enserve.fusion.fold import fold_conv_bn, trace
from enserve.reference import ReferenceExecutor
from enserve.spec import load_spec
from tests.helpers.tiny_models import write_onnx_ensemble, write_torch_ensemble

RULES = ["mean_prob", "weighted_mean_prob", "mean_logits", "majority_vote", "max_prob", "geometric_mean"]
PROB_TOL = 2e-6
LOGIT_TOL = dict(rtol=1e-4, atol=1e-5)


def _batch(n: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 8, 8)).astype(np.float32)


def _assert_equal(fused_result, ref_result) -> None:  # type: ignore[no-untyped-def]
    np.testing.assert_allclose(fused_result.probabilities, ref_result.probabilities, atol=PROB_TOL, rtol=0)
    for name, logits in ref_result.member_logits.items():
        np.testing.assert_allclose(fused_result.member_logits[name], logits, **LOGIT_TOL)
    np.testing.assert_array_equal(fused_result.agreement, ref_result.agreement)


@pytest.fixture(scope="module")
def torch_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_torch_ensemble(tmp_path_factory.mktemp("torch")).parent


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_onnx_ensemble(tmp_path_factory.mktemp("onnx")).parent


def _with_rule(folder: Path, rule: str) -> Path:
    import yaml

    data = yaml.safe_load((folder / "ensemble.yaml").read_text())
    data["combiner"] = rule
    data["weights"] = [1.0 + i for i in range(len(data["members"]))]
    out = folder / f"ensemble_{rule}.yaml"
    out.write_text(yaml.safe_dump(data))
    return out


@pytest.mark.parametrize("rule", RULES)
def test_fx_whole_ensemble_equals_reference(torch_dir: Path, rule: str) -> None:
    spec = load_spec(_with_rule(torch_dir, rule))
    fused = load_fused(spec, [m.name for m in spec.members], "fx")
    assert fused.covers_ensemble
    x = _batch()
    _assert_equal(fused.infer(x), ReferenceExecutor(spec).infer(x))


@pytest.mark.parametrize("options", [{"channels_last": True}, {"frozen": True}, {"fold": False}])
def test_fx_variants_equal_reference(torch_dir: Path, options: dict[str, bool]) -> None:
    spec = load_spec(torch_dir / "ensemble.yaml")
    fused = load_fused(spec, [m.name for m in spec.members], "fx", **options)
    x = _batch(3, seed=4)
    _assert_equal(fused.infer(x), ReferenceExecutor(spec).infer(x))


def test_fx_partial_group_returns_member_logits(torch_dir: Path) -> None:
    spec = load_spec(torch_dir / "ensemble.yaml")
    fused = load_fused(spec, ["mlp", "cnn_c"], "fx")
    assert not fused.covers_ensemble
    x = _batch(2, seed=7)
    ref = ReferenceExecutor(spec).member_logits({"input": x})
    got = fused.member_logits(x)
    assert list(got) == ["mlp", "cnn_c"]
    for name in got:
        np.testing.assert_allclose(got[name], ref[name], **LOGIT_TOL)
    assert fused(x).shape == (2, 2, 10)
    assert fused.signature((1, 1, 8, 8)).output_shape == (-1, 10)
    with pytest.raises(Exception, match="not the whole ensemble"):
        fused.infer(x)


def test_folding_removes_batchnorm_and_keeps_outputs() -> None:
    from tests.helpers.tiny_models import randomized, small_cnn

    model = randomized(small_cnn(), 3)
    gm = trace(model)
    x = torch.randn(4, 1, 8, 8)
    expected = model(x)
    assert fold_conv_bn(gm) == 2
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in gm.modules())
    torch.testing.assert_close(gm(x), expected, rtol=1e-5, atol=1e-5)


def test_untraceable_member_stays_opaque(tmp_path: Path) -> None:
    from enserve.fusion.fx import build_fx_group
    from enserve.fusion.graph_ops import TorchPreprocess

    class Branchy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent: fx can't trace this
                return self.lin(x.flatten(1))
            return -self.lin(x.flatten(1))

    branchy = Branchy().eval()
    gm, folds = build_fx_group({"b": branchy}, {"b": TorchPreprocess(None)}, {"b": 0})
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(gm(x)[0], branchy(x))
    assert folds == {"b": 0}


def test_horizontal_equals_reference(torch_dir: Path) -> None:
    spec = load_spec(torch_dir / "ensemble.yaml")
    fused = load_fused(spec, ["cnn_a", "cnn_b"], "horizontal")
    x = _batch(4, seed=2)
    ref = ReferenceExecutor(spec).member_logits({"input": x})
    got = fused.member_logits(x)
    for name in ("cnn_a", "cnn_b"):
        np.testing.assert_allclose(got[name], ref[name], **LOGIT_TOL)


@pytest.mark.parametrize("rule", ["weighted_mean_prob", "majority_vote"])
def test_horizontal_whole_ensemble_combines_in_graph(tmp_path: Path, rule: str) -> None:
    path = write_torch_ensemble(tmp_path, combiner=rule, weights=[1.0, 3.0], same_arch_only=True)
    spec = load_spec(path)
    assert fusion_candidates(spec) == [
        FusionGroup("fx", ("cnn_a", "cnn_b"), True), FusionGroup("horizontal", ("cnn_a", "cnn_b"), True)
    ]
    fused = load_fused(spec, ["cnn_a", "cnn_b"], "horizontal")
    x = _batch(6, seed=3)
    _assert_equal(fused.infer(x), ReferenceExecutor(spec).infer(x))


def test_horizontal_refuses_different_architectures(torch_dir: Path) -> None:
    spec = load_spec(torch_dir / "ensemble.yaml")
    with pytest.raises(SpecError, match="one input and one preprocessing"):
        load_fused(spec, ["cnn_a", "cnn_c"], "horizontal")
    with pytest.raises((ModelLoadError, SpecError)):
        load_fused(spec, ["cnn_a", "mlp"], "horizontal")


@pytest.mark.parametrize("rule", RULES)
def test_merged_onnx_equals_reference(onnx_dir: Path, rule: str) -> None:
    spec = load_spec(_with_rule(onnx_dir, rule))
    fused = load_fused(spec, [m.name for m in spec.members], "onnx")
    x = _batch(4, seed=5)
    _assert_equal(fused.infer(x), ReferenceExecutor(spec).infer(x))


def test_merged_onnx_partial_group(onnx_dir: Path) -> None:
    spec = load_spec(onnx_dir / "ensemble.yaml")
    fused = load_fused(spec, ["oz", "ox"], "onnx", threads=1)
    x = _batch(2, seed=6)
    ref = ReferenceExecutor(spec).member_logits({"input": x})
    got = fused.member_logits(x)
    for name in ("oz", "ox"):
        np.testing.assert_allclose(got[name], ref[name], **LOGIT_TOL)
    fused.set_threads(2)
    np.testing.assert_allclose(fused.member_logits(x)["ox"], ref["ox"], **LOGIT_TOL)


def test_candidates_and_kind_checks(torch_dir: Path, onnx_dir: Path) -> None:
    spec = load_spec(torch_dir / "ensemble.yaml")
    assert fusion_candidates(spec) == [
        FusionGroup("fx", ("cnn_a", "cnn_b", "cnn_c", "mlp"), True),
        FusionGroup("horizontal", ("cnn_a", "cnn_b"), False),
    ]
    assert fusion_candidates(spec)[1].name == "horizontal:cnn_a+cnn_b"
    with pytest.raises(SpecError, match="unknown fusion kind"):
        load_fused(spec, ["cnn_a"], "bogus")  # type: ignore[arg-type]
    onnx_spec = load_spec(onnx_dir / "ensemble.yaml")
    assert fusion_candidates(onnx_spec) == [FusionGroup("onnx", ("ox", "oy", "oz"), True)]
    with pytest.raises(SpecError):
        load_fused(onnx_spec, ["ox"], "fx")


def test_param_bytes_counts_folded_weights(torch_dir: Path) -> None:
    spec = load_spec(torch_dir / "ensemble.yaml")
    fused = load_fused(spec, [m.name for m in spec.members], "fx")
    separate = sum(m.param_bytes() for m in ReferenceExecutor(spec).members.values())
    assert 0 < fused.param_bytes() <= separate
