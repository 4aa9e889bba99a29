"""A tiny four-member ensemble (random weights) and a stage runner that records its calls."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import yaml

from enserve.reference import ReferenceExecutor
from enserve.spec import EnsembleSpec, spec_from_dict

MODELS = textwrap.dedent('''
    import torch
    from torch import nn


    def _net(seed, hidden):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(12, hidden), nn.ReLU(), nn.Linear(hidden, 5))


    def a():
        return _net(1, 4)


    def b():
        return _net(2, 8)


    def c():
        return _net(3, 16)


    def d():
        return _net(4, 32)


    class _Sleepy(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = _net(5, 8)

        def forward(self, x):
            import time
            time.sleep(0.4)
            return self.inner(x)


    def sleepy():
        return _Sleepy()
''')


def make_spec(folder: Path, combiner: str = "mean_prob",
              weights: list[float] | None = None) -> EnsembleSpec:
    (folder / "models.py").write_text(MODELS)
    data = {
        "name": "quad",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3, 2, 2]}],
        "members": [{"name": n, "source": f"python:models.py:{n}"} for n in "abcd"],
        "combiner": combiner,
    }
    if weights:
        data["weights"] = weights
    (folder / "ensemble.yaml").write_text(yaml.safe_dump(data))
    return spec_from_dict(data, base_dir=folder, where=str(folder / "ensemble.yaml"))


def random_inputs(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 3, 2, 2)).astype(np.float32) * 3


class Recorder:
    """A stage runner over the reference executor's members that records every call."""

    def __init__(self, executor: ReferenceExecutor) -> None:
        self.executor = executor
        self.calls: list[tuple[tuple[str, ...], np.ndarray]] = []

    def __call__(self, members: Sequence[str], inputs: Mapping[str, np.ndarray]
                 ) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.calls.append((tuple(members), x.copy()))
        return {m: self.executor.members[m](x) for m in members}
