"""One copy of each weight per machine: a PyTorch member's weights are written once to a
safetensors file in the cache (keyed by the member's fingerprint) and every process that
runs the member maps that file instead of holding its own copy.

The tensors are views of a private (copy-on-write) file mapping: their pages live in the
page cache, so every instance of the member on the machine shares them (PSS splits
them), and a page is copied only if a process writes to it (inference does not).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from torch import nn

from enserve.members.packed import load_packed, pack_ensemble, packable
from enserve.spec import EnsembleSpec, MemberSpec
from enserve.variants.artifacts import artifact_path
from enserve.variants.fingerprint import atomic_write_target


def weights_file(spec: EnsembleSpec, member: MemberSpec, cache_dir: Path | None = None) -> Path:
    """The member's weight file in the cache (written on first use)."""
    path = artifact_path(spec, member, "weights", ".safetensors", cache_dir)
    if path.is_file():
        return path
    tmp = atomic_write_target(path)
    try:
        pack_ensemble(spec, tmp, [member.name])
        # link, not replace: instances racing to write it all end up mapping one file
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def mapped_module(spec: EnsembleSpec, member: MemberSpec, cache_dir: Path | None = None) -> nn.Module:
    """The member's module with its weights mapped from `weights_file` (eval mode)."""
    return load_packed(spec, weights_file(spec, member, cache_dir), [member.name])[member.name]


def can_map(member: MemberSpec) -> bool:
    """Members whose weights can be mapped (built from an architecture plus tensors)."""
    return packable(member)
