"""Fused groups as data: a group's kind and the members it covers.

On disk (profile and plan JSON) a group is named `"<kind>:<member>+<member>..."`, e.g.
`fx:cnn+mlp`; `GroupRef.parse` reads that name and `GroupRef.of` writes it, so no other
module builds or splits the string. Member names cannot contain ':' or '+' (the spec
forbids them), so the name is unambiguous. No torch import: the planner uses it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast

GroupKind = Literal["fx", "horizontal", "onnx"]
GROUP_KINDS: tuple[GroupKind, ...] = ("fx", "horizontal", "onnx")
FUSED_PREFIX = "fused-"
#: Variants the profiler measures for each kind of group.
KIND_VARIANTS: dict[GroupKind, tuple[str, ...]] = {
    "fx": ("fused-fx", "fused-fx-frozen", "fused-fx-cl-lanes"),
    "horizontal": ("fused-horizontal",),
    "onnx": ("fused-onnx",),
}


def group_name(kind: GroupKind, covers: Sequence[str]) -> str:
    """The on-disk name of a group: `fx:a+b`."""
    return f"{kind}:{'+'.join(covers)}"


def as_kind(kind: str) -> GroupKind | None:
    """`kind` as a GroupKind, or None when it names no kind of group."""
    return cast(GroupKind, kind) if kind in GROUP_KINDS else None


@dataclass(frozen=True)
class GroupRef:
    """A fused group named in a profile or plan: its name, kind and the members it covers."""

    name: str
    kind: GroupKind
    covers: tuple[str, ...]

    @classmethod
    def of(cls, kind: GroupKind, covers: Sequence[str]) -> GroupRef:
        return cls(group_name(kind, covers), kind, tuple(covers))

    @classmethod
    def parse(cls, name: str) -> GroupRef | None:
        """`"fx:a+b"` -> GroupRef(kind "fx", covers (a, b)); None for an ordinary member."""
        kind_text, sep, rest = name.partition(":")
        kind = as_kind(kind_text)
        if not sep or kind is None or not rest:
            return None
        members = tuple(rest.split("+"))
        if any(not m for m in members):
            return None
        return cls(name, kind, members)


def parse_group_name(name: str) -> GroupRef | None:
    """`GroupRef.parse(name)`."""
    return GroupRef.parse(name)


def is_fused_variant(variant: str | None) -> bool:
    return bool(variant) and str(variant).startswith(FUSED_PREFIX)


def variant_options(variant: str) -> dict[str, bool]:
    """`load_fused` keyword options a fused variant name stands for."""
    return {"frozen": variant.endswith("-frozen"), "channels_last": "-cl" in variant,
            "lanes": variant.endswith("-lanes")}


def group_fingerprint(member_fingerprints: Sequence[str], kind: str, variant: str) -> str:
    """Identifies a fused group's model: its kind, variant and its members' fingerprints."""
    blob = "|".join([kind, variant, *member_fingerprints]).encode()
    return hashlib.sha256(blob).hexdigest()
