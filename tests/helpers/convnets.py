"""A tiny two-member conv ensemble written to a temporary folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

TINY_PY = '''
import torch
from torch import nn


def make_tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    ).eval()


def make_other() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 4, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 5),
    ).eval()
'''


def write_weights(folder: Path, seed: int) -> None:
    """Random (non-default) weights for `make_tiny`, so a weight change is visible."""
    namespace: dict[str, object] = {}
    exec(TINY_PY, namespace)  # the test's own source text, not a model file
    module = namespace["make_tiny"]()  # type: ignore[operator]
    generator = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
             for k, v in module.state_dict().items()}
    state = {k: (v.abs() + 0.5 if "running_var" in k else v) for k, v in state.items()}
    save_file(state, str(folder / "tiny.safetensors"))


@pytest.fixture()
def tiny_spec_path(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "tiny.py").write_text(TINY_PY)
    write_weights(folder, seed=3)
    spec = {
        "name": "tiny",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 12, 12]}],
        "members": [
            {"name": "tiny", "source": "python:tiny.py:make_tiny", "weights": "tiny.safetensors"},
            {"name": "other", "source": "python:tiny.py:make_other"},
        ],
    }
    path = folder / "ensemble.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture()
def change_weights(tiny_spec_path: Path) -> Callable[[int], None]:
    """Rewrite the tiny member's weight file with weights drawn from another seed."""
    return lambda seed: write_weights(tiny_spec_path.parent, seed)
