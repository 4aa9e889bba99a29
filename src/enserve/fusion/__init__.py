"""Fusion: several members run as one unit — one fx graph with Conv-BN folding and the
combiner inside, one vectorized forward for same-architecture members, or one merged
ONNX graph.

Names load lazily, so `enserve.plan.fusion` (used by the planner and the command
line) can be imported without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from enserve.fusion.groups import (
        FUSION_KINDS,
        FusionGroup,
        FusionKind,
        architecture_key,
        fusion_candidates,
        load_fused,
    )
    from enserve.fusion.member import FusedMember

_LAZY = {
    "FUSION_KINDS": "enserve.fusion.candidates",
    "FusionGroup": "enserve.fusion.candidates",
    "FusionKind": "enserve.fusion.candidates",
    "architecture_key": "enserve.fusion.candidates",
    "fusion_candidates": "enserve.fusion.candidates",
    "load_fused": "enserve.fusion.groups",
    "FusedMember": "enserve.fusion.member",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'enserve.fusion' has no attribute '{name}'")


__all__ = [
    "FUSION_KINDS",
    "FusedMember",
    "FusionGroup",
    "FusionKind",
    "architecture_key",
    "fusion_candidates",
    "load_fused",
]
