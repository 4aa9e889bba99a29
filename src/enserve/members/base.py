"""The one interface every member satisfies, whatever framework runs it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from enserve.members.preprocess import Preprocessor


@dataclass(frozen=True)
class Signature:
    """Input and output shapes (batch axis -1) of a member after its preprocessing."""

    input_shape: tuple[int, ...]
    input_dtype: str
    output_shape: tuple[int, ...]


class Member(ABC):
    """A loaded model that maps a request batch to logits `[batch, classes]` (float32).

    `__call__` applies the member's preprocessing then `run`; `run` takes an already
    prepared batch. Implementations must be safe to call from one thread at a time.
    """

    framework: str = "unknown"
    variant: str = "default"

    def __init__(self, name: str, preprocessor: Preprocessor | None = None) -> None:
        self.name = name
        self.preprocessor = preprocessor or Preprocessor(None)
        self._signature: Signature | None = None

    @abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a prepared batch."""

    @abstractmethod
    def param_bytes(self) -> int:
        """Bytes held by the model's weights."""

    def set_threads(self, threads: int) -> None:  # noqa: B027 - optional hook
        """Limit the intra-op threads this member uses (no-op where unsupported)."""

    def known_output_shape(self) -> tuple[int, ...] | None:
        """Its output shape `(-1, C…)` where the model declares it and running it once
        first would set nothing up (a worker then skips its warm-up batch); else None."""
        return None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        out = self.run(self.preprocessor(batch))
        return np.ascontiguousarray(out, dtype=np.float32)

    def signature(self, request_shape: tuple[int, ...]) -> Signature:
        """Probe the member once with a random batch of 1 to learn its output shape."""
        if self._signature is None:
            rng = np.random.default_rng(0)
            probe = rng.standard_normal((1, *request_shape[1:])).astype(np.float32)
            prepared = self.preprocessor(probe)
            out = self.run(prepared)
            self._signature = Signature(
                input_shape=(-1, *prepared.shape[1:]),
                input_dtype=str(prepared.dtype),
                output_shape=(-1, *out.shape[1:]),
            )
        return self._signature
