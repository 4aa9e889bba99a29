"""The Ray backend on a real 3-node Ray cluster (`ray.cluster_utils.Cluster`) on this
machine, run inside a loopback-only network namespace this test creates and removes.

Skipped (saying why) without Ray or without network namespaces (root + iproute2)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from enserve.runtime.ray import ray_available
from enserve.runtime.ray.sandbox import loopback_namespace, namespaces_unavailable, run_in_namespace

HERE = Path(__file__).parent
SIM_PROFILE = {
    "devices": [{"id": "cuda:0", "kind": "cuda", "memory_bytes": 2**34, "compute_units": 100}],
    "members": [{"name": "m"}],
    "entries": [{"member": "m", "device": "cuda:0", "batch_size": b, "share": s,
                 "latency_s": 0.002 * b * 100 / s, "memory_bytes": 2**20}
                for b in (1, 8) for s in (50, 100)],
}


def _skip_reason() -> str | None:
    return ray_available() or namespaces_unavailable()


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))]


MODELS = """
import torch
from torch import nn


def _net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5))


def net_a():
    return _net(1)


def net_b():
    return _net(2)


def net_c():
    return _net(3)
"""


def _tiny_spec(folder: Path) -> Path:
    folder.mkdir()
    (folder / "models.py").write_text(MODELS)
    members = "\n".join(f"  - {{name: {n}, source: 'python:models.py:{n}', weight: {w}}}"
                        for n, w in (("net_a", 1), ("net_b", 2), ("net_c", 3)))
    (folder / "ensemble.yaml").write_text(
        "name: tiny\ninputs: [{name: x, datatype: FP32, shape: [-1, 3, 2, 2]}]\n"
        f"members:\n{members}\ncombiner: weighted_mean_prob\n")
    return folder


def _sim_spec(folder: Path) -> Path:
    folder.mkdir()
    (folder / "profile.json").write_text(json.dumps(SIM_PROFILE))
    members = "\n".join(f"  - {{name: s{i}, source: 'simulate:profile.json#m', num_classes: 6,"
                        f" seed: {i}}}" for i in range(3))
    (folder / "ensemble.yaml").write_text(
        "name: sim\ninputs: [{name: x, datatype: FP32, shape: [-1, 3, 2, 2]}]\n"
        f"members:\n{members}\ncombiner: mean_prob\n")
    return folder


@pytest.mark.timeout(900)
def test_ray_backend_on_a_three_node_cluster(tmp_path: Path) -> None:
    tiny = _tiny_spec(tmp_path / "tiny")
    sim = _sim_spec(tmp_path / "sim")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(HERE.parents[2] / "src"), os.environ.get("PYTHONPATH", "")])}
    with loopback_namespace("enserve-test") as ns:
        done = run_in_namespace(ns, [sys.executable, str(HERE / "ray_driver.py"),
                                     str(tiny), str(sim)], timeout_s=840, env=env)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-5000:]
    r = json.loads(lines[-1][len("RESULT "):])
    print(json.dumps(r, indent=1))
    assert r["instance_nodes"] == ["node-0", "node-1", "node-2"]
    assert r["max_diff"] < 1e-5 and r["max_diff_after"] < 1e-5
    # one node, the default: small batches through the actors' fast lanes (large ones by
    # plain calls), equal to the reference; an actor killed while its lane is in use:
    # nothing hung, lost or wrong, and the restarted actor gets a lane again
    assert r["lane_max_diff"] < 1e-5 and r["lane_max_diff_put"] < 1e-5
    assert r["lane_max_diff_after"] < 1e-5
    assert r["lane_initial"]["lanes"] == 4 and r["lane_initial"]["tasks"] > 0
    assert r["lane_kill_recovered_s"] is not None
    load = r["lane_kill_load"]
    assert load["hung"] == 0 and load["wrong"] == 0 and load["errors"] == 0, load
    assert load["ok"] > 0, load
    assert r["lane_final"]["lanes"] == 4 and r["lane_final"]["tasks"] > r["lane_initial"]["tasks"]
    # three nodes: a lane for the actor on the driver's node (node-0) only
    assert r["lane_three_nodes"]["lanes"] == 1
    # one node: small batches through the compiled graph, equal to the reference; an actor
    # killed under load: nothing lost or wrong, the graph rebuilt over the restarted actor
    assert r["graph_max_diff"] < 1e-5 and r["graph_max_diff_after"] < 1e-5
    assert r["graph_max_diff_put"] < 1e-5  # large batches: an object ref through the graph
    assert r["graph_initial"]["executions"] > 0 and r["graph_initial"]["actors"] == 4
    assert r["graph_kill_recovered_s"] is not None
    load = r["graph_kill_load"]
    assert load["hung"] == 0 and load["wrong"] == 0 and load["errors"] == 0, load
    assert r["graph_final"]["usable"] and r["graph_final"]["builds"] >= 2
    assert r["graph_final"]["executions"] > 0
    # actors on three nodes: plain actor calls (no compiled graph across nodes)
    assert r["graph_three_nodes"] is None
    # an actor killed under load: restarted, nothing lost or wrong
    assert r["actor_kill_recovered_s"] is not None
    assert r["restarts"] >= 1
    for phase in ("actor_kill_load", "node_loss_load", "node_return_load"):
        load = r[phase]
        assert load["hung"] == 0 and load["wrong"] == 0, (phase, load)
        assert load["ok"] > 0, (phase, load)
    assert r["actor_kill_load"]["errors"] == 0, r["actor_kill_load"]
    # a node removed under load: re-planned onto the others, serving again
    assert r["node_loss_whole_s"] is not None
    assert r["nodes_after_loss"] == ["node-0", "node-2"]
    assert r["served_after_loss"] > 5
    assert "node-lost" in r["events"] and "replanned" in r["events"]
    # the node returned: the full plan runs again
    assert r["node_return_whole_s"] is not None
    assert "node-returned" in r["events"]
    assert sorted(d for _, d in r["instances_after_return"]) == [
        "node-0/cpu", "node-1/cpu", "node-1/cpu", "node-2/cpu"]
    # simulated members on fractional (fake) GPUs in per-GPU placement groups
    assert r["sim_gpu_fractions"] == [0.5, 0.5, 1.0]
    assert r["sim_max_diff"] < 1e-5
    # the server's Ray backend, planned by default over the nodes
    assert r["server_backend_diff"] < 1e-5
    assert r["server_backend_nodes"] == ["node-0", "node-1", "node-2"]
