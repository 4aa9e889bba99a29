"""Execution variants of a member (eager, channels-last, TorchScript, ONNX Runtime,
torch.export, torch.compile, bf16) and the admission check that guards them.

`load_variant` and `check_variant` import torch on first use, so importing this
package (names, fingerprints) stays cheap for the command line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from enserve.variants.fingerprint import default_cache_dir, library_versions, member_fingerprint
from enserve.variants.names import (
    OPT_IN,
    REDUCED_PRECISION,
    VARIANTS,
    available_variants,
    default_variant,
)

if TYPE_CHECKING:
    from enserve.variants.check import VariantCheck, check_variant
    from enserve.variants.load import load_variant
    from enserve.variants.samples import random_request

_LAZY = {
    "load_variant": "enserve.variants.load",
    "VariantCheck": "enserve.variants.check",
    "check_variant": "enserve.variants.check",
    "random_request": "enserve.variants.samples",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'enserve.variants' has no attribute '{name}'")


__all__ = [
    "OPT_IN",
    "REDUCED_PRECISION",
    "VARIANTS",
    "VariantCheck",
    "available_variants",
    "check_variant",
    "default_cache_dir",
    "default_variant",
    "library_versions",
    "load_variant",
    "member_fingerprint",
    "random_request",
]
