"""Which devices, shares and variants a profiling run covers; argument checks."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from enserve.devices import GPU_COMPUTE_UNITS, Device, detect_devices
from enserve.errors import ProfileError
from enserve.spec import MemberSpec
from enserve.variants.names import VARIANTS, available_variants, default_variant

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32)
DEFAULT_GPU_SHARES = (25.0, 50.0, 100.0)


def mps_running() -> bool:
    """Whether a CUDA MPS control daemon answers on its pipe directory."""
    pipe_dir = Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps"))
    return (pipe_dir / "control").exists()


def default_cpu_shares(cores: int) -> list[float]:
    """Every core count up to 4; beyond that powers of two and the full count."""
    if cores <= 4:
        return [float(n) for n in range(1, cores + 1)]
    counts = {1 << k for k in range(cores.bit_length()) if (1 << k) <= cores} | {cores}
    return [float(n) for n in sorted(counts)]


def select_devices(devices: Sequence[Device | str] | None) -> list[Device]:
    has_gpu_node = any(Path("/dev").glob("nvidia[0-9]*"))
    detected = detect_devices(include_cuda=has_gpu_node)
    if devices is None:
        return detected
    by_id = {d.id: d for d in detected}
    chosen: list[Device] = []
    for item in devices:
        if isinstance(item, Device):
            item = item.id
        if item not in by_id:
            raise ProfileError(
                f"--devices: '{item}' is not a device on this machine "
                f"(found: {', '.join(by_id)}); profile hardware you don't have by writing "
                "a profile file by hand (see docs/profiling.md)"
            )
        chosen.append(by_id[item])
    return chosen


def shares_for(device: Device, shares: Sequence[float] | Mapping[str, Sequence[float]] | None,
                notes: list[str]) -> list[float]:
    if isinstance(shares, Mapping):
        wanted = shares.get(device.id, shares.get(device.kind))
    else:
        wanted = shares if device.kind == "cpu" else None
    if device.kind == "cpu":
        cores = int(device.compute_units)
        if wanted is None:
            return default_cpu_shares(cores)
        for s in wanted:
            if s != int(s) or not 1 <= s <= cores:
                raise ProfileError(
                    f"--shares: {s:g} is not a whole number of cores between 1 and {cores} "
                    f"(the cores usable on {device.id})"
                )
        return sorted({float(s) for s in wanted})
    if not mps_running():
        notes.append(f"{device.id}: no CUDA MPS daemon found; profiled the full device "
                     "(share 100) only")
        return [GPU_COMPUTE_UNITS]
    chosen = sorted({float(s) for s in (wanted or DEFAULT_GPU_SHARES)})
    bad = [s for s in chosen if not 0 < s <= GPU_COMPUTE_UNITS]
    if bad:
        raise ProfileError(f"--shares: GPU shares are percentages in (0, 100]; got {bad[0]:g}")
    return chosen


def variants_for(member: MemberSpec, variants: Sequence[str] | None) -> list[str]:
    if variants is None:
        return [default_variant(member)]
    possible = available_variants(member, include_opt_in=True)
    return [v for v in variants if v in possible]


def check_arguments(variants: Sequence[str] | None, batch_sizes: Sequence[int],
                 repeats: int, warmup: int) -> None:
    for v in variants or ():
        if v not in VARIANTS:
            raise ProfileError(f"--variants: unknown variant '{v}' (known: {', '.join(VARIANTS)})")
    if not batch_sizes:
        raise ProfileError("--batch-sizes: give at least one batch size")
    for b in batch_sizes:
        if int(b) != b or b < 1:
            raise ProfileError(f"--batch-sizes: {b} is not a positive whole number")
    if repeats < 1 or warmup < 0:
        raise ProfileError(f"repeats must be >= 1 and warmup >= 0 (got {repeats}, {warmup})")
