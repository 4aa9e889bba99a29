"""Cluster declarations, node-qualified device ids and planning across nodes with the pure
planner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from enserve.cluster import (
    cluster_devices,
    load_cluster_file,
    node_of,
    parse_cluster_decl,
    split_device_id,
)
from enserve.devices import parse_device_decl
from enserve.formats.profile import profile_from_dict
from enserve.plan import plan
from enserve.plan.scenarios import random_profile

GiB = 2**30


def test_four_nodes_of_eight_gpus() -> None:
    nodes = parse_cluster_decl("4x(8xcuda:80GB)")
    assert [n.name for n in nodes] == ["node-0", "node-1", "node-2", "node-3"]
    devices = cluster_devices(nodes)
    assert len(devices) == 32
    assert devices[9].id == "node-1/cuda:1"
    assert devices[9].memory_bytes == 80 * GiB and devices[9].compute_units == 100


def test_mixed_groups_and_errors() -> None:
    nodes = parse_cluster_decl("(cpu:64GB:16,2xcuda:16GB)+2x(cpu:8GB:2)")
    assert [d.id for d in cluster_devices(nodes)] == [
        "node-0/cpu", "node-0/cuda:0", "node-0/cuda:1", "node-1/cpu", "node-2/cpu"]
    for bad in ("4x8xcuda:80GB", "0x(cpu:1GB:1)", "(cuda)", "()"):
        with pytest.raises(ValueError):
            parse_cluster_decl(bad)


def test_split_ids() -> None:
    assert split_device_id("node-3/cuda:1") == ("node-3", "cuda:1")
    assert split_device_id("cuda:1") == (None, "cuda:1")
    assert node_of("gpu-a/cpu") == "gpu-a"


def test_json_node_list(tmp_path: Path) -> None:
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"nodes": [
        {"name": "gpu-a", "devices": "cpu:32GB:8,4xcuda:80GB", "resources": {"ssd": 1}},
        {"name": "gpu-b", "devices": [{"id": "cuda:0", "kind": "cuda",
                                       "memory_bytes": 17179869184, "compute_units": 100}]},
    ]}))
    nodes = load_cluster_file(path)
    assert nodes[0].resources == {"ssd": 1.0}
    assert [d.id for d in cluster_devices(nodes)][-1] == "gpu-b/cuda:0"
    path.write_text(json.dumps([{"name": "a", "devices": 3}]))
    with pytest.raises(ValueError, match=r"nodes\.0"):
        load_cluster_file(path)
    path.write_text(json.dumps([{"name": "a", "devices": "cpu:1GB:1"},
                                {"name": "a", "devices": "cpu:1GB:1"}]))
    with pytest.raises(ValueError, match="repeat"):
        load_cluster_file(path)


def test_plan_across_nodes_borrows_entries_by_kind() -> None:
    """A profile measured on one GPU plans across a declared cluster; ids name the node."""
    profile = profile_from_dict({
        "devices": [{"id": "cuda:0", "kind": "cuda", "memory_bytes": 16 * GiB,
                     "compute_units": 100}],
        "members": [{"name": f"m{i}"} for i in range(6)],
        "entries": [{"member": f"m{i}", "device": "cuda:0", "batch_size": b, "share": 100,
                     "latency_s": 0.01 * b ** 0.5 * (1 + i % 3), "memory_bytes": 6 * GiB}
                    for i in range(6) for b in (1, 8)],
    })
    devices = cluster_devices(parse_cluster_decl("3x(2xcuda:16GB)"))
    result = plan(profile, "greedy", devices=devices)
    nodes = {node_of(i.device) for i in result.instances}
    assert nodes == {"node-0", "node-1", "node-2"}  # 6 x 6 GiB members need every node
    single = plan(profile, "greedy", devices=parse_device_decl("6xcuda:16GB"))
    assert result.predicted.throughput == pytest.approx(single.predicted.throughput, rel=0.05)


def test_random_scenario_on_a_cluster() -> None:
    profile = random_profile(3)
    kinds = {d.kind for d in profile.device_list()}
    decl = "2x(cpu:64GB:8,2xcuda:16GB)" if "cuda" in kinds else "2x(cpu:64GB:8)"
    result = plan(profile, "greedy", devices=cluster_devices(parse_cluster_decl(decl)))
    assert all(node_of(i.device) in ("node-0", "node-1") for i in result.instances)
