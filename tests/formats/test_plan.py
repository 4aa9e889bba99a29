"""The plan format: one spelling of the default variant, group names as data, plans
written by hand and plans that were not planned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from enserve.errors import PlanError
from enserve.formats.groups import GroupRef
from enserve.formats.plan import Plan, load_plan, save_plan


def test_old_spellings_of_the_default_variant_read_as_none(tmp_path: Path):
    plan = Plan.of([{"member": "a", "variant": "default"}, {"member": "b", "variant": ""},
                    {"member": "c"}, {"member": "d", "variant": "onnx"}])
    assert [i.variant for i in plan.instances] == [None, None, None, "onnx"]


def test_a_hand_made_plan_gets_defaults_and_the_devices_it_names(tmp_path: Path):
    plan = Plan.of([{"member": "a", "share": 2, "memory_bytes": 10},
                    {"member": "b", "device": "cuda:0", "share": 50, "batch_size": 4}])
    assert plan.predicted is None
    assert [(d.id, d.kind, d.compute_units) for d in plan.devices] == [
        ("cpu", "cpu", 2.0), ("cuda:0", "cuda", 50.0)]
    assert (plan.instances[0].batch_size, plan.instances[1].batch_size) == (8, 4)
    path = tmp_path / "plan.json"
    save_plan(plan, path)
    assert json.loads(path.read_text())["predicted"] is None
    assert load_plan(path) == plan


def test_group_names_are_data():
    plan = Plan.of([{"member": "fx:a+b", "variant": "fused-fx"}, {"member": "c"}])
    assert plan.instances[0].group == GroupRef("fx:a+b", "fx", ("a", "b"))
    assert plan.instances[1].group is None
    assert [g.name for g in plan.groups()] == ["fx:a+b"]
    assert GroupRef.of("horizontal", ["x", "y"]).name == "horizontal:x+y"
    assert GroupRef.parse("warp:a+b") is None and GroupRef.parse("fx:a+") is None


def test_unfused_from_survives_a_round_trip(tmp_path: Path):
    from enserve.plan.fusion import unfuse_plan

    unfused = unfuse_plan(Plan.of([{"member": "fx:a+b", "variant": "fused-fx", "share": 2}]))
    assert [(i.member, i.variant, i.share) for i in unfused.instances] == [
        ("a", None, 1.0), ("b", None, 1.0)]
    path = tmp_path / "unfused.json"
    save_plan(unfused, path)
    assert load_plan(path).unfused_from == ("fx:a+b",)


def test_a_bad_hand_made_instance_is_named():
    with pytest.raises(PlanError, match="instances.1"):
        Plan.of([{"member": "a"}, {"member": "b", "batch_size": 0}])
