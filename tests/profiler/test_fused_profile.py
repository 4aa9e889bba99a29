"""Fused groups profiled as members: entries, admission, cache, and planning with them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from enserve.errors import PlanError, ProfileError
from enserve.formats.profile import load_profile, profile_from_dict, save_profile
from enserve.plan.fusion import choose_fusion, plan_groups, profile_for_plan
from enserve.plan.restrict import profile_groups, restrict_profile
from enserve.profiler import profile_spec_dict
from enserve.reference import ReferenceExecutor
from enserve.spec import load_spec
from enserve.variants.fused import check_fused_variant, load_fused_variant

GROUP = "fx:tiny+other"
FAST = {"batch_sizes": (1, 4), "shares": [1], "repeats": 2, "warmup": 1, "progress": False}


def test_fused_group_is_profiled_as_a_member(tiny_spec_path: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    data, stats = profile_spec_dict(tiny_spec_path, variants=["eager"], cache_dir=cache,
                                    fusion="auto", **FAST)  # type: ignore[arg-type]
    profile = profile_from_dict(json.loads(json.dumps(data)))
    save_profile(profile, tmp_path / "p.json")
    profile = load_profile(tmp_path / "p.json")  # extra keys survive a round trip
    assert profile.member_names() == ["tiny", "other", GROUP]
    group = next(m for m in data["members"] if m["name"] == GROUP)
    assert group["covers"] == ["tiny", "other"] and group["fusion_kind"] == "fx"
    assert group["variants"] == ["fused-fx", "fused-fx-frozen", "fused-fx-cl-lanes"]
    assert all(c["admitted"] and c["rel_error"] < 1e-4 for c in group["checks"])
    keys = {(e.variant, e.batch_size) for e in profile.entries if e.member == GROUP}
    assert keys == {(v, b) for v in ("fused-fx", "fused-fx-frozen", "fused-fx-cl-lanes") for b in (1, 4)}
    assert profile_groups(profile)[GROUP].covers == ("tiny", "other")
    assert stats.measured_entries == 10  # 2 members and 3 group variants, batches 1 and 4

    again, stats = profile_spec_dict(tiny_spec_path, variants=["eager"], cache_dir=cache,
                                     fusion="auto", **FAST)  # type: ignore[arg-type]
    assert stats.measured_entries == 0 and stats.run_checks == 0
    assert again["entries"] == data["entries"]

    off, _ = profile_spec_dict(tiny_spec_path, variants=["eager"], cache_dir=cache,
                               fusion="off", **FAST)  # type: ignore[arg-type]
    assert [m["name"] for m in off["members"]] == ["tiny", "other"]


def test_fusion_on_without_candidates_is_an_error(tiny_spec_path: Path, tmp_path: Path) -> None:
    spec_dir = tiny_spec_path.parent
    (spec_dir / "one.yaml").write_text(
        "name: one\ninputs: [{name: input, shape: [-1, 3, 12, 12]}]\n"
        "members: [{name: tiny, source: 'python:tiny.py:make_tiny'}]\n")
    with pytest.raises(ProfileError, match="--fusion on: no members"):
        profile_spec_dict(spec_dir / "one.yaml", variants=["eager"], cache_dir=tmp_path,
                          fusion="on", **FAST)  # type: ignore[arg-type]


def test_fused_variant_equals_reference_and_a_wrong_one_is_rejected(tiny_spec_path: Path
                                                                    ) -> None:
    spec = load_spec(tiny_spec_path)
    fused = load_fused_variant(spec, GROUP, "fused-fx")
    x = np.random.default_rng(5).standard_normal((3, 3, 12, 12)).astype(np.float32)
    want = ReferenceExecutor(spec).member_logits({"input": x})
    got = fused.member_logits(x)
    for name in ("tiny", "other"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5)
    assert check_fused_variant(spec, GROUP, "fused-fx", candidate=fused).admitted

    class Wrong:  # a candidate whose second member's logits are off
        def __call__(self, batch: np.ndarray) -> np.ndarray:
            out = fused(batch).copy()
            out[1] += 0.5
            return out

    check = check_fused_variant(spec, GROUP, "fused-fx", candidate=Wrong())  # type: ignore[arg-type]
    assert not check.admitted and "exceeds" in check.reason


def _profile(group_latency: float) -> object:
    """Hand-written: two members (1 ms each at batch 8) and their fused group."""
    entries = [{"member": m, "device": "cpu", "batch_size": 8, "share": 1, "latency_s": 0.001,
                "memory_bytes": 1000, "variant": "eager"} for m in ("a", "b")]
    entries.append({"member": "fx:a+b", "device": "cpu", "batch_size": 8, "share": 1,
                    "latency_s": group_latency, "memory_bytes": 1500, "variant": "fused-fx"})
    return profile_from_dict({
        "devices": [{"id": "cpu", "kind": "cpu", "memory_bytes": 10**9, "compute_units": 2}],
        "members": [{"name": "a"}, {"name": "b"},
                    {"name": "fx:a+b", "covers": ["a", "b"], "fusion_kind": "fx"}],
        "entries": entries})


@pytest.mark.parametrize(("group_latency", "fused_wins"), [(0.0012, True), (0.004, False)])
def test_auto_keeps_the_better_predicted_plan(group_latency: float, fused_wins: bool) -> None:
    profile = _profile(group_latency)
    decision = choose_fusion(profile, "auto")  # type: ignore[arg-type]
    assert [o.groups for o in decision.options] == [(), ("fx:a+b",)]
    uses = plan_groups(decision.plan)
    assert (uses == ["fx:a+b"]) is fused_wins
    assert decision.groups == tuple(uses)
    members = {i.member for i in decision.plan.instances}
    assert members == ({"fx:a+b"} if fused_wins else {"a", "b"})
    if fused_wins:
        assert {i.variant for i in decision.plan.instances} == {"fused-fx"}
    throughputs = [o.throughput for o in decision.options]
    assert decision.plan.predicted.throughput == max(throughputs)  # type: ignore[type-var]


def test_on_and_off_force_the_choice() -> None:
    profile = _profile(0.004)  # fusion loses, but "on" must use it anyway
    on = choose_fusion(profile, "on")  # type: ignore[arg-type]
    assert plan_groups(on.plan) == ["fx:a+b"]
    off = choose_fusion(profile, "off")  # type: ignore[arg-type]
    assert plan_groups(off.plan) == [] and {i.member for i in off.plan.instances} == {"a", "b"}
    assert profile_for_plan(profile, on.plan).member_names() == ["fx:a+b"]  # type: ignore[arg-type]
    assert restrict_profile(profile, ()).member_names() == ["a", "b"]  # type: ignore[arg-type]
    with pytest.raises(PlanError, match="not one of"):
        choose_fusion(profile, "sometimes")  # type: ignore[arg-type]


def test_on_without_groups_in_the_profile_is_an_error() -> None:
    profile = profile_from_dict({
        "devices": [{"id": "cpu", "kind": "cpu", "memory_bytes": 10**9, "compute_units": 1}],
        "members": [{"name": "a"}],
        "entries": [{"member": "a", "device": "cpu", "batch_size": 1, "share": 1,
                     "latency_s": 0.001, "memory_bytes": 1}]})
    with pytest.raises(PlanError, match="no fused groups"):
        choose_fusion(profile, "on")
