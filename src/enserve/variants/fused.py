"""Fused groups as execution variants: build one (`fused-fx`, `fused-fx-frozen`,
`fused-fx-cl-lanes`, `fused-horizontal`, `fused-onnx`) and check it against the reference members.

A group's "member" name is its `FusionGroup` name (`fx:cnn+mlp`); see
`enserve.plan.fusion`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import cast

import numpy as np

from enserve.errors import SpecError
from enserve.formats.groups import KIND_VARIANTS, GroupKind, GroupRef, parse_group_name, variant_options
from enserve.fusion.member import FusedMember
from enserve.members import Member, load_member
from enserve.spec import EnsembleSpec
from enserve.variants.check import TOLERANCE, VariantCheck, check_variant


def group_of(spec: EnsembleSpec, name: str) -> GroupRef:
    """The group a name stands for; its members must be in `spec`."""
    group = parse_group_name(name)
    if group is None:
        raise SpecError(f"'{name}' is not a fused group name (kind:member+member...)")
    names = {m.name for m in spec.members}
    unknown = [m for m in group.covers if m not in names]
    if unknown:
        raise SpecError(f"fused group '{name}': no member(s) {', '.join(unknown)} in the spec")
    return group


def fused_variant_names(kind: GroupKind) -> tuple[str, ...]:
    return KIND_VARIANTS[kind]


def load_fused_variant(spec: EnsembleSpec, name: str, variant: str | None = None,
                       threads: int = 1, cache_dir: Path | None = None) -> FusedMember:
    """Build group `name` as `variant` (default: the kind's first) with no combiner in the
    graph: the caller combines, so every covered member's logits come out."""
    from enserve.fusion.groups import load_fused

    group = group_of(spec, name)
    variant = variant or KIND_VARIANTS[group.kind][0]
    if variant not in KIND_VARIANTS[group.kind]:
        raise SpecError(f"fused group '{name}' ({group.kind}) cannot run as '{variant}'; "
                        f"available: {', '.join(KIND_VARIANTS[group.kind])}")
    options = variant_options(variant)
    fused = load_fused(spec, group.covers, group.kind, max(1, threads),
                       combine_in_graph=False, frozen=options["frozen"],
                       channels_last=options["channels_last"], lanes=options["lanes"],
                       cache_dir=cache_dir)
    fused.variant = variant
    return fused


class _PerMemberRows(Member):
    """Adapts stacked logits `[M, B, C]` to rows `[B * M, C]` (one row per sample and member),
    so `check_variant`'s per-row comparison (error, softmax, arg-max) applies per member."""

    framework = "check"

    def __init__(self, name: str, stacked: object) -> None:
        super().__init__(name)
        self._stacked = stacked

    def run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError  # __call__ is overridden

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        out = np.asarray(self._stacked(batch), dtype=np.float64)  # type: ignore[operator]
        return out.transpose(1, 0, 2).reshape(-1, out.shape[-1])

    def param_bytes(self) -> int:
        return 0


def check_fused_variant(spec: EnsembleSpec, name: str, variant: str, *,
                        candidate: FusedMember | None = None,
                        tolerance: float = TOLERANCE) -> VariantCheck:
    """Admission of a fused group: every covered member's logits must match that member
    loaded the default way (`rel_error <= tolerance`, as for any variant)."""
    group = group_of(spec, name)
    first = spec.member(group.covers[0])
    if len({spec.input_for(spec.member(m)).name for m in group.covers}) != 1:
        return VariantCheck(name, variant, False, None,
                            reason="members read different inputs (not profiled)")
    try:
        fused = candidate or load_fused_variant(spec, name, variant)
        references = [load_member(spec, m, threads=1) for m in group.covers]
    except Exception as exc:
        return VariantCheck(name, variant, False, None,
                            reason=f"failed to build: {type(exc).__name__}: {exc}")

    def reference(batch: np.ndarray) -> np.ndarray:
        return np.stack([r(batch) for r in references])

    result = check_variant(spec, first, variant,
                           candidate=cast(Member, _PerMemberRows(name, fused)),
                           reference=cast(Member, _PerMemberRows(name, reference)),
                           tolerance=tolerance)
    return replace(result, member=name)
