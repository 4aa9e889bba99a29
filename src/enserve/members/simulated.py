"""A member that simulates a profiled one: `source: "simulate:profile.json#resnet50"`.

It sleeps for the profile's latency at the batch size it is given (piecewise linear between
profiled batch sizes; a smaller batch costs the smallest profiled one, a larger one scales
from the largest), holds the profiled memory (up to `ENSERVE_SIMULATE_HOLD_MB`, default 32
MiB, so that a 12 x 80 GB scenario fits on a laptop; `param_bytes` reports the full figure)
and returns deterministic logits computed from the input (a fixed random projection of up to
256 input values, seeded by the member's name and seed), so that every path can still be
checked against the reference executor.

Which profile entries: those of one device kind and share, by default the first profile
device the member has entries on, at its largest share; the runtime calls
`configure(kind, share)` with the planned instance's device kind and share.
"""

from __future__ import annotations

import bisect
import os
import time
import zlib
from pathlib import Path

import numpy as np

from enserve.errors import ModelLoadError
from enserve.formats.profile import Profile, ProfileEntry, load_profile
from enserve.members.base import Member
from enserve.members.preprocess import Preprocessor

HOLD_ENV = "ENSERVE_SIMULATE_HOLD_MB"
DEFAULT_HOLD_MB = 32.0
DEFAULT_CLASSES = 10
_FEATURES = 256


class SimulatedMember(Member):
    framework = "simulated"
    variant = "simulated"

    def __init__(self, name: str, profile: Profile, profiled_name: str, *, num_classes: int | None,
                 seed: int = 0, preprocessor: Preprocessor | None = None, where: str = "") -> None:
        super().__init__(name, preprocessor)
        self.profiled_name = profiled_name
        self._entries = [e for e in profile.entries_for(profiled_name)]
        if not self._entries:
            raise ModelLoadError(f"{where}: the profile has no entries for member "
                                 f"'{profiled_name}'")
        self._kinds = {d.id: d.kind for d in profile.devices}
        self.classes = num_classes or DEFAULT_CLASSES
        self._seed = zlib.crc32(f"{name}:{seed}".encode()) & 0xFFFFFFFF
        self._projection: tuple[np.ndarray, np.ndarray] | None = None
        self._held = np.zeros(0, dtype=np.uint8)
        self.configure(None, None)

    def configure(self, device_kind: str | None, share: float | None) -> None:
        """Use the entries of `device_kind` at the share closest to `share` (default: the
        first profiled device's kind at its largest share)."""
        entries = self._entries
        kind = device_kind or self._kinds.get(entries[0].device, "cpu")
        of_kind = [e for e in entries if self._kinds.get(e.device) == kind] or entries
        device = of_kind[0].device
        on_device = [e for e in of_kind if e.device == device]
        shares = sorted({e.share for e in on_device})
        chosen = max(shares) if share is None else min(shares, key=lambda s: (abs(s - share), -s))
        points: dict[int, ProfileEntry] = {}
        for e in on_device:
            if e.share == chosen and (e.batch_size not in points
                                      or e.latency_s < points[e.batch_size].latency_s):
                points[e.batch_size] = e
        self.share = chosen
        self.device_kind = kind
        self._batches = sorted(points)
        self._latencies = [points[b].latency_s for b in self._batches]
        self._memory = max(points[b].memory_bytes for b in self._batches)
        hold_mb = float(os.environ.get(HOLD_ENV, DEFAULT_HOLD_MB))
        hold = int(min(self._memory, max(0.0, hold_mb) * 2**20))
        if hold != self._held.size:
            self._held = np.ones(hold, dtype=np.uint8)  # touched: really resident

    def latency_s(self, batch_size: int) -> float:
        """The simulated time of one batch of `batch_size` rows."""
        sizes, lats = self._batches, self._latencies
        if batch_size <= sizes[0]:
            return lats[0]
        if batch_size >= sizes[-1]:
            return lats[-1] * batch_size / sizes[-1]
        k = bisect.bisect_left(sizes, batch_size)
        b0, b1, l0, l1 = sizes[k - 1], sizes[k], lats[k - 1], lats[k]
        return l0 + (l1 - l0) * (batch_size - b0) / (b1 - b0)

    def run(self, batch: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        flat = np.asarray(batch, dtype=np.float32).reshape(batch.shape[0], -1)
        index, weights = self._weights(flat.shape[1])
        logits = np.tanh(flat[:, index] @ weights) * 3.0
        left = self.latency_s(batch.shape[0]) - (time.perf_counter() - started)
        if left > 0:
            time.sleep(left)
        return logits.astype(np.float32)

    def _weights(self, features: int) -> tuple[np.ndarray, np.ndarray]:
        if self._projection is None or self._projection[1].shape[0] != min(features, _FEATURES):
            rng = np.random.default_rng(self._seed)
            index = np.sort(rng.choice(features, size=min(features, _FEATURES), replace=False))
            weights = rng.standard_normal((index.size, self.classes)).astype(np.float32)
            self._projection = (index, weights / np.sqrt(index.size))
        return self._projection

    def param_bytes(self) -> int:
        return int(self._memory)


def parse_target(target: str, where: str) -> tuple[str, str | None]:
    """`profile.json#resnet50` -> ("profile.json", "resnet50"); no `#`: the member's name."""
    path, sep, member = target.partition("#")
    if not path:
        raise ModelLoadError(f"{where}: expected simulate:<profile.json>#<member>, got '{target}'")
    return path, (member if sep and member else None)


def load_simulated(name: str, path: Path, profiled_name: str, *, num_classes: int | None,
                   seed: int, preprocessor: Preprocessor, where: str) -> SimulatedMember:
    try:
        profile = load_profile(path)
    except Exception as exc:
        raise ModelLoadError(f"{where}: {exc}") from None
    return SimulatedMember(name, profile, profiled_name, num_classes=num_classes, seed=seed,
                           preprocessor=preprocessor, where=where)
