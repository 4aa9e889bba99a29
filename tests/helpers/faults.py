"""A model repository with members that misbehave on purpose, for the reliability tests."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.server import write_repository

FAULTY_PY = '''
import os
import torch
from torch import nn


class Crashy(nn.Module):
    """Raises on a batch whose first value is exactly 13 (a member fault, not bad input)."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(6, 5)

    def forward(self, x):
        if float(x.reshape(-1)[0]) == 13.0:
            raise RuntimeError("member blew up on purpose")
        return self.inner(x)


def crashy():
    torch.manual_seed(7)
    return Crashy()
'''

EXTRA_SPECS = {
    "crashy": '''
name: crashy
inputs: [{name: x, datatype: FP32, shape: [-1, 6]}]
members:
  - {name: crash, source: "python:models.py:crashy"}
''',
    "evil": '''
name: evil
inputs: [{name: x, datatype: FP32, shape: [-1, 6]}]
members:
  - {name: boom, source: "python:os:getpid"}
''',
}


def write_fault_repository(root: Path) -> Path:
    write_repository(root)
    for name, text in EXTRA_SPECS.items():
        folder = root / name
        folder.mkdir(exist_ok=True)
        (folder / "ensemble.yaml").write_text(text)
    (root / "crashy" / "models.py").write_text(FAULTY_PY)
    return root
