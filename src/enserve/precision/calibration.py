"""The spec's calibration set: inputs per request tensor (rows along axis 0), labels.

The set is split in two disjoint parts (`split_rows`): the int8 quantizer calibrates on
one (`quantization_set`), the ensemble-level admission measures on the other
(`held_out`), so agreement and accuracy are never measured on rows the quantizer saw.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from enserve.datatypes import numpy_dtype
from enserve.errors import SpecError
from enserve.spec import EnsembleSpec, MemberSpec, TensorSpec


@dataclass(frozen=True)
class Calibration:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    digest: str
    source: str

    @property
    def rows(self) -> int:
        return len(next(iter(self.inputs.values())))

    def for_member(self, spec: EnsembleSpec, member: MemberSpec) -> np.ndarray:
        """The rows of the input `member` reads (before its preprocessing)."""
        return self.inputs[spec.input_for(member).name]


def _check_shape(array: np.ndarray, tensor: TensorSpec, where: str) -> None:
    if array.ndim != len(tensor.shape) or any(
            d != -1 and d != a for d, a in zip(tensor.shape[1:], array.shape[1:], strict=False)):
        raise SpecError(f"{where}: shape {list(array.shape)} does not match input "
                        f"'{tensor.name}' {tensor.shape}")
    if len(array) == 0:
        raise SpecError(f"{where}: no rows")


def _load_npy(spec: EnsembleSpec, relative: str, field: str) -> np.ndarray:
    path = spec.resolve_path(relative, field)
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SpecError(f"{spec.source_file}: {field}: cannot read '{relative}' as .npy: "
                        f"{exc}") from None


def _synthetic(spec: EnsembleSpec, count: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for tensor in spec.inputs:
        shape = (count, *(d if d > 0 else 16 for d in tensor.shape[1:]))
        dtype = numpy_dtype(tensor.datatype) if tensor.datatype != "BF16" else np.dtype("f4")
        if dtype.kind == "f":
            out[tensor.name] = rng.standard_normal(shape).astype(dtype)
        else:
            out[tensor.name] = rng.integers(0, 2 if dtype.kind == "b" else 100, shape
                                            ).astype(dtype)
    return out


def load_calibration(spec: EnsembleSpec) -> Calibration:
    """The spec's calibration set; SpecError names the field and file when it is unusable."""
    acc = spec.accuracy
    if acc is None:
        raise SpecError(f"{spec.source_file}: no 'accuracy' section (calibration inputs and "
                        "tolerance) - reduced precision cannot be admitted without one")
    digest = hashlib.sha256()
    if acc.synthetic is not None:
        inputs = _synthetic(spec, acc.synthetic, acc.seed)
        digest.update(f"synthetic:{acc.synthetic}:{acc.seed}".encode())
        source = f"synthetic ({acc.synthetic} rows, seed {acc.seed})"
    else:
        files = (acc.calibration if isinstance(acc.calibration, dict)
                 else {spec.inputs[0].name: str(acc.calibration)})
        if len(spec.inputs) > 1 and not isinstance(acc.calibration, dict):
            raise SpecError(f"{spec.source_file}: accuracy.calibration: the spec has "
                            f"{len(spec.inputs)} inputs; map each input name to a .npy file")
        inputs = {}
        for tensor in spec.inputs:
            if tensor.name not in files:
                raise SpecError(f"{spec.source_file}: accuracy.calibration: no file for input "
                                f"'{tensor.name}'")
            field = f"accuracy.calibration.{tensor.name}"
            array = _load_npy(spec, files[tensor.name], field)
            _check_shape(array, tensor, f"{spec.source_file}: {field} ({files[tensor.name]})")
            dtype = numpy_dtype(tensor.datatype) if tensor.datatype != "BF16" else np.dtype("f4")
            inputs[tensor.name] = np.ascontiguousarray(array, dtype=dtype)
            digest.update(inputs[tensor.name].tobytes())
        source = ", ".join(sorted(set(files.values())))
    rows = {len(a) for a in inputs.values()}
    if len(rows) != 1:
        raise SpecError(f"{spec.source_file}: accuracy.calibration: inputs have different row "
                        f"counts {sorted(rows)}")
    labels = None
    if acc.labels is not None:
        labels = _load_npy(spec, acc.labels, "accuracy.labels")
        if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) not in rows:
            raise SpecError(f"{spec.source_file}: accuracy.labels ({acc.labels}): expected one "
                            f"integer class per calibration row ({rows.pop()}), got "
                            f"{labels.dtype} {list(labels.shape)}")
        labels = labels.astype(np.int64)
        digest.update(labels.tobytes())
    return Calibration(inputs, labels, digest.hexdigest()[:24], source)


SPLIT_RULE = "spread-v1"  # keys the cached artifacts and logits of each part


@dataclass(frozen=True)
class Split:
    """The calibration set split in two disjoint parts (row indices, ascending)."""

    quantization: np.ndarray  # rows the int8 quantizer calibrates activation ranges on
    held_out: np.ndarray  # rows the accuracy admission measures agreement / accuracy on

    @property
    def tag(self) -> str:
        return f"{SPLIT_RULE}:{len(self.quantization)}/{len(self.quantization) + len(self.held_out)}"


def split_rows(total: int, quantization_samples: int) -> Split:
    """q = min(`quantization_samples`, total // 2) rows spread evenly over the set (row
    (i * total) // q for i < q, so a file sorted by class still gives the quantizer every
    part of it) calibrate int8; the other rows are held out for admission."""
    if total < 2:
        raise SpecError(f"accuracy.calibration: {total} row(s); at least 2 are needed (one "
                        "to calibrate int8 on, one held out to admit it)")
    q = max(1, min(quantization_samples, total // 2))
    chosen = np.unique((np.arange(q) * total) // q)
    rest = np.setdiff1d(np.arange(total), chosen, assume_unique=True)
    return Split(chosen, rest)


def calibration_split(spec: EnsembleSpec, calibration: Calibration) -> Split:
    count = spec.accuracy.quantization_samples if spec.accuracy else 64
    return split_rows(calibration.rows, count)


def _subset(calibration: Calibration, rows: np.ndarray, part: str, tag: str) -> Calibration:
    digest = hashlib.sha256(f"{calibration.digest}:{part}:{tag}".encode()).hexdigest()[:24]
    return Calibration({k: v[rows] for k, v in calibration.inputs.items()},
                       calibration.labels[rows] if calibration.labels is not None else None,
                       digest, f"{calibration.source}, {part} rows ({tag})")


def held_out(spec: EnsembleSpec, calibration: Calibration, split: Split | None = None
             ) -> Calibration:
    """The rows the admission measures on (never those int8 was calibrated on); its
    digest covers the split (`split`: the one `calibration_split` gave, if at hand)."""
    split = split or calibration_split(spec, calibration)
    return _subset(calibration, split.held_out, "held-out", split.tag)


def quantization_set(spec: EnsembleSpec, calibration: Calibration) -> Calibration:
    """The rows int8 activation ranges are calibrated on; its digest covers the split (it
    keys the quantized model)."""
    split = calibration_split(spec, calibration)
    return _subset(calibration, split.quantization, "quantization", split.tag)


def quantization_rows(spec: EnsembleSpec, member: MemberSpec, calibration: Calibration
                      ) -> np.ndarray:
    """The member's input on the quantization rows (`split_rows`)."""
    return quantization_set(spec, calibration).for_member(spec, member)


__all__ = ["Calibration", "Split", "calibration_split", "held_out", "load_calibration",
           "quantization_rows", "quantization_set", "split_rows"]
