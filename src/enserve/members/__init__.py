"""Members: one interface over PyTorch eager, TorchScript, torch.export and ONNX Runtime.

The framework-specific names load on first use, so that `enserve.members.simulated` runs
without PyTorch (a Ray actor simulating a member)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from enserve.members.base import Member, Signature

if TYPE_CHECKING:
    from enserve.members.dispatch import load_member
    from enserve.members.loaders import build_torch_module
    from enserve.members.onnx_member import OnnxMember
    from enserve.members.torch_member import TorchMember

__all__ = ["Member", "OnnxMember", "Signature", "TorchMember", "build_torch_module", "load_member"]
_WHERE = {"build_torch_module": "enserve.members.loaders", "load_member": "enserve.members.dispatch",
          "OnnxMember": "enserve.members.onnx_member", "TorchMember": "enserve.members.torch_member"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'enserve.members' has no attribute {name!r}")
