"""Where a member's exported artifacts (ONNX file, frozen TorchScript, exported program)
are cached: keyed by the member's fingerprint (no torch import)."""

from __future__ import annotations

from pathlib import Path

from enserve.spec import EnsembleSpec, MemberSpec
from enserve.variants.fingerprint import default_cache_dir, member_fingerprint


def artifact_path(spec: EnsembleSpec, member: MemberSpec, variant: str, suffix: str,
                  cache_dir: Path | None) -> Path:
    root = cache_dir if cache_dir is not None else default_cache_dir()
    key = member_fingerprint(spec, member)[:24]
    return root / "artifacts" / f"{member.name}-{variant}-{key}{suffix}"
