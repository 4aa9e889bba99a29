"""Reading a Ray cluster's nodes (fake `ray.nodes()` output) and the Ray backend's pure
placement helpers; no Ray needed."""

from __future__ import annotations

from enserve.cluster import cluster_devices, parse_cluster_decl
from enserve.formats.plan import Instance, Plan, Predicted
from enserve.runtime.ray.engine import _gpu_fractions, _qualify_plan
from enserve.runtime.ray.nodes import cluster_nodes, node_devices

GiB = 2**30


def _raw(node_id: str, resources: dict[str, float], labels: dict[str, str] | None = None,
         alive: bool = True) -> dict[str, object]:
    return {"NodeID": node_id, "Alive": alive, "Resources": resources,
            "Labels": {"ray.io/node-id": node_id, **(labels or {})}}


def test_ray_nodes_are_named_and_read() -> None:
    raw = [
        _raw("bbb", {"CPU": 2.0, "memory": 4 * GiB, "GPU": 2.0, "ssd": 1.0,
                     "node:10.0.0.2": 1.0, "accelerator_type:A100": 1.0},
             {"enserve-gpu-memory": "80GB"}),
        _raw("aaa", {"CPU": 4.0, "memory": 8 * GiB, "node:__internal_head__": 1.0}),
        _raw("ccc", {"CPU": 1.0, "memory": GiB}, {"enserve-node": "node-1"}),
        _raw("ddd", {"CPU": 8.0, "memory": GiB}, alive=False),
    ]
    nodes = cluster_nodes(raw)
    assert [(n.name, n.node_id, n.is_head) for n in nodes] == [
        ("node-0", "aaa", True), ("node-2", "bbb", False), ("node-1", "ccc", False)]
    gpu_node = nodes[1].node
    assert [d.id for d in gpu_node.devices] == ["cpu", "cuda:0", "cuda:1"]
    assert gpu_node.devices[1].memory_bytes == 80 * GiB
    assert gpu_node.resources == {"ssd": 1.0}
    assert node_devices({"memory": GiB}, {}) == ()


def test_gpu_fractions_fit_time_shared_gpus() -> None:
    devices = tuple(cluster_devices(parse_cluster_decl("(cpu:8GB:2,2xcuda:16GB)")))
    p = Plan("x", "throughput", devices, (
        Instance("a", None, "node-0/cuda:0", 8, 50, GiB),
        Instance("b", None, "node-0/cuda:0", 8, 100, GiB),
        Instance("c", None, "node-0/cuda:1", 8, 25, GiB),
        Instance("d", None, "node-0/cpu", 8, 2, GiB)), Predicted(1, 1))
    assert _gpu_fractions(p) == [0.3333, 0.6666, 0.25, 0.0]


def test_a_single_machine_plan_runs_on_one_node() -> None:
    devices = tuple(parse_cluster_decl("(cpu:8GB:2)")[0].devices)
    p = Plan("x", "throughput", devices, (Instance("a", None, "cpu", 8, 1, GiB),),
             Predicted(1, 1))
    q = _qualify_plan(p, "node-4")
    assert [d.id for d in q.devices] == ["node-4/cpu"]
    assert q.instances[0].device == "node-4/cpu"
    assert _qualify_plan(q, "node-0") is q
