"""An fx group's folded weights are written once to a file and mapped by later loads: no
source module is built again, and writing holds one member's weights at a time."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

import enserve.fusion.folded as folded
import enserve.fusion.groups as groups
from enserve.fusion import load_fused
from enserve.fusion.folded_key import folded_path
from enserve.reference import ReferenceExecutor
from enserve.spec import EnsembleSpec, load_spec
from tests.helpers.tiny_models import write_torch_ensemble


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> EnsembleSpec:
    return load_spec(write_torch_ensemble(tmp_path_factory.mktemp("folded")))


def _batch() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((4, 1, 8, 8)).astype(np.float32)


def _assert_equal(spec: EnsembleSpec, fused) -> None:  # type: ignore[no-untyped-def]
    x = _batch()
    ref = ReferenceExecutor(spec).infer(x)
    got = fused.infer(x)
    np.testing.assert_allclose(got.probabilities, ref.probabilities, atol=2e-6, rtol=0)
    for name, logits in ref.member_logits.items():
        np.testing.assert_allclose(got.member_logits[name], logits, rtol=1e-4, atol=1e-5)


def _no_sources(*_args, **_kwargs):  # type: ignore[no-untyped-def]
    raise AssertionError("a source module was built")


@pytest.mark.parametrize("channels_last", [False, True])
def test_second_load_maps_the_folded_file(spec: EnsembleSpec, tmp_path: Path, monkeypatch,
                                          channels_last: bool) -> None:
    names = [m.name for m in spec.members]
    first = load_fused(spec, names, "fx", cache_dir=tmp_path, channels_last=channels_last)
    _assert_equal(spec, first)
    path = folded_path(spec, names, channels_last, tmp_path)
    assert path.is_file()

    monkeypatch.setattr(folded, "build_torch_module", _no_sources)
    monkeypatch.setattr(groups, "build_torch_module", _no_sources)
    monkeypatch.setattr(folded, "skeleton", _no_sources)  # the stored graphs: no architecture code
    seen: list[torch.nn.Module] = []
    real_build = groups.build_fx_group
    monkeypatch.setattr(groups, "build_fx_group",
                        lambda mods, *a, **k: (seen.extend(mods.values()), real_build(mods, *a, **k))[1])
    second = load_fused(spec, names, "fx", cache_dir=tmp_path, channels_last=channels_last)
    _assert_equal(spec, second)

    size = path.stat().st_size
    tensors = [t for m in seen for t in list(m.parameters()) + list(m.buffers())]
    assert tensors and all(t.untyped_storage().nbytes() == size for t in tensors)  # views of the map
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for mod in seen for m in mod.modules())
    convs = [m.weight for mod in seen for m in mod.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 6
    if channels_last:  # mapped in NHWC order, no copy made to get there
        assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)


def test_writing_holds_one_member_at_a_time(spec: EnsembleSpec, tmp_path: Path, monkeypatch) -> None:
    names = [m.name for m in spec.members]
    built: list[weakref.ref[torch.Tensor]] = []
    alive_when_building: list[int] = []
    real = folded.build_torch_module

    def watching(spec_, member):  # type: ignore[no-untyped-def]
        gc.collect()
        alive_when_building.append(sum(r() is not None for r in built))
        module = real(spec_, member)
        built.extend(weakref.ref(t) for t in module.state_dict().values())
        return module

    monkeypatch.setattr(folded, "build_torch_module", watching)
    fused = load_fused(spec, names, "fx", cache_dir=tmp_path)
    gc.collect()
    assert alive_when_building == [0] * len(names)  # the previous member is gone
    assert all(r() is None for r in built)  # no source survives the load
    _assert_equal(spec, fused)


def test_a_damaged_file_falls_back_to_the_sources(spec: EnsembleSpec, tmp_path: Path) -> None:
    names = [m.name for m in spec.members]
    load_fused(spec, names, "fx", cache_dir=tmp_path)
    path = folded_path(spec, names, False, tmp_path)
    path.write_bytes(path.read_bytes()[:100])
    _assert_equal(spec, load_fused(spec, names, "fx", cache_dir=tmp_path))
    assert not folded.folded_members(spec, names, False, tmp_path)  # refused, not mapped


def test_mapped_off_writes_nothing(spec: EnsembleSpec, tmp_path: Path) -> None:
    names = [m.name for m in spec.members]
    _assert_equal(spec, load_fused(spec, names, "fx", cache_dir=tmp_path, mapped=False))
    assert not (tmp_path / "artifacts").exists()


def test_traced_torchvision_graph_needs_no_torchvision() -> None:
    """Eval-mode stochastic depth (efficientnet) is dropped, so a stored folded graph
    names `torch` functions and modules only."""
    import json

    import torchvision

    from enserve.fusion.fold import folded_copy
    from enserve.fusion.graph_json import storable_graph

    with torch.device("meta"):
        model = torchvision.models.efficientnet_b0(weights=None).eval()
    gm, folds = folded_copy(model, consume=True)
    assert folds > 0 and "stochastic_depth" not in gm.code and "torchvision" not in gm.code
    stored = storable_graph(gm)  # type: ignore[arg-type]
    assert stored is not None and "torchvision" not in json.dumps(stored)
