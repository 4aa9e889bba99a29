"""Top-1 agreement measured during a bench: the plan under test against the fp32 plan,
both running, on the spec's calibration set (with accuracy where it has labels).

The planner admits reduced precision from an agreement measured when profiling; this is
the same figure taken from the engines actually serving, so a report's throughput and
agreement come from one run."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import numpy as np

Infer = Callable[[Mapping[str, np.ndarray]], np.ndarray]
"""Inputs (rows along axis 0) → the ensemble's probabilities for those rows."""


@dataclass(frozen=True)
class LiveAgreement:
    rows: int
    top1_agreement: float
    accuracy: float | None = None  # of the plan under test, where labels exist
    reference_accuracy: float | None = None  # of the fp32 plan

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)

    def describe(self) -> str:
        text = (f"top-1 agreement with the fp32 plan {self.top1_agreement:.2%} on "
                f"{self.rows} calibration rows")
        if self.accuracy is not None and self.reference_accuracy is not None:
            drop = (self.reference_accuracy - self.accuracy) * 100
            text += (f"; accuracy {self.accuracy:.2%} vs {self.reference_accuracy:.2%} "
                     f"(drop {drop:.2f} pp)")
        return text


def top1(infer: Infer, inputs: Mapping[str, np.ndarray], max_rows: int) -> np.ndarray:
    """Each row's top-1 class, asked in batches of at most `max_rows` rows."""
    rows = len(next(iter(inputs.values())))
    classes = []
    for start in range(0, rows, max_rows):
        part = {name: a[start:start + max_rows] for name, a in inputs.items()}
        classes.append(np.asarray(infer(part)).argmax(axis=1))
    return np.concatenate(classes) if classes else np.zeros(0, dtype=np.int64)


def live_agreement(tested: Infer, reference: Infer, inputs: Mapping[str, np.ndarray],
                   labels: np.ndarray | None, max_rows: int) -> LiveAgreement:
    """Agreement of `tested` with `reference` on `inputs` (and both accuracies on
    `labels`)."""
    got, want = top1(tested, inputs, max_rows), top1(reference, inputs, max_rows)
    if len(got) == 0:
        raise ValueError("no calibration rows to compare")
    accuracy = reference_accuracy = None
    if labels is not None:
        accuracy = float(np.mean(got == labels))
        reference_accuracy = float(np.mean(want == labels))
    return LiveAgreement(len(got), float(np.mean(got == want)), accuracy, reference_accuracy)
