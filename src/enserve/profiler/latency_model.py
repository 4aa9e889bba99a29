"""A latency and memory model of one member (variant, device) fitted to a few measurements.

The adaptive profiler (`enserve.profiler.adaptive`) measures a handful of settings per
member and models the rest of the grid with

    latency(b, s) = (alpha + beta * b) * (f + (1 - f) * s_ref / s)
    memory(b)     = m0 + m1 * b

* affine in the batch size b at the reference share s_ref (the largest share measured):
  a fixed cost alpha per batch plus beta per sample, so samples/s saturate at 1 / beta as
  batches grow (least squares on the points measured at s_ref, alpha and beta >= 0; with
  one batch size measured alpha = 0, which over-estimates large batches' cost);
* Amdahl-like in the share s (cores, or GPU percent): a serial fraction f that does not
  speed up with more units (fitted from the points at other shares, in [0, 1]; without
  any, `prior_serial`);
* memory affine in b (weights plus working memory per sample), never below what was
  measured at the smallest batch.

Measured points are never replaced by the model: `predict` is only used where nothing was
measured. Pure: no torch, no processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

PRIOR_SERIAL = {"cpu": 0.15, "cuda": 0.5}


@dataclass(frozen=True)
class Measured:
    """One measured setting: batch size, share, median latency (s), memory (bytes)."""

    batch_size: int
    share: float
    latency_s: float
    memory_bytes: int


@dataclass(frozen=True)
class LatencyModel:
    alpha: float
    beta: float
    serial: float
    reference_share: float
    memory_base: float
    memory_per_sample: float

    def latency(self, batch_size: int, share: float) -> float:
        amdahl = self.serial + (1.0 - self.serial) * self.reference_share / share
        return max((self.alpha + self.beta * batch_size) * amdahl, 1e-9)

    def memory(self, batch_size: int) -> int:
        return max(round(self.memory_base + self.memory_per_sample * batch_size), 1)


def fit(points: Sequence[Measured], kind: str = "cpu",
        prior_serial: float | None = None) -> LatencyModel:
    """Fit the model to `points` (at least one). See the module docstring."""
    if not points:
        raise ValueError("fit needs at least one measured point")
    reference = max(p.share for p in points)
    at_ref = [p for p in points if p.share == reference]
    alpha, beta = _affine(np.array([p.batch_size for p in at_ref], dtype=np.float64),
                          np.array([p.latency_s for p in at_ref]))
    serial = PRIOR_SERIAL.get(kind, 0.3) if prior_serial is None else prior_serial
    ratios = []
    for p in points:
        if p.share >= reference:
            continue
        scale = reference / p.share  # how much slower a perfectly parallel part gets
        base = alpha + beta * p.batch_size
        ratio = p.latency_s / base
        ratios.append(float(np.clip((ratio - scale) / (1.0 - scale), 0.0, 1.0)))
    if ratios:
        serial = float(np.mean(ratios))
    m_alpha, m_beta = _affine(np.array([p.batch_size for p in points], dtype=np.float64),
                              np.array([float(p.memory_bytes) for p in points]))
    smallest = min(points, key=lambda p: p.batch_size)
    floor = smallest.memory_bytes - m_beta * smallest.batch_size
    return LatencyModel(alpha, beta, serial, reference, max(m_alpha, floor), m_beta)


def scaled_like(shape: LatencyModel, point: Measured, own: LatencyModel) -> LatencyModel:
    """`shape`'s batch and share dependence, scaled so that it passes through `point`;
    memory stays `own`'s (fitted to the point)."""
    factor = point.latency_s / shape.latency(point.batch_size, point.share)
    return replace(shape, alpha=shape.alpha * factor, beta=shape.beta * factor,
                   memory_base=own.memory_base, memory_per_sample=own.memory_per_sample)


def _affine(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares y = a + b x with a, b >= 0 (b = y / x through the origin for one x)."""
    if len(np.unique(x)) < 2:
        return 0.0, float(np.mean(y / x))
    b, a = np.polyfit(x, y, 1)
    if a < 0:  # through the origin
        return 0.0, float((x @ y) / (x @ x))
    if b < 0:  # flat
        return float(np.mean(y)), 0.0
    return float(a), float(b)
