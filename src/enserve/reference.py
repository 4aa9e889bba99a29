"""The in-process reference executor: each member in turn on the same batch, then the
combiner. It is the correctness oracle for every faster path and the naive baseline."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from enserve.combine import agreement, combine
from enserve.errors import SpecError
from enserve.members import Member, load_member
from enserve.result import EnsembleResult, validate_inputs
from enserve.spec import EnsembleSpec
from enserve.validated import known_output_shape, remember_output_shape


def check_output_shapes(spec: EnsembleSpec, members: Mapping[str, Member]) -> tuple[int, ...]:
    """Probe every member and fail (naming them) if their output shapes disagree.

    An ensemble validated before (same inputs, same member fingerprints: see
    `enserve.validated`) is not probed again: its remembered shape is returned."""
    known = known_output_shape(spec)
    if known is not None:
        return known
    shape = _probe_output_shapes(spec, members)
    remember_output_shape(spec, shape)
    return shape


def _probe_output_shapes(spec: EnsembleSpec, members: Mapping[str, Member]) -> tuple[int, ...]:
    shapes: dict[str, tuple[int, ...]] = {}
    for m in spec.members:
        tensor = spec.input_for(m)
        request_shape = tuple(d if d > 0 else 1 for d in tensor.shape)
        try:
            shapes[m.name] = members[m.name].signature(request_shape).output_shape
        except Exception as exc:
            raise SpecError(
                f"{spec.source_file}: member '{m.name}' fails on input '{tensor.name}' "
                f"{list(request_shape)}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from None
    distinct = set(shapes.values())
    if len(distinct) > 1:
        detail = ", ".join(f"{n}: {list(s)}" for n, s in shapes.items())
        raise SpecError(f"{spec.source_file}: members: output shapes disagree ({detail})")
    shape = distinct.pop()
    if len(shape) != 2:
        raise SpecError(
            f"{spec.source_file}: members: outputs must be logits [batch, classes], got {list(shape)}"
        )
    return shape


class ReferenceExecutor:
    """Loads every member in this process and answers batches one after another."""

    def __init__(
        self,
        spec: EnsembleSpec,
        members: Mapping[str, Member] | None = None,
        threads: int | None = None,
    ) -> None:
        self.spec = spec
        self.members: dict[str, Member] = dict(members) if members else {
            m.name: load_member(spec, m, threads=threads) for m in spec.members
        }
        self.output_shape = check_output_shapes(spec, self.members)
        self.weights = spec.member_weights()

    def member_logits(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {
            m.name: self.members[m.name](inputs[self.spec.input_for(m).name])
            for m in self.spec.members
        }

    def infer(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> EnsembleResult:
        """Validate a request batch, run every member, combine."""
        arrays = validate_inputs(self.spec, inputs)
        logits = self.member_logits(arrays)
        return self.combine(logits)

    def combine(self, logits: Mapping[str, np.ndarray]) -> EnsembleResult:
        stacked = np.stack([logits[m.name] for m in self.spec.members])
        probs = combine(stacked, self.spec.combiner, self.weights)
        return EnsembleResult(probs, agreement(stacked, probs), dict(logits))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.infer(batch).probabilities
