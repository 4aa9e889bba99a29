"""Variant names and which members can use them (no torch import: cheap for the CLI)."""

from __future__ import annotations

from enserve.errors import SpecError
from enserve.spec import EnsembleSpec, MemberSpec

#: Every variant name, in the order the profiler tries them.
VARIANTS = ("eager", "channels_last", "torchscript", "onnx", "export", "compile", "bf16", "int8",
            "fp16")
#: Variants used only when asked for by name (or, for reduced precision, when the spec has
#: an accuracy section): slow to build (compile) or not exact (bf16, int8, fp16).
OPT_IN = frozenset({"compile", "bf16", "int8", "fp16"})
#: Variants whose outputs are not expected to match fp32 within the admission tolerance;
#: they are admitted by the ensemble-level accuracy check (`enserve.precision`).
REDUCED_PRECISION = frozenset({"bf16", "int8", "fp16"})
#: Where each reduced-precision variant runs.
CPU_ONLY = frozenset({"int8"})
CUDA_ONLY = frozenset({"fp16"})


def precision_of(variant: str | None) -> str:
    """The number format a variant computes in: fp32, bf16, int8 or fp16."""
    return variant if variant is not None and variant in REDUCED_PRECISION else "fp32"


def default_variant(member: MemberSpec) -> str:
    """The variant a member runs as when a plan names none."""
    return "onnx" if member.kind == "onnx" else "eager"


def available_variants(member: MemberSpec, include_opt_in: bool = False) -> list[str]:
    """Variants that can be built for this member's source (admission is checked separately)."""
    if member.kind == "onnx":
        return ["onnx", "int8"] if include_opt_in else ["onnx"]
    if member.kind == "simulate":  # a simulated member runs one way (enserve.members.simulated)
        return ["eager"]
    return [v for v in VARIANTS if include_opt_in or v not in OPT_IN]


def runnable_member(spec: EnsembleSpec, member: str | MemberSpec, variant: str) -> MemberSpec:
    """The member's spec, once `variant` is known and one this member can run (SpecError
    naming the variants it can run otherwise)."""
    member_spec = spec.member(member) if isinstance(member, str) else member
    if variant not in VARIANTS:
        raise SpecError(f"unknown variant '{variant}' (known: {', '.join(VARIANTS)})")
    allowed = available_variants(member_spec, include_opt_in=True)
    if variant not in allowed:
        raise SpecError(
            f"member '{member_spec.name}' (source {member_spec.source}) cannot run as "
            f"'{variant}'; available: {', '.join(allowed)}"
        )
    return member_spec
