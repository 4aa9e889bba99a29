"""Ensemble specs: the YAML a user writes, validated into objects (and back).

A spec names the request inputs, the members (each with a model source and optional
preprocessing) and the combination rule. Paths in a spec resolve inside the spec's
folder and may not escape it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from enserve.errors import SpecError

Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BF16",
]
CombinerName = Literal[
    "mean_prob", "weighted_mean_prob", "mean_logits", "majority_vote", "max_prob", "geometric_mean"
]
SOURCE_KINDS = ("torchvision", "torchscript", "export", "onnx", "safetensors", "python", "simulate")


class TensorSpec(BaseModel):
    """One named tensor of a request or response; -1 in `shape` marks a variable axis."""

    model_config = ConfigDict(extra="forbid")

    name: str
    datatype: Datatype = "FP32"
    shape: list[int]

    @field_validator("shape")
    @classmethod
    def _shape_dims(cls, shape: list[int]) -> list[int]:
        if not shape:
            raise ValueError("shape must have at least one axis (the batch axis, -1)")
        if any(d == 0 or d < -1 for d in shape):
            raise ValueError(f"shape {shape}: each axis is a positive size or -1")
        return shape


class Preprocess(BaseModel):
    """Per-member input preparation, applied in this order: dtype cast, scale, resize, normalize."""

    model_config = ConfigDict(extra="forbid")

    dtype: Literal["float32", "float64", "float16"] = "float32"
    scale: float | None = None
    resize: tuple[int, int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None

    @model_validator(mode="after")
    def _mean_std_pair(self) -> Preprocess:
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std must be given together")
        if self.mean is not None and self.std is not None:
            if len(self.mean) != len(self.std):
                raise ValueError(f"mean has {len(self.mean)} values but std has {len(self.std)}")
            if any(s <= 0 for s in self.std):
                raise ValueError("std values must be positive")
        return self


class MemberSpec(BaseModel):
    """One model of the ensemble.

    `source` is `KIND:REST`: `torchvision:<arch>`, `torchscript:<path>`, `export:<path>`
    (.pt2), `onnx:<path>`, `safetensors:<path>` (needs `architecture`), or
    `python:<module or file.py>:<factory>`, or `simulate:<profile.json>#<member>` (a profiled
    member simulated: see `enserve.members.simulated`).
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    source: str
    weight: float | None = None
    input: str | None = None
    architecture: str | None = None
    weights: str | None = None
    seed: int = 0
    num_classes: int | None = None
    preprocess: Preprocess | None = None

    @property
    def kind(self) -> str:
        return self.source.split(":", 1)[0]

    @property
    def target(self) -> str:
        return self.source.split(":", 1)[1] if ":" in self.source else ""

    @field_validator("source")
    @classmethod
    def _known_kind(cls, source: str) -> str:
        kind, sep, rest = source.partition(":")
        if not sep or not rest:
            raise ValueError(f"'{source}' is not KIND:TARGET (kinds: {', '.join(SOURCE_KINDS)})")
        if kind not in SOURCE_KINDS:
            raise ValueError(f"unknown source kind '{kind}' (expected one of {', '.join(SOURCE_KINDS)})")
        return source

    @field_validator("weight")
    @classmethod
    def _positive_weight(cls, weight: float | None) -> float | None:
        if weight is not None and not weight > 0:
            raise ValueError(f"weight must be > 0, got {weight}")
        return weight

    @model_validator(mode="after")
    def _architecture_when_needed(self) -> MemberSpec:
        if self.kind == "safetensors" and not self.architecture:
            raise ValueError(
                "a safetensors source needs 'architecture' (torchvision:<arch> or "
                "python:<module>:<factory>)"
            )
        return self


