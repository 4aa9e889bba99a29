"""Checking request tensors against a spec, and shaping responses (framework-free)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from enserve.combine import top_k
from enserve.datatypes import numpy_dtype, v2_datatype
from enserve.errors import InferenceError
from enserve.spec import EnsembleSpec


class ValidInputs(dict[str, np.ndarray]):
    """A request's inputs as `validate_inputs` returned them: every declared input, in its
    declared dtype, C-contiguous, `rows` rows each. Whoever receives one need not check it
    again."""

    rows: int


def validate_inputs(
    spec: EnsembleSpec, inputs: Mapping[str, np.ndarray] | np.ndarray, max_batch: int | None = None
) -> ValidInputs:
    """Return the request's inputs as arrays of the declared dtype; raise InferenceError on
    a missing/unknown input, a wrong rank or axis size, a mismatched batch or a non-finite
    float value."""
    if isinstance(inputs, np.ndarray):
        inputs = {spec.inputs[0].name: inputs}
    declared = {t.name: t for t in spec.inputs}
    unknown = sorted(set(inputs) - set(declared))
    if unknown:
        raise InferenceError(f"unknown input(s) {unknown}; '{spec.name}' takes {sorted(declared)}")
    out = ValidInputs()
    batch: int | None = None
    for name, tspec in declared.items():
        if name not in inputs:
            raise InferenceError(f"missing input '{name}'")
        arr = np.asarray(inputs[name])
        want = numpy_dtype(tspec.datatype)
        if arr.dtype != want:
            if arr.dtype.kind in "fiub" and np.can_cast(arr.dtype, want, casting="same_kind"):
                arr = arr.astype(want)
            else:
                raise InferenceError(
                    f"input '{name}': datatype {v2_datatype_or_name(arr.dtype)} given, "
                    f"{tspec.datatype} expected"
                )
        if arr.ndim != len(tspec.shape):
            raise InferenceError(
                f"input '{name}': shape {list(arr.shape)} has {arr.ndim} axes, "
                f"expected {len(tspec.shape)} like {tspec.shape}"
            )
        for axis, (got, expected) in enumerate(zip(arr.shape, tspec.shape, strict=True)):
            if expected != -1 and got != expected:
                raise InferenceError(
                    f"input '{name}': axis {axis} is {got}, expected {expected} (shape {tspec.shape})"
                )
        if arr.shape[0] == 0:
            raise InferenceError(f"input '{name}': empty batch")
        if batch is None:
            batch = arr.shape[0]
        elif arr.shape[0] != batch:
            raise InferenceError(f"input '{name}': batch {arr.shape[0]} differs from {batch}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise InferenceError(f"input '{name}': contains NaN or infinity")
        out[name] = np.ascontiguousarray(arr)
    if max_batch is not None and batch is not None and batch > max_batch:
        raise InferenceError(f"batch {batch} exceeds the limit {max_batch}")
    assert batch is not None  # a spec declares at least one input
    out.rows = batch
    return out


def v2_datatype_or_name(dtype: np.dtype) -> str:
    try:
        return v2_datatype(dtype)
    except ValueError:
        return str(dtype)


@dataclass
class EnsembleResult:
    """What an ensemble answers for one batch.

    `member_logits` holds the members whose logits were asked for. Where the engine
    answered, `member_s` gives each member's time for this request's batch (from the
    batch's start until that member's last rows were in) and `queue_s` the wait before the
    batch started."""

    probabilities: np.ndarray
    agreement: np.ndarray
    member_logits: dict[str, np.ndarray] = field(default_factory=dict)
    members: tuple[str, ...] | None = None  # the members combined (None: every member)
    member_s: dict[str, float] = field(default_factory=dict)
    queue_s: float = 0.0

    def outputs(self, spec: EnsembleSpec, requested: list[str] | None = None) -> dict[str, np.ndarray]:
        """Named output tensors. Always available: `probabilities`, `agreement`,
        `top_k_indices`/`top_k_scores` (k = spec.top_k) and `logits_<member>` per member."""
        indices, scores = top_k(self.probabilities, spec.top_k)
        all_out: dict[str, np.ndarray] = {
            "probabilities": self.probabilities,
            "agreement": self.agreement,
            "top_k_indices": indices,
            "top_k_scores": scores,
        }
        for name, logits in self.member_logits.items():
            all_out[f"logits_{name}"] = logits
        if requested is None:
            requested = default_outputs(spec)
        missing = [n for n in requested if n not in all_out]
        if missing:
            raise InferenceError(f"unknown output(s) {missing}; available: {sorted(all_out)}")
        return {n: all_out[n] for n in requested}


def default_outputs(spec: EnsembleSpec) -> list[str]:
    """What a request that names no outputs gets: the probabilities, and every member's
    logits when the spec says `return_members`."""
    names = ["probabilities"]
    if spec.return_members:
        names += [f"logits_{m.name}" for m in spec.members]
    return names


def output_names(spec: EnsembleSpec) -> list[str]:
    return ["probabilities", "agreement", "top_k_indices", "top_k_scores"] + [
        f"logits_{m.name}" for m in spec.members
    ]


def v2_json_response(
    model_name: str, outputs: Mapping[str, np.ndarray], model_version: str | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """A response in the Open Inference Protocol's JSON shape."""
    response: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        response["model_version"] = model_version
    if request_id:
        response["id"] = request_id
    response["outputs"] = [
        {
            "name": name,
            "datatype": v2_datatype(arr.dtype),
            "shape": list(arr.shape),
            "data": arr.reshape(-1).tolist(),
        }
        for name, arr in outputs.items()
    ]
    return response
