"""Tiny models written to a temporary spec folder, one per source kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

FACTORY_FILE = '''
from torch import nn


def tiny():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 8 * 8, 5),
    )


def tiny10():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def not_a_module():
    return 42
'''


def tiny_module(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    module = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 8 * 8, 5),
    )
    with torch.no_grad():  # non-trivial batch-norm statistics
        bn = module[1]
        assert isinstance(bn, nn.BatchNorm2d)
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 1.5)
    return module.eval()


def random_batch(batch: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 1, 8, 8)).astype(np.float32)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the same kind of tiny model in every supported format."""
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("models")
    (d / "factory.py").write_text(FACTORY_FILE)
    example = torch.from_numpy(random_batch(2))
    ts = tiny_module(1)
    torch.jit.trace(ts, example).save(str(d / "cnn.pt"))
    torch.save(ts.state_dict(), d / "cnn_state.pt")
    ex = tiny_module(2)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(ex, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(d / "cnn.pt2"))
    on = tiny_module(3)
    torch.onnx.export(
        on, (example,), str(d / "mlp.onnx"), input_names=["x"], output_names=["logits"],
        dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
    )
    st = tiny_module(4)
    save_file({k: v.contiguous() for k, v in st.state_dict().items()}, str(d / "cnn.safetensors"))
    return d
