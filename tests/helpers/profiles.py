"""Helpers to write small profiles by hand."""

from __future__ import annotations

from typing import Any

from enserve.formats.profile import Profile, profile_from_dict

GB = 2**30


def gpu(i: int, memory_gb: float = 16, units: float = 100) -> dict[str, Any]:
    return {"id": f"cuda:{i}", "kind": "cuda", "memory_bytes": int(memory_gb * GB),
            "compute_units": units}


def cpu(cores: int, memory_gb: float = 8, name: str = "cpu") -> dict[str, Any]:
    return {"id": name, "kind": "cpu", "memory_bytes": int(memory_gb * GB), "compute_units": cores}


def entry(member: str, device: str, batch: int, share: float, latency: float,
          memory_gb: float, variant: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"member": member, "device": device, "batch_size": batch,
                           "share": share, "latency_s": latency,
                           "memory_bytes": int(memory_gb * GB)}
    if variant is not None:
        out["variant"] = variant
    return out


def profile(devices: list[dict[str, Any]], entries: list[dict[str, Any]],
            combine_s: float = 0.0) -> Profile:
    members = list(dict.fromkeys(e["member"] for e in entries))
    return profile_from_dict({"devices": devices, "members": [{"name": m} for m in members],
                              "entries": entries, "combine_s": combine_s})


def same_on_devices(member: str, devices: list[str], rows: list[tuple[int, float, float, float]],
                    variant: str | None = None) -> list[dict[str, Any]]:
    """The same (batch, share, latency, memory GB) rows on several devices."""
    return [entry(member, d, b, s, lat, mem, variant) for d in devices for b, s, lat, mem in rows]
