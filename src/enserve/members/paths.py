"""Where a member's files are, and how error messages name a member's field."""

from __future__ import annotations

from pathlib import Path

from enserve.spec import EnsembleSpec, MemberSpec


def member_where(spec: EnsembleSpec, member: MemberSpec, field: str = "source") -> str:
    """`file: members.N.field (name)`, for error messages."""
    index = spec.members.index(member)
    return f"{spec.source_file}: members.{index}.{field} ({member.name})"


def member_path(spec: EnsembleSpec, member: MemberSpec, relative: str, field: str) -> Path:
    return spec.resolve_path(relative, f"members.{spec.members.index(member)}.{field}")
