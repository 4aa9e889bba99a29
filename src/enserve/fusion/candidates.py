"""Which members of a spec can run fused (no torch import: the profiler's parent process
and the planner use it)."""

from __future__ import annotations

from dataclasses import dataclass

from enserve.formats.groups import GROUP_KINDS, GroupKind, GroupRef, group_name
from enserve.spec import EnsembleSpec, MemberSpec

FusionKind = GroupKind
FUSION_KINDS: tuple[FusionKind, ...] = GROUP_KINDS


@dataclass(frozen=True)
class FusionGroup:
    """Members that can run as one unit of the given kind."""

    kind: FusionKind
    members: tuple[str, ...]
    covers_ensemble: bool

    @property
    def name(self) -> str:
        return group_name(self.kind, self.members)

    def ref(self) -> GroupRef:
        return GroupRef.of(self.kind, self.members)


def architecture_key(member: MemberSpec) -> tuple[object, ...] | None:
    """Equal keys mean equal architectures (weights may differ); None: can't tell from the spec."""
    pre = member.preprocess.model_dump_json() if member.preprocess else None
    if member.kind == "torchvision":
        return ("torchvision", member.target, member.num_classes, pre, member.input)
    if member.kind == "safetensors":
        return ("arch", member.architecture, member.num_classes, pre, member.input)
    if member.kind == "python":
        return ("python", member.target, pre, member.input)
    return None


def fusion_candidates(spec: EnsembleSpec) -> list[FusionGroup]:
    """Every fused group worth profiling: all PyTorch members as one fx graph, each set of
    two or more same-architecture members horizontally, all ONNX members merged."""
    everyone = {m.name for m in spec.members}
    groups: list[FusionGroup] = []

    def add(kind: FusionKind, names: list[str]) -> None:
        if len(names) >= 2:
            groups.append(FusionGroup(kind, tuple(names), set(names) == everyone))

    add("fx", [m.name for m in spec.members if m.kind != "onnx"])
    by_arch: dict[tuple[object, ...], list[str]] = {}
    for m in spec.members:
        key = architecture_key(m)
        if key is not None:
            by_arch.setdefault(key, []).append(m.name)
    for names in by_arch.values():
        add("horizontal", names)
    add("onnx", [m.name for m in spec.members if m.kind == "onnx"])
    return groups
