"""Profiles that carry fused groups next to their members (as `enserve profile` writes them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from enserve.cli import main
from enserve.formats.profile import profile_from_dict
from enserve.plan import plan
from enserve.plan.fusion import choose_fusion


def fused_profile(group_latency: float) -> dict[str, object]:
    """Members a and b (10 ms each at batch 1) and a group covering both."""
    entries = [
        {"member": name, "device": "cpu", "batch_size": 1, "share": 1, "latency_s": lat,
         "memory_bytes": 1000, "variant": variant}
        for name, lat, variant in (("a", 0.010, "eager"), ("b", 0.010, "eager"),
                                   ("fx:a+b", group_latency, "fused-fx"))
    ]
    return {
        "devices": [{"id": "cpu", "kind": "cpu", "memory_bytes": 10**9, "compute_units": 1}],
        "members": [{"name": "a"}, {"name": "b"},
                    {"name": "fx:a+b", "covers": ["a", "b"], "fusion_kind": "fx"}],
        "entries": entries,
    }


def test_plain_plan_ignores_groups_whose_members_are_present() -> None:
    result = plan(profile_from_dict(fused_profile(0.012), "p.json"), "greedy")
    assert {i.member for i in result.instances} == {"a", "b"}


@pytest.mark.parametrize(("group_latency", "expected"), [(0.012, {"fx:a+b"}), (0.030, {"a", "b"})])
def test_auto_fusion_takes_the_group_only_when_predicted_faster(group_latency: float,
                                                               expected: set[str]) -> None:
    decision = choose_fusion(profile_from_dict(fused_profile(group_latency), "p.json"), "auto")
    assert {i.member for i in decision.plan.instances} == expected


def test_cli_plan_fusion_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(fused_profile(0.012)))
    for fusion, members in (("off", {"a", "b"}), ("on", {"fx:a+b"}), ("auto", {"fx:a+b"})):
        assert main(["plan", "--profile", str(path), "--fusion", fusion, "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert {i["member"] for i in out["instances"]} == members
