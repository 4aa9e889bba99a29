"""Tiny models with BatchNorm, saved as an ensemble folder for fusion and swap tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file
from torch import nn

NETS_PY = '''
from torch import nn


def small_cnn():
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
'''


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))


def randomized(module: nn.Module, seed: int) -> nn.Module:
    """Random weights AND random BatchNorm statistics, so folding is really exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=gen) * 0.5)
    return module.eval()


def write_torch_ensemble(folder: Path, combiner: str = "mean_prob", weights: list[float] | None = None,
                         same_arch_only: bool = False) -> Path:
    """Three small CNNs (two share preprocessing) and an MLP with resize; returns the spec path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "nets.py").write_text(NETS_PY)
    members: list[dict[str, Any]] = []
    for i, name in enumerate(["cnn_a", "cnn_b", "cnn_c"]):
        save_file(randomized(small_cnn(), 10 + i).state_dict(), str(folder / f"{name}.safetensors"))
        members.append({"name": name, "source": f"safetensors:{name}.safetensors",
                        "architecture": "python:nets.py:small_cnn"})
    members[2]["preprocess"] = {"scale": 0.5, "mean": [0.1], "std": [2.0]}
    if not same_arch_only:
        torch.save(randomized(mlp(), 20).state_dict(), str(folder / "mlp.pt"))
        members.append({"name": "mlp", "source": "python:nets.py:mlp", "weights": "mlp.pt",
                        "preprocess": {"resize": [6, 6], "mean": [0.2], "std": [0.7]}})
    else:
        members = members[:2]
    spec: dict[str, Any] = {
        "name": "tiny", "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}],
        "members": members, "combiner": combiner,
    }
    if weights is not None:
        spec["weights"] = weights[: len(members)]
    path = folder / "ensemble.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def write_onnx_ensemble(folder: Path, combiner: str = "mean_prob", weights: list[float] | None = None) -> Path:
    """Three ONNX members: a new-exporter one, two legacy (opset 13) ones, one with preprocessing."""
    import warnings

    folder.mkdir(parents=True, exist_ok=True)
    x = torch.randn(2, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, name in enumerate(["ox", "oy", "oz"]):
            model = randomized(small_cnn(), 30 + i)
            torch.onnx.export(model, (x,), str(folder / f"{name}.onnx"), dynamo=False, opset_version=13 + 4 * i,
                              input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}})
    members = [
        {"name": "ox", "source": "onnx:ox.onnx"},
        {"name": "oy", "source": "onnx:oy.onnx", "preprocess": {"scale": 2.0, "mean": [0.3], "std": [1.5]}},
        {"name": "oz", "source": "onnx:oz.onnx", "preprocess": {"resize": [12, 12]}},
    ]
    spec: dict[str, Any] = {
        "name": "tiny_onnx", "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}],
        "members": members, "combiner": combiner,
    }
    if weights is not None:
        spec["weights"] = weights
    path = folder / "ensemble.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
