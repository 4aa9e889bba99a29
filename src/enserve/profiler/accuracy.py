"""The profiler's accuracy step: member logits on the calibration set, then admission.

Each member runs once as its reference (fp32, loaded the default way) and once per
reduced-precision variant that passed its own check, over the held-out rows of the
calibration set (those int8 was not calibrated on: `enserve.precision.calibration`), in a
child process using every core; the logits are cached as `.npy` (keyed by member
fingerprint, variant, held-out rows' digest and hardware fingerprint: int8 and bf16
kernels differ between ISAs). The
ensemble-level verdict (`enserve.precision.admission.assess`) becomes the profile's
`accuracy` section.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from enserve.precision.admission import Tolerance, assess
from enserve.spec import EnsembleSpec, load_spec
from enserve.variants.names import precision_of

REFERENCE = "reference"
BATCH = 32


def calibrate_in_child(spec_path: str, member: str, variant: str, out: str, threads: int,
                       cache_dir: str) -> None:
    """Run `member` as `variant` (or its reference) over the held-out calibration rows;
    save the logits."""
    from enserve.members import load_member
    from enserve.precision.calibration import held_out, load_calibration
    from enserve.variants.fingerprint import atomic_write_target
    from enserve.variants.load import load_variant

    spec = load_spec(spec_path)
    member_spec = spec.member(member)
    calibration = held_out(spec, load_calibration(spec))
    runner = (load_member(spec, member_spec, threads=threads) if variant == REFERENCE
              else load_variant(spec, member, variant, threads=threads,
                                cache_dir=Path(cache_dir)))
    rows = calibration.for_member(spec, member_spec)
    logits = np.concatenate([np.asarray(runner(rows[i:i + BATCH]), dtype=np.float32)
                             for i in range(0, len(rows), BATCH)])
    target = Path(out)
    tmp = atomic_write_target(target)
    with open(tmp, "wb") as fh:
        np.save(fh, logits)
    tmp.replace(target)


def assess_precisions(
    spec: EnsembleSpec,
    reduced: Mapping[str, Sequence[str]],
    logits_for: Callable[[str, str], np.ndarray | None],
) -> dict[str, Any]:
    """The `accuracy` section for members' reduced variants `reduced[m]`.

    `logits_for(member, variant)` returns cached or freshly computed calibration logits
    (`REFERENCE` for fp32), or None when they could not be computed (that variant is then
    left out, and a member without a reference keeps every variant out)."""
    from enserve.precision.calibration import calibration_split, held_out, load_calibration

    assert spec.accuracy is not None
    full = load_calibration(spec)
    split = calibration_split(spec, full)
    calibration = held_out(spec, full, split)
    names = [m.name for m in spec.members]
    reference: dict[str, np.ndarray] = {}
    variants: dict[str, dict[str, np.ndarray]] = {}
    failed: list[str] = []
    for name in names:
        ref = logits_for(name, REFERENCE)
        if ref is None:
            raise RuntimeError(f"{name}: reference logits on the calibration set failed")
        reference[name] = ref
        for v in reduced.get(name, ()):
            got = logits_for(name, v)
            if got is None or got.shape != ref.shape or not np.all(np.isfinite(got)):
                failed.append(f"{name} as {v}")
                continue
            variants.setdefault(name, {})[precision_of(v)] = got
    tolerance = Tolerance(spec.accuracy.min_top1_agreement, spec.accuracy.max_accuracy_drop)
    section = assess(names, spec.combiner, spec.member_weights(), reference, variants,
                     tolerance, calibration.labels)
    section["calibration"] = {"source": full.source, "digest": full.digest,
                              "rows": full.rows, "split": split.tag,
                              "quantization_rows": len(split.quantization),
                              "held_out_rows": len(split.held_out),
                              "quantization_samples": spec.accuracy.quantization_samples}
    if failed:
        section["failed"] = failed
    return section


def used_variants(section: Mapping[str, Any]) -> set[tuple[str, str]]:
    """(member, precision) pairs that appear in at least one admitted assignment."""
    return {(m, p) for row in section.get("assignments", []) if row.get("admitted")
            for m, p in row.get("precisions", {}).items()}


def choose_reduced_variants(spec: EnsembleSpec, member_variants: dict[str, list[str]],
                            asked: Sequence[str] | None, precision: str, hardware: Any,
                            device_ids: Sequence[str], notes: list[str]) -> None:
    """Add (precision "auto", spec with an accuracy section, no reduced variant named in
    `asked`) or remove (precision "fp32") reduced-precision variants in `member_variants`;
    drop those no chosen device runs fast (one note per variant)."""
    from enserve.variants.names import REDUCED_PRECISION, available_variants

    skipped: dict[str, list[str]] = {}
    for m in spec.members:
        names = member_variants[m.name]
        if precision == "fp32":
            dropped = [v for v in names if v in REDUCED_PRECISION]
            if dropped:
                notes.append(f"{m.name}: {', '.join(dropped)} not profiled (--precision fp32)")
            names[:] = [v for v in names if v not in REDUCED_PRECISION]
            continue
        if spec.accuracy is not None and not REDUCED_PRECISION & set(asked or ()):
            possible = available_variants(m, include_opt_in=True)
            names += [v for v in sorted(REDUCED_PRECISION) if v in possible and v not in names]
        slow = [v for v in names if v in REDUCED_PRECISION
                and not any(hardware.runs_fast(v, d) for d in device_ids)]
        for v in slow:
            skipped.setdefault(v, []).append(m.name)
        names[:] = [v for v in names if v not in slow]
    for v, members in skipped.items():
        where = device_ids[0] if device_ids else "cpu"
        notes.append(f"{v} not profiled ({', '.join(members)}): "
                     f"{hardware.skip_reason(v, where)}")


def without_accuracy_section(spec: EnsembleSpec, checks: dict[tuple[str, str], dict[str, Any]],
                             notes: list[str]) -> None:
    """Reduced variants are refused when the spec gives no calibration set."""
    from enserve.variants.names import REDUCED_PRECISION

    if spec.accuracy is not None:
        return
    for (name, v), check in checks.items():
        if v in REDUCED_PRECISION and check.get("admitted"):
            reason = ("no accuracy section in the spec: reduced precision is admitted only by "
                      "the ensemble's answers on a calibration set")
            checks[(name, v)] = {**check, "admitted": False, "reason": reason}
            notes.append(f"{name}: variant '{v}' not admitted: {reason}")


def apply_verdict(section: Mapping[str, Any], checks: dict[tuple[str, str], dict[str, Any]],
                  notes: list[str]) -> None:
    """A reduced variant stays admitted only if an admitted assignment uses it."""
    from enserve.variants.names import REDUCED_PRECISION

    used = used_variants(section)
    for (name, v), check in list(checks.items()):
        if v not in REDUCED_PRECISION or not check.get("admitted"):
            continue
        if (name, precision_of(v)) in used:
            checks[(name, v)] = {**check, "ensemble_admitted": True}
            continue
        own = section.get("members", {}).get(name, {}).get(precision_of(v), {})
        reason = (f"ensemble-level: no mix of precisions using it keeps top-1 agreement >= "
                  f"{section['tolerance']['min_top1_agreement']:g}"
                  + (f" and accuracy drop <= {section['tolerance']['max_accuracy_drop']:g}"
                     if section["tolerance"].get("max_accuracy_drop") is not None else "")
                  + (f" (alone: agreement {own['top1_agreement']:.4f})" if own else ""))
        checks[(name, v)] = {**check, "admitted": False, "reason": reason}
        notes.append(f"{name}: variant '{v}' not admitted: {reason}")
