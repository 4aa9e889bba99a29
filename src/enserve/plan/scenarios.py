"""Synthetic profiles for planning on hardware we don't have, and random test scenarios.

The latency shapes are simple analytic models, not measurements:

GPU, batch b at MPS share q (percent): a batch can keep a fraction u(b) = b / (b + b_half)
of the GPU busy; below that share it slows proportionally (the GSLICE / ESEN "knee" shape):

    l(b, q) = overhead + flop * (b + b_half) / rate * max(1, u(b) / (q / 100))

CPU, batch b on s cores, with a serial fraction f (Amdahl):

    l(b, s) = overhead + flop * b / core_rate * (f + (1 - f) / s)

Memory of one instance: runtime context + weights + b x activation bytes per sample.
"""

from __future__ import annotations

import numpy as np

from enserve.formats.profile import Profile, ProfileDevice, ProfileEntry, ProfileMember

GIB = 2**30
MIB = 2**20
GPU_SHARES = (25, 50, 100)
FINE_GPU_SHARES = (10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
SMALL_BATCHES = (1, 4, 16)


def gpu_latency(gflop: float, batch: int, share: float, *, overhead_s: float, half_batch: float,
                rate_gflops: float) -> float:
    usable = batch / (batch + half_batch)
    slowdown = max(1.0, usable / (share / 100.0))
    return overhead_s + gflop * (batch + half_batch) / rate_gflops * slowdown


def cpu_latency(gflop: float, batch: int, cores: float, *, overhead_s: float, serial: float,
                core_gflops: float) -> float:
    return overhead_s + gflop * batch / core_gflops * (serial + (1.0 - serial) / cores)


def random_profile(seed: int, max_members: int = 6, max_devices: int = 3,
                   gpu_shares: tuple[int, ...] = GPU_SHARES) -> Profile:
    """A small random ensemble on a few CPUs / GPUs (seeded, reproducible).

    `gpu_shares`: the MPS percentages profiled per GPU (`FINE_GPU_SHARES` for a finer grid,
    where choosing shares matters most)."""
    rng = np.random.default_rng(seed)
    n_members = int(rng.integers(2, max_members + 1))
    n_devices = int(rng.integers(1, max_devices + 1))
    devices: list[ProfileDevice] = []
    n_gpu = n_cpu = 0
    for _ in range(n_devices):
        if rng.random() < 0.6:
            devices.append(ProfileDevice(id=f"cuda:{n_gpu}", kind="cuda",
                                         memory_bytes=int(rng.choice([2, 3, 4, 6])) * GIB,
                                         compute_units=100))
            n_gpu += 1
        else:
            devices.append(ProfileDevice(id="cpu" if n_cpu == 0 else f"cpu:{n_cpu}", kind="cpu",
                                         memory_bytes=int(rng.choice([1, 2, 4])) * GIB,
                                         compute_units=int(rng.choice([2, 4, 8]))))
            n_cpu += 1
    gpu_rate = float(rng.uniform(4000, 12000))  # GFLOP/s a GPU sustains on these models
    cpu_rate = float(rng.uniform(60, 150))  # GFLOP/s per core
    members: list[ProfileMember] = []
    entries: list[ProfileEntry] = []
    for m in range(n_members):
        name = f"m{m}"
        gflop = float(np.exp(rng.uniform(np.log(0.5), np.log(20.0))))
        params = int(np.exp(rng.uniform(np.log(10), np.log(500))) * MIB)
        act = float(rng.uniform(5, 60)) * MIB
        half = float(rng.uniform(2, 16))
        serial = float(rng.uniform(0.05, 0.4))
        members.append(ProfileMember(name=name, param_bytes=params))
        variants: list[tuple[str | None, float, float]] = [(None, 1.0, 1.0)]
        if rng.random() < 0.5:
            variants.append(("fast", float(rng.uniform(0.4, 0.9)), float(rng.uniform(0.8, 1.3))))
        for dev in devices:
            for variant, speed, mem_factor in variants:
                for batch in SMALL_BATCHES:
                    if dev.kind == "cuda":
                        shares = list(gpu_shares)
                        context = 400 * MIB
                    else:
                        shares = [s for s in (1, 2, 4, 8) if s <= dev.compute_units]
                        context = 40 * MIB
                    memory = int((context + params + batch * act) * mem_factor)
                    for share in shares:
                        if dev.kind == "cuda":
                            lat = gpu_latency(gflop, batch, share, overhead_s=0.002,
                                              half_batch=half, rate_gflops=gpu_rate)
                        else:
                            lat = cpu_latency(gflop, batch, share, overhead_s=0.001,
                                              serial=serial, core_gflops=cpu_rate)
                        entries.append(ProfileEntry(member=name, device=dev.id, batch_size=batch,
                                                    share=share, latency_s=lat * speed,
                                                    memory_bytes=memory, variant=variant))
    _make_roomy(devices, entries, members)
    profile = Profile(devices=devices, members=members, entries=entries, combine_s=0.0005)
    extra = {"generator": f"enserve.plan.scenarios.random_profile(seed={seed}"
                       + ("" if gpu_shares == GPU_SHARES else f", gpu_shares={gpu_shares}") + ")"}
    return profile.model_copy(update=extra)


def _make_roomy(devices: list[ProfileDevice], entries: list[ProfileEntry],
                members: list[ProfileMember]) -> None:
    """Grow device memory (1 GiB steps) until the members' smallest footprints fit with
    room to spare, so every random scenario has a plan."""
    smallest = {m.name: min(e.memory_bytes for e in entries if e.member == m.name)
                for m in members}
    while (sum(d.memory_bytes for d in devices) < 1.5 * sum(smallest.values())
           or max(d.memory_bytes for d in devices) < 2 * max(smallest.values())):
        roomiest = min(devices, key=lambda d: d.memory_bytes)
        roomiest.memory_bytes += GIB
