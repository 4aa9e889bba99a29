"""`load_member`: the member's source decides the framework, and only that framework is
imported (an ONNX member never imports torch)."""

from __future__ import annotations

from enserve.errors import ModelLoadError
from enserve.members.base import Member
from enserve.members.onnx_member import OnnxMember
from enserve.members.paths import member_path, member_where
from enserve.members.preprocess import Preprocessor
from enserve.spec import EnsembleSpec, MemberSpec


def load_member(spec: EnsembleSpec, member: MemberSpec | str, threads: int | None = None) -> Member:
    """Load one member of `spec` in this process."""
    if isinstance(member, str):
        member = spec.member(member)
    if member.kind == "simulate":
        from enserve.members.simulated import load_simulated, parse_target

        where = member_where(spec, member)
        relative, profiled = parse_target(member.target, where)
        return load_simulated(member.name, member_path(spec, member, relative, "source"),
                              profiled or member.name, num_classes=member.num_classes,
                              seed=member.seed, preprocessor=Preprocessor(member.preprocess),
                              where=where)
    if member.kind != "onnx":
        from enserve.members.loaders import load_torch_member

        return load_torch_member(spec, member, threads)
    path = member_path(spec, member, member.target, "source")
    try:
        return OnnxMember(member.name, path, Preprocessor(member.preprocess), threads=threads or 1)
    except Exception as exc:
        raise ModelLoadError(f"{member_where(spec, member)}: cannot load ONNX model: {exc}") from None
