"""Mixed precision in the planner, on hand-made profiles with an accuracy section."""

from __future__ import annotations

from typing import Any

import pytest

from enserve.errors import PlanError
from enserve.formats.profile import profile_from_dict
from enserve.plan import Plan
from enserve.plan.precision import choose_precision, maximal, plan_mixes, restrict_precision

HARDWARE = {"id": "x", "arch": "x86_64", "cpu_model": "Fake CPU", "cores": 2,
            "isa": ["avx2"], "gpus": [], "mps": False}


def _profile(assignments: list[dict[str, Any]]) -> dict[str, Any]:
    """Two members; int8 halves a's latency and thirds b's; fp32 is the slower way."""
    entries = []
    for member, fp32_s, int8_s in (("a", 0.02, 0.01), ("b", 0.03, 0.01)):
        for variant, latency in (("eager", fp32_s), ("int8", int8_s)):
            for batch in (1, 8):
                entries.append({"member": member, "variant": variant, "device": "cpu",
                                "batch_size": batch, "share": 1,
                                "latency_s": latency * batch, "memory_bytes": 1 << 20})
    return {
        "devices": [{"id": "cpu", "kind": "cpu", "memory_bytes": 8 << 30, "compute_units": 2}],
        "members": [{"name": "a"}, {"name": "b"}],
        "entries": entries,
        "hardware": HARDWARE,
        "accuracy": {"rows": 512, "labels": False, "fp32_accuracy": None,
                     "tolerance": {"min_top1_agreement": 0.99, "max_accuracy_drop": None},
                     "assignments": [{"precisions": {}, "top1_agreement": 1.0,
                                      "admitted": True}, *assignments]},
    }


def _row(precisions: dict[str, str], agreement: float) -> dict[str, Any]:
    return {"precisions": precisions, "top1_agreement": agreement,
            "admitted": agreement >= 0.99}


def _precisions(plan: Plan) -> set[tuple[str, str | None]]:
    return {(i.member, i.variant) for i in plan.instances}


def test_all_int8_when_admitted_and_faster() -> None:
    profile = profile_from_dict(_profile([_row({"a": "int8"}, 0.999), _row({"b": "int8"}, 0.995),
                                          _row({"a": "int8", "b": "int8"}, 0.993)]))
    decision = choose_precision(profile)
    assert decision.assignment == {"a": "int8", "b": "int8"}
    assert {v for _, v in _precisions(decision.plan)} == {"int8"}
    info = decision.plan.precision
    assert info is not None and info["top1_agreement"] == 0.993
    assert info["members"] == {"a": "int8", "b": "int8"}
    assert decision.plan.hardware is not None and decision.plan.hardware["cpu_model"] == "Fake CPU"
    fp32 = choose_precision(profile, "fp32").plan
    assert decision.plan.predicted.throughput > 1.5 * fp32.predicted.throughput


def test_mixed_when_only_one_member_is_admitted() -> None:
    profile = profile_from_dict(_profile([_row({"a": "int8"}, 0.95), _row({"b": "int8"}, 0.995),
                                          _row({"a": "int8", "b": "int8"}, 0.94)]))
    decision = choose_precision(profile)
    assert decision.assignment == {"b": "int8"}
    assert all(v == "eager" for m, v in _precisions(decision.plan) if m == "a")
    assert decision.plan.precision is not None
    assert decision.plan.precision["top1_agreement"] == 0.995


def test_precision_fp32_forbids_reduced_variants() -> None:
    profile = profile_from_dict(_profile([_row({"a": "int8", "b": "int8"}, 1.0),
                                          _row({"a": "int8"}, 1.0), _row({"b": "int8"}, 1.0)]))
    plan = choose_precision(profile, "fp32").plan
    assert {v for _, v in _precisions(plan)} == {"eager"}
    assert plan.precision is not None and plan.precision["members"] == {}
    with pytest.raises(PlanError, match="--precision"):
        choose_precision(profile, "fp16")


def test_without_accuracy_section_reduced_entries_are_never_planned() -> None:
    data = _profile([])
    del data["accuracy"]
    plan = choose_precision(profile_from_dict(data)).plan
    assert {v for _, v in _precisions(plan)} == {"eager"}


def test_restrict_and_maximal_and_mixes() -> None:
    profile = profile_from_dict(_profile([]))
    only_a = restrict_precision(profile, {"a": "int8"})
    assert {(e.member, e.variant) for e in only_a.entries} == {
        ("a", "eager"), ("a", "int8"), ("b", "eager")}
    assert maximal([{"a": "int8"}, {"a": "int8", "b": "int8"}, {"b": "bf16"}]) == [
        {"a": "int8", "b": "int8"}, {"b": "bf16"}]
    plan = choose_precision(profile, "fp32").plan
    assert plan_mixes(plan) == [{}]


def test_plan_json_keeps_hardware_and_precision() -> None:
    profile = profile_from_dict(_profile([_row({"a": "int8"}, 1.0)]))
    plan = choose_precision(profile).plan
    back = Plan.from_dict(plan.to_dict())
    assert back.hardware == plan.hardware and back.precision == plan.precision
