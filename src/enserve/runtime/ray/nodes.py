"""A Ray cluster's nodes as enserve nodes and devices.

`cluster_nodes(raw)` is pure (it reads the dicts `ray.nodes()` returns), so naming and
device detection are tested without Ray; `connect` and `live_nodes` talk to Ray.

Naming: a node started with the label `enserve-node=NAME` (`ray start --labels
enserve-node=gpu-a`) is called NAME; the others are `node-0`, `node-1`, ... with the head
first, then by Ray node id. Devices: `cpu` (the node's CPU resource as cores, its `memory`
resource as bytes) and `cuda:0`..`cuda:N-1` for its `GPU` resource, each with the memory of
the label `enserve-gpu-memory` (e.g. `80GB`; Ray does not report GPU memory), else
`DEFAULT_GPU_MEMORY`. Custom resources (anything but CPU, GPU, memory, object store and
Ray's own `node:*` / `accelerator_type:*` markers) are kept on the node.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from enserve.cluster import Node
from enserve.devices import GPU_COMPUTE_UNITS, Device, parse_memory

NAME_LABEL = "enserve-node"
GPU_MEMORY_LABEL = "enserve-gpu-memory"
NODE_ID_LABEL = "ray.io/node-id"
DEFAULT_GPU_MEMORY = 16 * 2**30
HEAD_RESOURCE = "node:__internal_head__"
_BUILTIN = {"CPU", "GPU", "memory", "object_store_memory"}


@dataclass(frozen=True)
class LiveNode:
    """An alive Ray node: its enserve `Node` and Ray's node id."""

    node: Node
    node_id: str
    is_head: bool

    @property
    def name(self) -> str:
        return self.node.name


def _custom(resources: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in resources.items()
            if k not in _BUILTIN and not k.startswith(("node:", "accelerator_type:"))}


def node_devices(resources: Mapping[str, float], labels: Mapping[str, str]) -> tuple[Device, ...]:
    """The devices of one Ray node from its resources and labels."""
    cpus = float(resources.get("CPU", 0.0))
    memory = int(resources.get("memory", 0)) or 2**30
    devices = [Device("cpu", "cpu", memory, cpus)] if cpus > 0 else []
    gpu_memory = DEFAULT_GPU_MEMORY
    if GPU_MEMORY_LABEL in labels:
        gpu_memory = parse_memory(labels[GPU_MEMORY_LABEL])
    for index in range(int(float(resources.get("GPU", 0.0)))):
        devices.append(Device(f"cuda:{index}", "cuda", gpu_memory, GPU_COMPUTE_UNITS))
    return tuple(devices)


def cluster_nodes(raw: Sequence[Mapping[str, Any]]) -> list[LiveNode]:
    """Alive nodes of `ray.nodes()` output, named (see the module docstring), in name order
    for unlabelled nodes (head first) followed by labelled ones in label order."""
    alive = [n for n in raw if n.get("Alive", n.get("alive", False))]
    alive.sort(key=lambda n: (HEAD_RESOURCE not in n.get("Resources", {}), str(n["NodeID"])))
    out: list[LiveNode] = []
    taken = {str(n.get("Labels", {}).get(NAME_LABEL)) for n in alive
             if n.get("Labels", {}).get(NAME_LABEL)}
    counter = 0
    for n in alive:
        resources = n.get("Resources", {}) or {}
        labels = {str(k): str(v) for k, v in (n.get("Labels") or {}).items()}
        devices = node_devices(resources, labels)
        if not devices:
            continue  # a node with no CPU or GPU to offer (e.g. a driver-only head)
        name = labels.get(NAME_LABEL)
        if not name:
            while f"node-{counter}" in taken:
                counter += 1
            name = f"node-{counter}"
            counter += 1
        custom = _custom(resources)
        out.append(LiveNode(Node(name, devices, custom, labels), str(n["NodeID"]),
                            HEAD_RESOURCE in resources))
    return out


def connect(address: str | None = None, *, quiet: bool = True) -> None:
    """Connect this process to a Ray cluster (once). `address`: `ray://HOST:PORT` (Ray
    Client), `HOST:PORT` (the head's GCS), or None / "auto" (the cluster running on this
    machine, or `RAY_ADDRESS`). Never starts a cluster: start one with `ray start --head`."""
    import ray

    if ray.is_initialized():
        return
    target = "auto" if address in (None, "", "auto", "ray") else address
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address=target, log_to_driver=not quiet, logging_level=logging.WARNING,
             configure_logging=True)


def live_nodes() -> list[LiveNode]:
    import ray

    return cluster_nodes(ray.nodes())


def devices_from_ray(address: str | None = None) -> list[Device]:
    """`--devices ray` / `ray://ADDRESS`: the connected cluster's devices, node-qualified."""
    from enserve.cluster import cluster_devices

    connect(address)
    return cluster_devices([n.node for n in live_nodes()])
