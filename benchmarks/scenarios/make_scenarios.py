"""Write the planner scenarios for hardware we can't run here (see README.md).

    python benchmarks/scenarios/make_scenarios.py            # rewrites the JSON files here

Deterministic: the heavy scenarios are computed from the model table below, the random
small ones from fixed seeds (`enserve.plan.scenarios.random_profile`).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from enserve.formats.profile import (
    Profile,
    ProfileDevice,
    ProfileEntry,
    ProfileMember,
    save_profile,
)
from enserve.plan.scenarios import GIB, GPU_SHARES, MIB, gpu_latency, random_profile

HERE = Path(__file__).resolve().parent

# name: (parameters, torchvision "GFLOPS" (multiply-accumulates per image, at the model's
# default input size), family efficiency guess, activation MiB per image guess,
# launch overhead per batch in ms guess)
MODELS: dict[str, tuple[int, float, float, float, float]] = {
    "resnet101": (44_549_160, 7.80, 1.00, 40, 4.0),
    "resnet152": (60_192_808, 11.51, 1.00, 45, 6.0),
    "wide_resnet50_2": (68_883_240, 11.40, 1.00, 55, 2.5),
    "resnext101_32x8d": (88_791_336, 16.41, 0.85, 70, 4.5),
    "vgg16": (138_357_544, 15.47, 1.10, 60, 1.0),
    "vgg19": (143_667_240, 19.63, 1.10, 65, 1.2),
    "densenet161": (28_681_000, 7.73, 0.55, 90, 7.0),
    "densenet201": (20_013_928, 4.29, 0.55, 70, 8.0),
    "inception_v3": (27_161_264, 5.71, 0.80, 45, 4.0),
    "regnet_y_16gf": (83_590_140, 15.91, 0.80, 60, 3.5),
    "vit_b_16": (86_567_656, 17.56, 1.10, 25, 2.0),
    "convnext_base": (88_591_464, 15.36, 0.70, 50, 3.0),
}
GPU_MEMORY = 16 * GIB  # a 16 GB GPU (V100-16GB class)
GPU_RATE_GFLOPS = 8600.0  # fp32 FLOP/s PyTorch eager sustains at large batch (assumed)
CONTEXT_BYTES = 500 * MIB  # CUDA context + cuDNN/cuBLAS workspace per instance (process)
BATCHES = (1, 4, 8, 16, 32, 64)
SMALL_EXAMPLES = (0, 1, 2)  # seeds of the random small scenarios written as examples


def model_entries(name: str, device: str) -> list[ProfileEntry]:
    params, gmacs, efficiency, act_mib, overhead_ms = MODELS[name]
    gflop = 2.0 * gmacs  # FLOPs = 2 x multiply-accumulates
    half_batch = min(8.0, max(1.0, 3.0 * math.sqrt(16.4 / gflop)))
    entries = []
    for batch in BATCHES:
        memory = CONTEXT_BYTES + 4 * params + int(batch * act_mib * MIB)
        for share in GPU_SHARES:
            latency = gpu_latency(gflop, batch, share, overhead_s=overhead_ms / 1000,
                                  half_batch=half_batch,
                                  rate_gflops=GPU_RATE_GFLOPS * efficiency)
            entries.append(ProfileEntry(member=name, device=device, batch_size=batch,
                                        share=share, latency_s=round(latency, 6),
                                        memory_bytes=memory))
    return entries


def gpu_profile(names: list[str], n_gpus: int, note: str) -> Profile:
    devices = [ProfileDevice(id=f"cuda:{i}", kind="cuda", memory_bytes=GPU_MEMORY,
                             compute_units=100) for i in range(n_gpus)]
    members = [ProfileMember(name=n, param_bytes=4 * MODELS[n][0]) for n in names]
    entries = [e for d in devices for n in names for e in model_entries(n, d.id)]
    profile = Profile(devices=devices, members=members, entries=entries, combine_s=0.0002)
    return profile.model_copy(update={"note": note})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    note = ("ESTIMATES, not measurements: analytic GPU latency model with torchvision "
            "parameter/FLOP counts; see benchmarks/scenarios/README.md")
    save_profile(gpu_profile(list(MODELS), 4, note), args.out / "pochelu_12x4.json")
    save_profile(gpu_profile(["resnet152"], 16, note), args.out / "pochelu_1x16.json")
    for seed in SMALL_EXAMPLES:
        save_profile(random_profile(seed), args.out / f"random_small_{seed:02d}.json")
    print(f"wrote scenarios to {args.out}")


if __name__ == "__main__":
    main()
