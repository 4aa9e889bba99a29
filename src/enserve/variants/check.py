"""Admission: a variant may serve only if it reproduces the member's reference output.

The reference is the member loaded the default way (`enserve.members.load_member`).
Both run the same random (never all-zero) request batches; the error is
`max|variant - reference| / max|reference|` over the logits (a normwise relative
error, stable where single logits are near zero). fp32 variants are admitted at
`rel_error <= 1e-4`. Reduced-precision variants (bf16) are admitted only when the
caller opts in, and the check reports how far their probabilities move.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from enserve.combine import softmax
from enserve.members import Member, load_member
from enserve.spec import EnsembleSpec, MemberSpec
from enserve.variants.load import load_variant
from enserve.variants.names import REDUCED_PRECISION
from enserve.variants.samples import random_request

TOLERANCE = 1e-4
CHECK_BATCH_SIZES = (1, 3)


@dataclass(frozen=True)
class VariantCheck:
    """The outcome of comparing one variant of one member with its reference."""

    member: str
    variant: str
    admitted: bool
    rel_error: float | None
    max_abs_prob_diff: float | None = None
    top1_agreement: float | None = None
    reduced_precision: bool = False
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_outputs(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float, float]:
    """(relative error, max abs probability difference, top-1 agreement)."""
    scale = max(float(np.max(np.abs(reference))), 1e-12)
    rel = float(np.max(np.abs(candidate.astype(np.float64) - reference))) / scale
    probs_ref = softmax(reference.astype(np.float32))
    probs_cand = softmax(candidate.astype(np.float32))
    prob_diff = float(np.max(np.abs(probs_ref - probs_cand)))
    agree = float(np.mean(np.argmax(reference, axis=1) == np.argmax(candidate, axis=1)))
    return rel, prob_diff, agree


def check_variant(
    spec: EnsembleSpec,
    member: str | MemberSpec,
    variant: str,
    *,
    threads: int = 1,
    cache_dir: Path | None = None,
    reference: Member | None = None,
    candidate: Member | None = None,
    allow_reduced_precision: bool = False,
    tolerance: float = TOLERANCE,
    seed: int = 1234,
) -> VariantCheck:
    """Build (unless `candidate` is given) and compare one variant with the reference.

    Never raises for a variant that fails to build or run: it is reported as not admitted
    with the reason.
    """
    member_spec = spec.member(member) if isinstance(member, str) else member
    reduced = variant in REDUCED_PRECISION
    try:
        ref = reference or load_member(spec, member_spec, threads=threads)
        cand = candidate or load_variant(spec, member_spec.name, variant, threads=threads,
                                         cache_dir=cache_dir)
        ref_out, cand_out = [], []
        for i, batch in enumerate(CHECK_BATCH_SIZES):
            request = random_request(spec, member_spec, batch, seed + i)
            ref_out.append(np.asarray(ref(request), dtype=np.float64))
            cand_out.append(np.asarray(cand(request), dtype=np.float64))
    except Exception as exc:
        return VariantCheck(member_spec.name, variant, False, None, reduced_precision=reduced,
                            reason=f"failed to build or run: {type(exc).__name__}: {exc}")
    if any(r.shape != c.shape for r, c in zip(ref_out, cand_out, strict=True)):
        shapes = [(r.shape, c.shape) for r, c in zip(ref_out, cand_out, strict=True)]
        return VariantCheck(member_spec.name, variant, False, None, reduced_precision=reduced,
                            reason=f"output shape differs from the reference: {shapes}")
    ref_all, cand_all = np.concatenate(ref_out), np.concatenate(cand_out)
    if not np.all(np.isfinite(cand_all)):
        return VariantCheck(member_spec.name, variant, False, None, reduced_precision=reduced,
                            reason="output contains NaN or infinity")
    rel, prob_diff, agree = compare_outputs(ref_all, cand_all)
    if reduced:
        admitted = allow_reduced_precision
        reason = (f"reduced precision: max |prob diff| {prob_diff:.2e}, top-1 agreement "
                  f"{agree:.0%}" + ("" if admitted else "; not admitted without opt-in"))
    else:
        admitted = rel <= tolerance
        reason = (f"rel error {rel:.2e} <= {tolerance:g}" if admitted
                  else f"rel error {rel:.2e} exceeds {tolerance:g}")
    return VariantCheck(member_spec.name, variant, admitted, rel, prob_diff, agree, reduced, reason)
