"""`load_variant`: build a member as one execution variant, importing only the framework
that variant runs on. An ONNX member, or the `onnx` variant of a PyTorch member whose
exported file is already cached, loads with ONNX Runtime alone (no torch import);
everything else goes through `enserve.variants.build` (torch)."""

from __future__ import annotations

from pathlib import Path

from enserve.members import Member, OnnxMember, load_member
from enserve.members.preprocess import Preprocessor
from enserve.spec import EnsembleSpec, MemberSpec
from enserve.variants.artifacts import artifact_path
from enserve.variants.names import runnable_member


def cached_onnx(spec: EnsembleSpec, member: MemberSpec, cache_dir: Path | None) -> Path | None:
    """The cached ONNX export of a PyTorch member, if one was written before."""
    path = artifact_path(spec, member, "onnx", ".onnx", cache_dir)
    return path if path.is_file() else None


def load_variant(
    spec: EnsembleSpec,
    member: str | MemberSpec,
    variant: str,
    threads: int = 1,
    cache_dir: Path | None = None,
    device: str = "cpu",
) -> Member:
    """One instance of `member` as `variant`, as a worker process creates it.

    ONNX and simulated members load without PyTorch; an ONNX export already in the cache
    (`cache_dir`) is opened without importing PyTorch either; anything else is built by
    `enserve.variants.build.build_variant` (same arguments)."""
    member_spec = runnable_member(spec, member, variant)
    if member_spec.kind in ("onnx", "simulate"):  # neither runs PyTorch
        return load_member(spec, member_spec, threads=max(1, threads))
    if variant == "onnx" and device == "cpu":
        path = cached_onnx(spec, member_spec, cache_dir)
        if path is not None:
            return OnnxMember(member_spec.name, path, Preprocessor(member_spec.preprocess),
                              threads=max(1, threads), variant="onnx")
    from enserve.variants.build import build_variant

    return build_variant(spec, member_spec, variant, threads, cache_dir, device)
