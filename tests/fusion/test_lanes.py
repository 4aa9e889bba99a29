"""fx groups run in lanes (one graph per member, members side by side on threads) answer
as the reference executor does, in the group's member order."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from enserve.fusion import load_fused
from enserve.fusion.lanes import LaneRunner
from enserve.reference import ReferenceExecutor
from enserve.spec import load_spec
from enserve.variants.fused import load_fused_variant
from tests.fusion.test_fusion import LOGIT_TOL, _assert_equal, _batch, _with_rule
from tests.helpers.tiny_models import write_torch_ensemble


@pytest.fixture(scope="module")
def torch_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_torch_ensemble(tmp_path_factory.mktemp("lanes")).parent


@pytest.mark.parametrize(("rule", "channels_last"), [("mean_prob", True), ("majority_vote", False)])
def test_lanes_equal_reference(torch_dir: Path, rule: str, channels_last: bool,
                               tmp_path: Path) -> None:
    spec = load_spec(_with_rule(torch_dir, rule))
    fused = load_fused(spec, [m.name for m in spec.members], "fx", 2, lanes=True,
                       channels_last=channels_last, cache_dir=tmp_path)
    runner = fused._runner
    assert isinstance(runner, LaneRunner) and runner.lanes == 2
    assert fused.variant == ("fused-fx-cl-lanes" if channels_last else "fused-fx-lanes")
    ref = ReferenceExecutor(spec)
    for seed in (1, 2):  # the second call orders members by their measured times
        x = _batch(4, seed=seed)
        _assert_equal(fused.infer(x), ref.infer(x))


def test_lanes_run_members_on_lane_threads(torch_dir: Path, tmp_path: Path) -> None:
    spec = load_spec(torch_dir / "ensemble.yaml")
    fused = load_fused(spec, [m.name for m in spec.members], "fx", 2, lanes=True, cache_dir=tmp_path)
    runner = fused._runner
    assert isinstance(runner, LaneRunner)
    seen: set[str] = set()
    for graph in runner.graphs:
        graph.register_forward_pre_hook(lambda *_: seen.add(threading.current_thread().name))
    fused(_batch(2))
    assert seen and all(name.startswith("enserve-lane") for name in seen)
    fused.set_threads(1)  # one lane: members in turn on the calling thread
    seen.clear()
    fused(_batch(2))
    assert seen == {threading.current_thread().name}


def test_lanes_variant_of_a_partial_group(torch_dir: Path, tmp_path: Path) -> None:
    spec = load_spec(torch_dir / "ensemble.yaml")
    group = "fx:mlp+cnn_c"
    fused = load_fused_variant(spec, group, "fused-fx-cl-lanes", threads=2, cache_dir=tmp_path)
    assert fused.variant == "fused-fx-cl-lanes" and fused.member_names == ["mlp", "cnn_c"]
    x = _batch(3, seed=5)
    want = ReferenceExecutor(spec).member_logits({"input": x})
    got = fused.member_logits(x)
    assert list(got) == ["mlp", "cnn_c"]
    np.testing.assert_allclose(np.stack(list(got.values())), np.stack([want[n] for n in got]),
                               **LOGIT_TOL)
