"""Re-planning when cluster nodes leave and return, on hand-made plans (no Ray)."""

from __future__ import annotations

import pytest

from enserve.cluster import cluster_devices, parse_cluster_decl
from enserve.errors import PlanError
from enserve.formats.plan import Instance, Plan, Predicted
from enserve.formats.profile import profile_from_dict
from enserve.plan import plan
from enserve.plan.replan import diff_instances, relocate, replan

GiB = 2**30


def _plan() -> Plan:
    devices = tuple(cluster_devices(parse_cluster_decl("3x(cpu:4GB:2,cuda:8GB)")))
    inst = [
        Instance("a", None, "node-0/cpu", 8, 1, GiB),
        Instance("b", None, "node-1/cpu", 4, 2, GiB),
        Instance("b", None, "node-2/cpu", 4, 2, GiB),
        Instance("c", None, "node-2/cuda:0", 16, 100, 6 * GiB),
        Instance("d", None, "node-1/cuda:0", 16, 50, GiB),
    ]
    return Plan("greedy", "throughput", devices, tuple(inst), Predicted(10, 0.1))


def _alive(p: Plan, *lost: str) -> list:
    return [d for d in p.devices if d.id.split("/")[0] not in lost]


def test_relocate_moves_lost_instances_to_same_kind() -> None:
    p = _plan()
    new = relocate(p, _alive(p, "node-2"))
    assert all(not i.device.startswith("node-2/") for i in new.instances)
    members = sorted(i.member for i in new.instances)
    assert members == ["a", "b", "b", "c", "d"]
    c = next(i for i in new.instances if i.member == "c")
    assert c.device == "node-0/cuda:0"  # the empty GPU, not the one d uses
    moved_b = [i for i in new.instances if i.member == "b"]
    assert {i.device for i in moved_b} == {"node-0/cpu", "node-1/cpu"}
    assert new.algorithm == "greedy+relocated"


def test_relocate_drops_a_replica_that_fits_nowhere_but_never_a_member() -> None:
    devices = tuple(cluster_devices(parse_cluster_decl("2x(cpu:2GB:2)")))
    p = Plan("greedy", "throughput", devices, (
        Instance("a", None, "node-0/cpu", 8, 1, GiB + GiB // 2),
        Instance("a", None, "node-1/cpu", 8, 1, GiB + GiB // 2),
        Instance("b", None, "node-1/cpu", 8, 1, GiB // 4)), Predicted(1, 1))
    new = relocate(p, _alive(p, "node-1"))
    assert sorted(i.member for i in new.instances) == ["a", "b"]
    p2 = Plan("greedy", "throughput", devices, (
        Instance("a", None, "node-0/cpu", 8, 1, GiB + GiB // 2),
        Instance("b", None, "node-1/cpu", 8, 1, GiB)), Predicted(1, 1))
    with pytest.raises(PlanError, match="member.*b"):
        relocate(p2, _alive(p2, "node-1"))


def test_share_capped_at_the_new_device() -> None:
    devices = tuple(cluster_devices(parse_cluster_decl("(cpu:8GB:4)+(cpu:8GB:1)")))
    p = Plan("x", "throughput", devices, (Instance("a", None, "node-0/cpu", 8, 4, GiB),
                                          Instance("b", None, "node-1/cpu", 8, 1, GiB)),
             Predicted(1, 1))
    new = relocate(p, _alive(p, "node-0"))
    assert [(i.member, i.share) for i in new.instances] == [("b", 1), ("a", 1)]


def test_diff_keeps_identical_instances() -> None:
    p = _plan()
    new = relocate(p, _alive(p, "node-2"))
    diff = diff_instances(p.instances, new.instances)
    kept = {p.instances[i].device for i, _ in diff.keep}
    assert kept == {"node-0/cpu", "node-1/cpu", "node-1/cuda:0"}
    assert sorted(p.instances[i].device for i in diff.stop) == ["node-2/cpu", "node-2/cuda:0"]
    assert len(diff.start) == 2
    back = diff_instances(new.instances, p.instances)  # the node returned: back to whole
    assert sorted(p.instances[j].device for j in back.start) == ["node-2/cpu", "node-2/cuda:0"]
    assert diff_instances(p.instances, p.instances).start == ()


def test_replan_with_a_profile_plans_the_remaining_nodes() -> None:
    profile = profile_from_dict({
        "devices": [{"id": "cuda:0", "kind": "cuda", "memory_bytes": 16 * GiB,
                     "compute_units": 100}],
        "members": [{"name": "m0"}, {"name": "m1"}],
        "entries": [{"member": m, "device": "cuda:0", "batch_size": 8, "share": 100,
                     "latency_s": 0.02, "memory_bytes": 2 * GiB} for m in ("m0", "m1")],
    })
    devices = cluster_devices(parse_cluster_decl("4x(cuda:16GB)"))
    full = plan(profile, "greedy", devices=devices)
    assert full.predicted.throughput == pytest.approx(4 * 8 / 0.02 / 2, rel=1e-6)
    alive = [d for d in devices if not d.id.startswith(("node-2/", "node-3/"))]
    half = replan(full, alive, profile)
    assert {i.device.split("/")[0] for i in half.instances} <= {"node-0", "node-1"}
    assert half.predicted.throughput == pytest.approx(full.predicted.throughput / 2, rel=1e-6)
