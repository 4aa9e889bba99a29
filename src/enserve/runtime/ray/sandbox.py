"""Run Ray locked down on one machine: inside a loopback-only network namespace, and a
small local multi-node cluster (`ray.cluster_utils.Cluster`) for tests and benchmarks.

Ray binds internal ports on every interface (or the node's IP) even when told 127.0.0.1;
inside a fresh network namespace the only interface is `lo`, so nothing is reachable from
outside. Needs root (or CAP_SYS_ADMIN) and iproute2: `namespaces_unavailable()` says why not.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

IP = "ip"
SMALL_OBJECT_STORE = 80 * 2**20


def namespaces_unavailable() -> str | None:
    """None when loopback-only network namespaces can be made here, else the reason."""
    if shutil.which(IP) is None:
        return "iproute2's `ip` is not installed"
    if os.geteuid() != 0:
        return "creating a network namespace needs root (ip netns add)"
    name = f"enserve-probe-{uuid.uuid4().hex[:8]}"
    made = subprocess.run([IP, "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip() or made.returncode}"
    subprocess.run([IP, "netns", "del", name], capture_output=True)
    return None


@contextlib.contextmanager
def loopback_namespace(prefix: str = "enserve") -> Iterator[str]:
    """A new network namespace with only `lo` up; on exit every process still inside it
    (ours: Ray's raylets, GCS, workers) is killed and the namespace deleted."""
    name = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subprocess.run([IP, "netns", "add", name], check=True, capture_output=True)
    try:
        subprocess.run([IP, "netns", "exec", name, IP, "link", "set", "lo", "up"], check=True,
                       capture_output=True)
        yield name
    finally:
        kill_namespace_processes(name)
        subprocess.run([IP, "netns", "del", name], capture_output=True)


def namespace_pids(name: str) -> list[int]:
    out = subprocess.run([IP, "netns", "pids", name], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split() if p.strip().isdigit()]


def kill_namespace_processes(name: str, grace_s: float = 3.0) -> list[int]:
    """SIGTERM, then SIGKILL, every process in namespace `name`; returns their pids."""
    pids = namespace_pids(name)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and namespace_pids(name):
            time.sleep(0.1)
        pids = namespace_pids(name)
        if not pids:
            break
    return pids


def exit_on_sigterm() -> None:
    """Turn SIGTERM (e.g. from `timeout`) into SystemExit, so `finally` blocks and context
    managers (cluster shutdown, namespace removal) run."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def call_in_namespace(name: str, argv: Sequence[str], env: Mapping[str, str] | None = None
                      ) -> int:
    """Run `argv` inside namespace `name` with output passed through; if this process is
    interrupted, the child gets SIGTERM (and 20 s to shut its cluster down) first."""
    child = subprocess.Popen([IP, "netns", "exec", name, *argv],
                             env=dict(env) if env is not None else None)
    try:
        return child.wait()
    except BaseException:
        child.terminate()
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
        raise


def run_in_namespace(name: str, argv: Sequence[str], timeout_s: float,
                     env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `argv` inside namespace `name` (output captured); TimeoutExpired past timeout."""
    return subprocess.run([IP, "netns", "exec", name, *argv], capture_output=True, text=True,
                          timeout=timeout_s, env=dict(env) if env is not None else None)


@dataclass
class NodeSpec:
    """One node of a local test cluster."""

    name: str
    num_cpus: float = 1
    num_gpus: float = 0
    resources: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)

    def args(self) -> dict[str, Any]:
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus,
                "resources": dict(self.resources),
                "labels": {"enserve-node": self.name, **self.labels},
                "object_store_memory": SMALL_OBJECT_STORE,
                "node_ip_address": "127.0.0.1"}


def local_cluster(nodes: Sequence[NodeSpec], health_check_ms: int = 500) -> Any:
    """Start a Ray cluster of `nodes` on this machine (the first is the head; no dashboard,
    small object stores, fast node-failure detection) and connect this process to it.
    Call `cluster.shutdown()` (and `ray.shutdown()`) when done."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "300")  # a busy machine starts slowly
    import ray
    from ray.cluster_utils import Cluster

    head = {**nodes[0].args(), "include_dashboard": False,
            "_system_config": {"health_check_period_ms": health_check_ms,
                               "health_check_failure_threshold": 4,
                               "health_check_timeout_ms": health_check_ms}}
    cluster = Cluster(initialize_head=True, connect=False, head_node_args=head)
    for spec in nodes[1:]:
        cluster.add_node(**spec.args())
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    return cluster


def add_node(cluster: Any, spec: NodeSpec) -> Any:
    node = cluster.add_node(**spec.args())
    cluster.wait_for_nodes()
    return node
