"""Tiny ensembles written to a temp folder (shared by the runtime and bench tests)."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import psutil

from enserve.runtime.worker import PROCESS_NAME
from enserve.spec import EnsembleSpec, spec_from_dict

MODELS = textwrap.dedent('''
    import os
    import time
    from pathlib import Path

    import torch
    from torch import nn

    HERE = Path(__file__).parent


    def _net(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5))


    def net_a():
        return _net(1)


    def net_b():
        return _net(2)


    def net_c():
        return _net(3)


    class Controlled(nn.Module):
        """Sleeps while HERE/slow exists; exits the process on batches of HERE/crash rows."""

        def __init__(self):
            super().__init__()
            self.inner = _net(4)

        def forward(self, x):
            try:  # crash on batches of the size written in HERE/crash
                if x.shape[0] == int((HERE / "crash").read_text()):
                    os._exit(3)
            except (FileNotFoundError, ValueError):
                pass
            try:
                time.sleep(float((HERE / "slow").read_text() or "1"))
            except FileNotFoundError:
                pass
            return self.inner(x)


    def controlled():
        return Controlled()


    def broken():
        raise RuntimeError("this factory always fails")
''')


def make_spec(folder: Path, members: list[str], combiner: str = "mean_prob",
              weights: list[float] | None = None) -> EnsembleSpec:
    (folder / "models.py").write_text(MODELS)
    data = {
        "name": "tiny",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3, 2, 2]}],
        "members": [{"name": f"{f}_{i}", "source": f"python:models.py:{f}"}
                    for i, f in enumerate(members)],
        "combiner": combiner,
    }
    if weights:
        data["weights"] = weights
    return spec_from_dict(data, base_dir=folder, where=str(folder / "ensemble.yaml"))


def worker_children() -> list[psutil.Process]:
    """Live engine workers under this process (named by the worker at start)."""
    out = []
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if p.name() == PROCESS_NAME and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            continue
    return out
