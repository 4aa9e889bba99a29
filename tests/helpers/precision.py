"""Tiny members for the reduced-precision tests: `benign` (int8 and bf16 barely change its
answers) and `outlier` (int8 breaks it, and it decides the ensemble's answers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from enserve.hardware import Hardware, current_hardware, detect_hardware

MODELS_PY = '''
import torch
from torch import nn


def benign() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    ).eval()


def outlier() -> nn.Module:
    """One hidden feature is ~1e4 and ignored downstream; the signal lives in the others,
    which a per-tensor int8 scale (~40 per step) rounds to zero. Large output weights make
    this member decide the ensemble's answer."""
    torch.manual_seed(1)
    first, second = nn.Linear(3 * 12 * 12, 16), nn.Linear(16, 5)
    with torch.no_grad():
        first.bias[0] = 1e4
        first.weight[0].zero_()
        second.weight.mul_(20.0)
        second.weight[:, 0] = 0.0
    return nn.Sequential(nn.Flatten(), first, nn.ReLU(), second).eval()
'''

def write_spec(folder: Path, accuracy: dict[str, Any] | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "models.py").write_text(MODELS_PY)
    spec: dict[str, Any] = {
        "name": "precise",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 12, 12]}],
        "members": [{"name": "benign", "source": "python:models.py:benign"},
                    {"name": "outlier", "source": "python:models.py:outlier"}],
    }
    if accuracy is not None:
        spec["accuracy"] = accuracy
    (folder / "ensemble.yaml").write_text(yaml.safe_dump(spec))
    return folder / "ensemble.yaml"


def amx_here() -> Hardware:
    """This machine as an AMX one would be fingerprinted, so bf16 gets profiled here."""
    here = current_hardware()
    return Hardware(here.arch, here.cpu_model + " (fake AMX)", here.cores,
                    ("amx_bf16", "amx_int8", "avx2", "avx512_bf16"))


def avx2_only() -> Hardware:
    """An AVX2 machine without BF16 (this project's EPYC): int8 enabled, bf16 not."""
    return detect_hardware(cpuinfo="model name\t: AMD EPYC\nflags\t\t: avx2 fma\n",
                           gpus=(), mps=False)
