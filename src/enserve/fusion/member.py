"""`FusedMember`: a fused group that the runtime drives like a `Member`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from enserve.combine import agreement, combine
from enserve.errors import InferenceError
from enserve.members.base import Member, Signature
from enserve.result import EnsembleResult, validate_inputs
from enserve.spec import EnsembleSpec

# Takes the request arrays in `input_names` order; returns stacked logits [M, B, C] and
# the in-graph combined probabilities [B, C] (None when the graph has no combiner).
Runner = Callable[[Sequence[np.ndarray]], tuple[np.ndarray, np.ndarray | None]]


class FusedMember(Member):
    """Several members executed as one unit (one fx graph, one vmap, one ORT session).

    Preprocessing happens inside the unit, so `__call__`/`run` take the raw request batch
    and return stacked logits `[len(member_names), B, C]` in `member_names` order.
    `member_logits` splits them per member, so the ordinary combiner still works;
    `infer` answers a whole request when the group is the whole ensemble, using the
    probabilities combined in-graph when there are any.
    """

    framework = "fused"

    def __init__(
        self,
        name: str,
        kind: str,
        spec: EnsembleSpec,
        member_names: Sequence[str],
        runner: Runner,
        param_bytes: int,
        set_threads: Callable[[int], None] | None = None,
        variant: str | None = None,
    ) -> None:
        super().__init__(name)
        self.kind = kind
        self.variant = variant or f"fused-{kind}"
        self.spec = spec
        self.member_names = list(member_names)
        used = {spec.input_for(spec.member(n)).name for n in self.member_names}
        self.input_names = [t.name for t in spec.inputs if t.name in used]
        self.covers_ensemble = set(self.member_names) == {m.name for m in spec.members}
        self._runner = runner
        self._param_bytes = param_bytes
        self._set_threads = set_threads

    def run_inputs(self, inputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """Stacked logits and in-graph probabilities (or None) for named request arrays."""
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise InferenceError(f"fused group '{self.name}' needs input(s) {missing}")
        arrays = [np.ascontiguousarray(inputs[n]) for n in self.input_names]
        stacked, probs = self._runner(arrays)
        return np.asarray(stacked, dtype=np.float32), probs

    def run(self, batch: np.ndarray) -> np.ndarray:
        if len(self.input_names) != 1:
            raise InferenceError(f"fused group '{self.name}' takes several inputs; use run_inputs")
        return self.run_inputs({self.input_names[0]: batch})[0]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.run(batch), dtype=np.float32)

    def member_logits(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        if isinstance(inputs, np.ndarray):
            inputs = {self.input_names[0]: inputs}
        stacked, _ = self.run_inputs(inputs)
        return {n: stacked[i] for i, n in enumerate(self.member_names)}

    def infer(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> EnsembleResult:
        """A whole ensemble answer (only when the group covers every member)."""
        if not self.covers_ensemble:
            raise InferenceError(f"fused group '{self.name}' is not the whole ensemble")
        arrays = validate_inputs(self.spec, inputs)
        stacked, probs = self.run_inputs(arrays)
        order = [self.member_names.index(m.name) for m in self.spec.members]
        stacked = stacked[order]
        if probs is None:
            probs = combine(stacked, self.spec.combiner, self.spec.member_weights())
        probs = np.asarray(probs, dtype=np.float32)
        logits = {m.name: stacked[i] for i, m in enumerate(self.spec.members)}
        return EnsembleResult(probs, agreement(stacked, probs), logits)

    def param_bytes(self) -> int:
        return self._param_bytes

    def set_threads(self, threads: int) -> None:
        if self._set_threads is not None:
            self._set_threads(max(1, threads))

    def signature(self, request_shape: tuple[int, ...]) -> Signature:
        """Per-member output shape `(-1, C)` probed with a random batch of 1."""
        if self._signature is None:
            rng = np.random.default_rng(0)
            probes = {}
            for t in self.spec.inputs:
                if t.name in self.input_names:
                    shape = tuple(d if d > 0 else 1 for d in t.shape)
                    probes[t.name] = rng.standard_normal(shape).astype(np.float32)
            stacked, _ = self.run_inputs(probes)
            first = probes[self.input_names[0]]
            self._signature = Signature(
                input_shape=(-1, *first.shape[1:]),
                input_dtype=str(first.dtype),
                output_shape=(-1, *stacked.shape[2:]),
            )
        return self._signature
