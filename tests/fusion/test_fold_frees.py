"""A fused load releases each member's original convolution as it folds it, so building
the fused graph never holds a whole model's unfolded and folded weights at once."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
import torch

import enserve.fusion.fold as fold
from enserve.fusion import load_fused
from enserve.reference import ReferenceExecutor
from enserve.spec import load_spec
from tests.helpers.tiny_models import randomized, small_cnn, write_torch_ensemble


def _conv_weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in module.modules() if isinstance(m, torch.nn.Conv2d)]


def test_fused_load_releases_each_source_weight_as_it_folds(tmp_path: Path, monkeypatch) -> None:
    spec = load_spec(write_torch_ensemble(tmp_path))
    names = [m.name for m in spec.members]
    modules = {"cnn_a": randomized(small_cnn(), 1), "cnn_b": randomized(small_cnn(), 2),
               "cnn_c": randomized(small_cnn(), 3)}
    from enserve.members import build_torch_module

    modules["mlp"] = build_torch_module(spec, spec.member("mlp"))
    x = np.random.default_rng(5).standard_normal((3, 1, 8, 8)).astype(np.float32)
    reference = ReferenceExecutor(spec, {n: _eager(spec, n, modules[n]) for n in names}).infer(x)

    originals = [weakref.ref(w) for m in modules.values() for w in _conv_weights(m)]
    assert len(originals) == 6
    alive_at_each_fold: list[int] = []
    real_fuse = fold.fuse_conv_bn_eval

    def watching_fuse(conv, bn):  # type: ignore[no-untyped-def]
        gc.collect()
        alive_at_each_fold.append(sum(r() is not None for r in originals))
        return real_fuse(conv, bn)

    monkeypatch.setattr(fold, "fuse_conv_bn_eval", watching_fuse)
    fused = load_fused(spec, names, "fx", modules=modules)
    gc.collect()

    # When pair k is folded, only pairs k..6 still hold their original weights.
    assert alive_at_each_fold == [6, 5, 4, 3, 2, 1]
    assert all(r() is None for r in originals)
    # The given modules were folded in place and still compute the same thing.
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in modules["cnn_a"].modules())
    result = fused.infer(x)
    np.testing.assert_allclose(result.probabilities, reference.probabilities, atol=2e-6, rtol=0)
    with torch.no_grad():
        folded_source = modules["cnn_b"](torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(folded_source, reference.member_logits["cnn_b"], rtol=1e-4, atol=1e-5)


def _eager(spec, name, module):  # type: ignore[no-untyped-def]
    """The reference member around a deep copy (the fused load consumes `module`)."""
    import copy

    from enserve.members import TorchMember
    from enserve.members.preprocess import Preprocessor

    return TorchMember(name, copy.deepcopy(module), Preprocessor(spec.member(name).preprocess))
