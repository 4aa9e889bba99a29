"""The compute-heavier demo ensemble: digits upscaled to 32x32 and randomly warped.

scikit-learn's 8x8 digits (shipped with the package, no download) are split 60/20/20
(train / calibration / held-out test, stratified), upscaled to 32x32 and, per split,
warped several times with seeded random affine maps (rotation, scale, shift) plus pixel
noise. The calibration split is what `enserve calibrate` chooses cascade thresholds on;
the test split is only ever used to measure. Everything is deterministic on CPU.

`python -m enserve.demo.digits32` retrains the members of `examples/digits32/` (about a
minute on two cores) and writes the calibration and test arrays beside the spec.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from enserve.members.loaders import build_architecture
from enserve.members.preprocess import Preprocessor
from enserve.members.trust import add_trusted
from enserve.reference import ReferenceExecutor
from enserve.spec import EnsembleSpec, load_spec

DEFAULT_SPEC = Path(__file__).resolve().parents[3] / "examples" / "digits32" / "ensemble.yaml"
# The shipped example's own factories are trusted code (and only that file: see members/trust.py).
add_trusted([str(DEFAULT_SPEC.parent / "models.py")])
SIZE = 32
# Warped copies per original image, per split.
COPIES = {"train": 3, "calibration": 8, "test": 16}
# (epochs, seed) per member, chosen once; the heavy members need few epochs.
TRAINING = {"mlp": (15, 0), "small": (15, 0), "wide": (3, 0), "deep": (3, 0)}


def _warp(images: np.ndarray, copies: int, seed: int) -> np.ndarray:
    """`copies` random affine warps of each 8x8 image at 32x32, float32 [N*copies, 1, 32, 32]."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(images).repeat_interleave(copies, dim=0)
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    n = x.shape[0]
    angle = (torch.rand(n, generator=gen) - 0.5) * math.radians(30)
    scale = 0.9 + 0.2 * torch.rand(n, generator=gen)
    shift = (torch.rand(n, 2, generator=gen) - 0.5) * 0.2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    warped = warped + 0.05 * torch.randn(warped.shape, generator=gen)
    return warped.clamp(0.0, 1.0).numpy().astype(np.float32)


def digits32_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(images, labels) for the train, calibration and test splits."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = data.target.astype(np.int64)
    x_tr, x_rest, y_tr, y_rest = train_test_split(x, y, test_size=0.4, random_state=0, stratify=y)
    x_cal, x_te, y_cal, y_te = train_test_split(x_rest, y_rest, test_size=0.5, random_state=0,
                                                stratify=y_rest)
    out = {}
    for seed, (name, (images, labels)) in enumerate(
            {"train": (x_tr, y_tr), "calibration": (x_cal, y_cal), "test": (x_te, y_te)}.items()):
        copies = COPIES[name]
        out[name] = (_warp(images, copies, seed), np.repeat(labels, copies))
    return out


def _train_one(module: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, seed: int,
               batch: int = 32) -> nn.Module:
    """Adam with cosine decay, seeded; deterministic on CPU."""
    torch.manual_seed(seed)
    gen = np.random.default_rng(seed)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    steps = epochs * math.ceil(len(inputs) / batch)
    opt = torch.optim.Adam(module.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    module.train()
    for _ in range(epochs):
        order = torch.from_numpy(gen.permutation(len(inputs)))
        for start in range(0, len(inputs), batch):
            idx = order[start:start + batch]
            opt.zero_grad()
            loss_fn(module(inputs[idx]), targets[idx]).backward()
            opt.step()
            sched.step()
    return module.eval()


def train(spec_path: str | Path = DEFAULT_SPEC, threads: int = 1) -> dict[str, float]:
    """Train every member of the spec on the train split; returns seconds per member."""
    from safetensors.torch import save_file

    spec = load_spec(spec_path)
    x, y = digits32_splits()["train"]
    timings: dict[str, float] = {}
    torch.set_num_threads(threads)
    for i, member in enumerate(spec.members):
        if member.kind != "safetensors" or not member.architecture:
            continue
        start = time.perf_counter()
        module = build_architecture(spec, member, member.architecture, "architecture")
        epochs, seed = TRAINING.get(member.name, (4, i))
        _train_one(module, Preprocessor(member.preprocess)(x), y, epochs, seed)
        target = (spec.base_dir / member.target).resolve()
        if not target.is_relative_to(spec.base_dir):
            raise ValueError(f"{member.target} escapes {spec.base_dir}")
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(target))
        timings[member.name] = time.perf_counter() - start
        print(f"  {member.name}: {timings[member.name]:.1f} s", flush=True)
    return timings


def write_data(folder: str | Path) -> dict[str, Path]:
    """Write `<split>_inputs.npy` / `<split>_labels.npy` for the calibration and test splits."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, (x, y) in digits32_splits().items():
        if name == "train":
            continue
        np.save(folder / f"{name}_inputs.npy", x)
        np.save(folder / f"{name}_labels.npy", y)
        written[name] = folder / f"{name}_inputs.npy"
    return written


def evaluate(spec: EnsembleSpec | str | Path = DEFAULT_SPEC,
             split: str = "test") -> dict[str, float]:
    """Top-1 accuracy of each member and of the ensemble on a split."""
    if not isinstance(spec, EnsembleSpec):
        spec = load_spec(spec)
    x, y = digits32_splits()[split]
    result = ReferenceExecutor(spec).infer(x)
    acc = {n: float((lg.argmax(-1) == y).mean()) for n, lg in result.member_logits.items()}
    acc["ensemble"] = float((result.probabilities.argmax(-1) == y).mean())
    return acc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m enserve.demo.digits32",
                                     description="Retrain the digits32 demo and write its data.")
    parser.add_argument("--spec", default=str(DEFAULT_SPEC))
    parser.add_argument("--data", default=None,
                        help="folder for calibration/test arrays (default: the spec's folder)")
    parser.add_argument("--no-train", action="store_true", help="only write the data arrays")
    args = parser.parse_args(argv)
    spec_path = Path(args.spec)
    if not args.no_train:
        start = time.perf_counter()
        timings = train(spec_path)
        print(f"trained {', '.join(f'{n} {s:.1f} s' for n, s in timings.items())} "
              f"(total {time.perf_counter() - start:.1f} s)")
    folder = Path(args.data) if args.data else (spec_path if spec_path.is_dir() else spec_path.parent)
    for name, path in write_data(folder).items():
        print(f"{name}: {path}")
    for split in ("calibration", "test"):
        acc = evaluate(spec_path, split)
        print(f"{split} accuracy: " + ", ".join(f"{n} {v:.2%}" for n, v in acc.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
