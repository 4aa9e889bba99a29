"""Clusters: several nodes, each with its devices, planned as one pool of devices.

A cluster device's id names its node: `node-2/cpu`, `node-3/cuda:1`. The planner treats
them as any other device (a device with no profile entries of its own borrows those of
the first profile device of its kind), and the Ray backend pins each instance to the node
before the `/`. Pure: nothing here talks to Ray (see `enserve.runtime.ray.nodes`).

Declaring a cluster we don't have (`parse_cluster_decl`)::

    CLUSTER := GROUP ("+" GROUP)*
    GROUP   := [COUNT "x"] "(" DEVICES ")"       DEVICES as in enserve.devices

`4x(8xcuda:80GB)` is four nodes of eight 80 GiB GPUs; `(cpu:64GB:16,4xcuda:16GB)+2x(cpu:8GB:2)`
is one GPU node and two small CPU nodes. Nodes are named `node-0`, `node-1`, ... in order.

Or a JSON file (`load_cluster_file`), a list of nodes or `{"nodes": [...]}`, each node
`{"name": "gpu-a", "devices": "8xcuda:80GB"}` (a declaration) or with `devices` as a list
of device objects (`{"id": "cuda:0", "kind": "cuda", "memory_bytes": ..., "compute_units":
100}`); `resources` (custom resources) and `labels` are optional and kept.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enserve.devices import Device, parse_device_decl

SEPARATOR = "/"
_GROUP = re.compile(r"^(?:(\d+)\s*[xX]\s*)?\((.*)\)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


@dataclass(frozen=True)
class Node:
    """One machine of a cluster: its name, its devices (local ids such as `cuda:1`), custom
    resources and labels (kept for display and for the Ray backend)."""

    name: str
    devices: tuple[Device, ...]
    resources: Mapping[str, float] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"node name {self.name!r}: use letters, digits, '-', '_', '.', ':'")
        if not self.devices:
            raise ValueError(f"node {self.name}: has no devices")
        ids = [d.id for d in self.devices]
        if len(set(ids)) != len(ids):
            raise ValueError(f"node {self.name}: device ids repeat: {ids}")


def qualify(node: str, device_id: str) -> str:
    """`node-2`, `cuda:1` -> `node-2/cuda:1`."""
    return f"{node}{SEPARATOR}{device_id}"


def split_device_id(device_id: str) -> tuple[str | None, str]:
    """`node-2/cuda:1` -> (`node-2`, `cuda:1`); a plain `cuda:1` -> (None, `cuda:1`)."""
    node, sep, local = device_id.rpartition(SEPARATOR)
    return (node, local) if sep else (None, device_id)


def node_of(device_id: str) -> str | None:
    return split_device_id(device_id)[0]


def gpu_index(local_id: str) -> int:
    """`cuda:3` -> 3, `cuda` -> 0."""
    _, _, index = local_id.partition(":")
    return int(index) if index.isdigit() else 0


def cluster_devices(nodes: Sequence[Node]) -> list[Device]:
    """Every device of every node, with node-qualified ids, nodes in order."""
    names = [n.name for n in nodes]
    if len(set(names)) != len(names):
        raise ValueError(f"node names repeat: {names}")
    return [Device(qualify(n.name, d.id), d.kind, d.memory_bytes, d.compute_units)
            for n in nodes for d in n.devices]


def nodes_of_devices(devices: Sequence[Device]) -> dict[str, list[Device]]:
    """Node name -> its devices (ids stay qualified); devices without a node under ''."""
    out: dict[str, list[Device]] = {}
    for d in devices:
        out.setdefault(node_of(d.id) or "", []).append(d)
    return out


def parse_cluster_decl(text: str) -> list[Node]:
    """`4x(8xcuda:80GB)` or `(cpu:64GB:16,2xcuda:80GB)+2x(cpu:8GB:2)` -> nodes `node-0`..."""
    groups = [g.strip() for g in text.split("+")]
    if not any(groups):
        raise ValueError("empty cluster declaration")
    nodes: list[Node] = []
    for group in groups:
        match = _GROUP.match(group)
        if match is None:
            raise ValueError(f"cluster declaration {group!r}: expected [COUNTx](DEVICES), "
                             "e.g. 4x(8xcuda:80GB)")
        count_text, inner = match.groups()
        count = int(count_text) if count_text else 1
        if count < 1:
            raise ValueError(f"cluster declaration {group!r}: count must be at least 1")
        devices = tuple(parse_device_decl(inner))
        for _ in range(count):
            nodes.append(Node(f"node-{len(nodes)}", devices))
    return nodes


def is_cluster_decl(text: str) -> bool:
    return "(" in text


def nodes_from_json(data: Any, where: str) -> list[Node]:
    """Nodes from parsed JSON (see the module docstring); ValueError names `where` and field."""
    raw = data.get("nodes") if isinstance(data, Mapping) else data
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{where}: expected a non-empty list of nodes (or {{\"nodes\": [...]}})")
    nodes = []
    for index, item in enumerate(raw):
        at = f"{where}: nodes.{index}"
        if not isinstance(item, Mapping):
            raise ValueError(f"{at}: expected an object")
        name = str(item.get("name", f"node-{index}"))
        spec = item.get("devices")
        try:
            if isinstance(spec, str):
                devices = tuple(parse_device_decl(spec))
            elif isinstance(spec, list):
                devices = tuple(Device.from_dict(_mapping(d, f"{at}.devices")) for d in spec)
            else:
                raise ValueError("field 'devices' must be a declaration string or a list")
            resources = {str(k): float(v) for k, v in dict(item.get("resources") or {}).items()}
            labels = {str(k): str(v) for k, v in dict(item.get("labels") or {}).items()}
            nodes.append(Node(name, devices, resources, labels))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{at}: {exc}") from None
    cluster_devices(nodes)  # names unique
    return nodes


def load_cluster_file(path: str | Path) -> list[Node]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: cluster file not found") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    return nodes_from_json(data, str(path))


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected a device object")
    return value