class AccuracySpec(BaseModel):
    """The calibration set and tolerance that admit reduced-precision variants.

    `calibration` is a `.npy` file (the spec's single input) or a mapping from input name
    to `.npy` file, rows along the first axis; `synthetic: N` instead draws N standard
    normal rows per input (seeded; for models with random weights, where only agreement
    means anything). `labels` (`.npy`, integer class per row) enables `max_accuracy_drop`
    (a fraction: 0.002 = 0.2 percentage points). `quantization_samples` rows (at most
    half the set, spread over it) calibrate int8 activation ranges; the admission measures
    on the other rows (`enserve.precision.calibration.split_rows`).
    """

    model_config = ConfigDict(extra="forbid")

    calibration: str | dict[str, str] | None = None
    synthetic: int | None = Field(default=None, ge=1)
    seed: int = 0
    labels: str | None = None
    min_top1_agreement: float = Field(default=0.99, ge=0.0, le=1.0)
    max_accuracy_drop: float | None = Field(default=None, ge=0.0, le=1.0)
    quantization_samples: int = Field(default=64, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> AccuracySpec:
        if (self.calibration is None) == (self.synthetic is None):
            raise ValueError("give either 'calibration' (.npy inputs) or 'synthetic' (a count)")
        if self.max_accuracy_drop is not None and self.labels is None:
            raise ValueError("max_accuracy_drop needs 'labels'")
        if self.labels is not None and self.synthetic is not None:
            raise ValueError("'labels' belong to a calibration file, not to synthetic inputs")
        return self


def _default_outputs() -> list[TensorSpec]:
    return [TensorSpec(name="probabilities", datatype="FP32", shape=[-1, -1])]


class EnsembleSpec(BaseModel):
    """A whole ensemble. `base_dir` is where relative paths resolve (the spec's folder)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    version: str = "1"
    description: str = ""
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(default_factory=_default_outputs)
    members: list[MemberSpec] = Field(min_length=1)
    combiner: CombinerName = "mean_prob"
    weights: list[float] | None = None
    top_k: int = Field(default=5, ge=1)
    return_members: bool = False
    accuracy: AccuracySpec | None = None
    base_dir: Path = Field(default_factory=Path.cwd, exclude=True)
    source_file: str = Field(default="<python>", exclude=True)

    @model_validator(mode="after")
    def _consistent(self) -> EnsembleSpec:
        names = [m.name for m in self.members]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"member names must be unique; repeated: {', '.join(dupes)}")
        input_names = {t.name for t in self.inputs}
        for i, m in enumerate(self.members):
            if m.input is not None and m.input not in input_names:
                raise ValueError(
                    f"members.{i}.input: '{m.input}' is not one of the inputs "
                    f"({', '.join(sorted(input_names))})"
                )
        if self.weights is not None:
            if len(self.weights) != len(self.members):
                raise ValueError(
                    f"weights: {len(self.weights)} values given for {len(self.members)} members"
                )
            if any(m.weight is not None for m in self.members):
                raise ValueError("weights: give either the top-level list or per-member weight")
            if any(not w > 0 for w in self.weights):
                raise ValueError("weights: every weight must be > 0")
        return self

    def member_weights(self) -> list[float]:
        """Each member's weight (1.0 where none is given)."""
        if self.weights is not None:
            return list(self.weights)
        return [m.weight if m.weight is not None else 1.0 for m in self.members]

    def input_for(self, member: MemberSpec) -> TensorSpec:
        name = member.input or self.inputs[0].name
        return next(t for t in self.inputs if t.name == name)

    def member(self, name: str) -> MemberSpec:
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(name)

    def resolve_path(self, relative: str, field: str) -> Path:
        """Resolve a path named by the spec; it must exist and stay inside `base_dir`."""
        return resolve_inside(self.base_dir, relative, f"{self.source_file}: {field}")


def resolve_inside(base_dir: Path, relative: str, where: str) -> Path:
    base = base_dir.resolve()
    path = (base / relative).resolve()
    if not path.is_relative_to(base):
        raise SpecError(f"{where}: path '{relative}' escapes the spec's folder {base}")
    if not path.exists():
        raise SpecError(f"{where}: file '{relative}' not found (looked at {path})")
    return path


def _format_validation_error(exc: ValidationError, where: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "literal_error":
            msg = f"got {err.get('input')!r}; {msg}"
        lines.append(f"{where}: field '{loc}': {msg}")
    return "\n".join(lines)


def spec_from_dict(data: dict[str, Any], base_dir: Path | None = None, where: str = "<dict>") -> EnsembleSpec:
    """Validate a spec given as a mapping; errors name `where` and the field."""
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        spec = EnsembleSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_format_validation_error(exc, where)) from None
    spec.base_dir = (base_dir or Path.cwd()).resolve()
    spec.source_file = where
    return spec


def load_spec(path: str | Path) -> EnsembleSpec:
    """Read and validate a YAML spec file. Raises SpecError naming the file and field."""
    path = Path(path)
    if path.is_dir():
        path = path / "ensemble.yaml"
    if not path.is_file():
        raise SpecError(f"{path}: spec file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    return spec_from_dict(data, base_dir=path.parent, where=str(path))


def dump_spec(spec: EnsembleSpec) -> str:
    """The spec as YAML (defaults included)."""
    return yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True), sort_keys=False)
