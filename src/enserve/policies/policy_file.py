"""`policy.json`: an ensemble's policies, beside its spec.

    {"version": 1,
     "default": "cascade",                      # what a request without `policy` gets
     "cascade": {"confidence": "max_prob",      # or "margin"
                 "stages": [{"members": ["mlp"], "threshold": 0.99},
                            {"members": ["wide", "deep"]}]},
     "reach": {"mlp": 1.0, "wide": 0.21, "deep": 0.21},   # rows each member computes
     "calibration": {...}}                      # what calibration measured (informational)

`enserve calibrate` writes it; the server reads it when it loads the ensemble; the
planner reads `reach` (a member reached by 30% of rows needs 30% of the capacity).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from enserve.errors import SpecError
from enserve.policies.cascade import NEVER, Cascade, Confidence, Stage
from enserve.spec import EnsembleSpec

POLICY_FILE = "policy.json"
PolicyName = Literal["full", "cascade"]
POLICIES: tuple[PolicyName, ...] = ("full", "cascade")


class _StageModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    members: list[str] = Field(min_length=1)
    threshold: float = Field(default=NEVER, ge=0, allow_inf_nan=False)


class _CascadeModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    confidence: Confidence = "max_prob"
    stages: list[_StageModel] = Field(min_length=1)


class _PolicyModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = 1
    default: PolicyName = "full"
    cascade: _CascadeModel | None = None
    reach: dict[str, float] = Field(default_factory=dict)
    calibration: dict[str, Any] = Field(default_factory=dict)


class Policy:
    """A validated policy file for one spec."""

    def __init__(self, default: PolicyName = "full", cascade: Cascade | None = None,
                 reach: dict[str, float] | None = None,
                 calibration: dict[str, Any] | None = None) -> None:
        self.default = default
        self.cascade = cascade
        self.reach = dict(reach or {})
        self.calibration = dict(calibration or {})

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"version": 1, "default": self.default}
        if self.cascade is not None:
            data["cascade"] = {
                "confidence": self.cascade.confidence,
                "stages": [{"members": list(s.members)}
                           | ({"threshold": s.threshold} if s.threshold < NEVER else {})
                           for s in self.cascade.stages],
            }
        if self.reach:
            data["reach"] = self.reach
        if self.calibration:
            data["calibration"] = self.calibration
        return data


def policy_from_dict(data: Any, spec: EnsembleSpec, where: str) -> Policy:
    """Validate a parsed policy against `spec`; SpecError names `where` and the field."""
    try:
        model = _PolicyModel.model_validate(data)
    except ValidationError as exc:
        lines = [f"{where}: field '{'.'.join(str(p) for p in e['loc']) or '(top level)'}': "
                 f"{str(e['msg']).removeprefix('Value error, ')}" for e in exc.errors()]
        raise SpecError("\n".join(lines)) from None
    cascade = None
    if model.cascade is not None:
        stages = tuple(Stage(tuple(s.members), s.threshold) for s in model.cascade.stages)
        try:
            cascade = Cascade(stages, model.cascade.confidence).validate(spec)
        except SpecError as exc:
            raise SpecError(f"{where}: {exc}") from None
    if model.default == "cascade" and cascade is None:
        raise SpecError(f"{where}: field 'default': 'cascade' needs a 'cascade' section")
    names = {m.name for m in spec.members}
    for member, value in model.reach.items():
        if member not in names:
            raise SpecError(f"{where}: field 'reach.{member}': not a member of '{spec.name}'")
        if not 0 <= value <= 1:
            raise SpecError(f"{where}: field 'reach.{member}': {value} is not in [0, 1]")
    return Policy(model.default, cascade, model.reach, model.calibration)


def load_policy(path: str | Path, spec: EnsembleSpec) -> Policy:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{path}: policy file not found") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise SpecError(f"{path}: cannot read policy file: {exc}") from None
    return policy_from_dict(data, spec, str(path))


def spec_policy(spec: EnsembleSpec) -> Policy:
    """The policy file beside the spec, or the default policy (`full`, no cascade)."""
    path = spec.base_dir / POLICY_FILE
    return load_policy(path, spec) if path.is_file() else Policy()


def save_policy(policy: Policy, path: str | Path) -> None:
    Path(path).write_text(json.dumps(policy.to_dict(), indent=2) + "\n", encoding="utf-8")
