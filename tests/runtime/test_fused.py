"""Plans with fused groups: the engine runs a group as one unit and answers like the
reference executor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from enserve.errors import PlanError
from enserve.formats.plan import Plan
from enserve.plan.fusion import unfuse_plan
from enserve.reference import ReferenceExecutor
from enserve.runtime import Engine
from enserve.runtime.placement import configs_from_plan, execution_units
from tests.helpers.runtime import make_spec

RNG = np.random.default_rng(11)


def _x(rows: int) -> np.ndarray:
    return RNG.standard_normal((rows, 3, 2, 2)).astype(np.float32)


def _plan(*instances: tuple[str, str | None, int, float]) -> Plan:
    return Plan.of([{"member": m, "variant": v, "device": "cpu", "batch_size": b,
                     "share": s, "memory_bytes": 0} for m, v, b, s in instances])


def _check(spec, plan, combiner_rows=(4, 1, 7, 2, 3, 6)) -> dict[str, object]:
    reference = ReferenceExecutor(spec)
    requests = [_x(n) for n in combiner_rows]
    with Engine(spec, plan, max_batch=16) as engine:
        futures = [engine.submit(x) for x in requests]  # concurrent: batched together
        for x, f in zip(requests, futures, strict=True):
            got, want = f.result(timeout=30), reference.infer(x)
            np.testing.assert_allclose(got.probabilities, want.probabilities, rtol=1e-5,
                                       atol=1e-6)
            np.testing.assert_array_equal(got.agreement, want.agreement)
            assert set(got.member_logits) == set(want.member_logits)
            for name, logits in want.member_logits.items():
                np.testing.assert_allclose(got.member_logits[name], logits, rtol=1e-4,
                                           atol=1e-5)
        return engine.stats()


PLANS = {
    # the whole ensemble as one fx graph, one instance
    "fx-whole": _plan(("fx:net_a_0+net_b_1+net_c_2", "fused-fx", 8, 1)),
    # the same group with three instances sharing every batch
    "fx-three-instances": _plan(*[("fx:net_a_0+net_b_1+net_c_2", "fused-fx", 2, 1)] * 3),
    # one fused group next to a member running on its own
    "mixed": _plan(("fx:net_a_0+net_c_2", "fused-fx", 4, 1), ("net_b_1", None, 3, 1)),
    # frozen TorchScript variant of the group, default variant of the member
    "frozen-mixed": _plan(("net_a_0", "eager", 8, 1), ("fx:net_b_1+net_c_2", "fused-fx-frozen",
                                                        8, 1)),
    # the group's members side by side on two lanes (threads) of one worker
    "lanes": _plan(("fx:net_a_0+net_b_1+net_c_2", "fused-fx-cl-lanes", 8, 2)),
}


@pytest.mark.parametrize("name", sorted(PLANS))
def test_plans_with_fused_groups_match_reference(tmp_path: Path, name: str):
    spec = make_spec(tmp_path, ["net_a", "net_b", "net_c"], "weighted_mean_prob",
                     weights=[3.0, 1.0, 2.0])
    stats = _check(spec, PLANS[name])
    groups = [i for i in stats["instances"] if i["member"].startswith("fx:")]
    assert groups and all(i["variant"].startswith("fused-fx") for i in groups)
    assert all(i["framework"] == "fused" for i in groups)
    if name == "fx-three-instances":
        assert sum(1 for i in groups if i["rows"] > 0) >= 2  # instances share the work
    assert sum(i["rows"] for i in groups) >= 23  # every row went through the group


def test_horizontal_group_of_same_architecture(tmp_path: Path):
    spec = make_spec(tmp_path, ["net_a", "net_a", "net_b"], "mean_prob")
    plan = _plan(("horizontal:net_a_0+net_a_1", "fused-horizontal", 4, 1), ("net_b_2", None, 4, 1))
    _check(spec, plan, (3, 5))


def test_unfused_plan_splits_groups_and_still_matches(tmp_path: Path):
    spec = make_spec(tmp_path, ["net_a", "net_b", "net_c"])
    fused = _plan(("fx:net_a_0+net_b_1", "fused-fx", 4, 2), ("net_c_2", "eager", 8, 1))
    unfused = unfuse_plan(fused)
    assert [(i.member, i.batch_size, i.share) for i in unfused.instances] == [
        ("net_a_0", 4, 1), ("net_b_1", 4, 1), ("net_c_2", 8, 1)]
    assert list(unfused.unfused_from) == ["fx:net_a_0+net_b_1"]
    _check(spec, unfused, (2, 3))


def test_plan_that_computes_a_member_twice_is_refused(tmp_path: Path):
    spec = make_spec(tmp_path, ["net_a", "net_b"])
    plan = _plan(("fx:net_a_0+net_b_1", "fused-fx", 4, 1), ("net_a_0", None, 4, 1))
    with pytest.raises(PlanError, match="planned twice"):
        configs_from_plan(spec, plan)


@pytest.mark.parametrize(("member", "variant", "message"), [
    ("fx:net_a_0+nope", "fused-fx", "covers nope"),
    ("fx:net_a_0+net_b_1", "eager", "needs a fused variant"),
    ("warp:net_a_0+net_b_1", "fused-fx", "not in ensemble"),
])
def test_bad_fused_instances_are_refused(tmp_path: Path, member: str, variant: str,
                                         message: str):
    spec = make_spec(tmp_path, ["net_a", "net_b"])
    with pytest.raises(PlanError, match=message):
        configs_from_plan(spec, _plan((member, variant, 4, 1)))


def test_units_map_groups_to_members(tmp_path: Path):
    spec = make_spec(tmp_path, ["net_a", "net_b", "net_c"])
    configs = configs_from_plan(spec, PLANS["mixed"])
    assert execution_units(configs) == {"fx:net_a_0+net_c_2": ("net_a_0", "net_c_2"),
                                        "net_b_1": ("net_b_1",)}


def test_engine_planned_from_a_profile_uses_the_faster_fused_group(tmp_path: Path):
    from enserve.formats.profile import profile_from_dict

    spec = make_spec(tmp_path, ["net_a", "net_b"])
    entries = [{"member": m, "device": "cpu", "batch_size": 4, "share": 1, "latency_s": 0.002,
                "memory_bytes": 1000} for m in ("net_a_0", "net_b_1")]
    entries.append({"member": "fx:net_a_0+net_b_1", "device": "cpu", "batch_size": 4,
                    "share": 1, "latency_s": 0.001, "memory_bytes": 1000,
                    "variant": "fused-fx"})
    profile = profile_from_dict({
        "devices": [{"id": "cpu", "kind": "cpu", "memory_bytes": 10**9, "compute_units": 1}],
        "members": [{"name": "net_a_0"}, {"name": "net_b_1"},
                    {"name": "fx:net_a_0+net_b_1", "covers": ["net_a_0", "net_b_1"]}],
        "entries": entries})
    fused = Engine(spec, profile=profile)
    assert {c.member for c in fused.configs} == {"fx:net_a_0+net_b_1"}
    fused.stop()
    unfused = Engine(spec, profile=profile, fusion="off")
    assert {c.member for c in unfused.configs} == {"net_a_0", "net_b_1"}
    unfused.stop()
