"""enserve: serve ensembles of deep neural networks.

The names a Python user needs, from loading a spec to serving it::

    import enserve

    spec = enserve.load_spec("examples/digits")
    result = enserve.ReferenceExecutor(spec).infer(batch)       # the exact answer
    profile = enserve.profile_spec("examples/digits")           # measure members
    plan = enserve.plan(profile)                                # place instances
    with enserve.Engine(spec, plan) as engine:                  # run the plan
        result = engine.infer_sync(batch)
    enserve.serve(enserve.ServerConfig(repository=Path("examples")))  # HTTP + gRPC

Names load on first use, so `import enserve` stays light (no torch) for the CLI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from enserve.errors import (
        DeadlineError,
        EnserveError,
        InferenceError,
        MemberFailedError,
        ModelLoadError,
        OverloadedError,
        PlanError,
        ProfileError,
        SpecError,
        UnavailableError,
    )
    from enserve.formats.plan import Plan, load_plan, save_plan
    from enserve.formats.profile import Profile, load_profile, save_profile
    from enserve.plan import plan
    from enserve.profiler import profile_spec
    from enserve.reference import ReferenceExecutor
    from enserve.result import EnsembleResult
    from enserve.runtime.engine import Engine
    from enserve.server.app import ServerConfig
    from enserve.server.app import run as serve
    from enserve.spec import EnsembleSpec, load_spec

#: public name -> (module, attribute)
_PUBLIC: dict[str, tuple[str, str]] = {
    "load_spec": ("enserve.spec", "load_spec"),
    "EnsembleSpec": ("enserve.spec", "EnsembleSpec"),
    "ReferenceExecutor": ("enserve.reference", "ReferenceExecutor"),
    "EnsembleResult": ("enserve.result", "EnsembleResult"),
    "profile_spec": ("enserve.profiler", "profile_spec"),
    "Profile": ("enserve.formats.profile", "Profile"),
    "load_profile": ("enserve.formats.profile", "load_profile"),
    "save_profile": ("enserve.formats.profile", "save_profile"),
    "plan": ("enserve.plan", "plan"),
    "Plan": ("enserve.formats.plan", "Plan"),
    "load_plan": ("enserve.formats.plan", "load_plan"),
    "save_plan": ("enserve.formats.plan", "save_plan"),
    "Engine": ("enserve.runtime.engine", "Engine"),
    "ServerConfig": ("enserve.server.app", "ServerConfig"),
    "serve": ("enserve.server.app", "run"),
    "EnserveError": ("enserve.errors", "EnserveError"),
    "SpecError": ("enserve.errors", "SpecError"),
    "ModelLoadError": ("enserve.errors", "ModelLoadError"),
    "ProfileError": ("enserve.errors", "ProfileError"),
    "PlanError": ("enserve.errors", "PlanError"),
    "InferenceError": ("enserve.errors", "InferenceError"),
    "OverloadedError": ("enserve.errors", "OverloadedError"),
    "UnavailableError": ("enserve.errors", "UnavailableError"),
    "MemberFailedError": ("enserve.errors", "MemberFailedError"),
    "DeadlineError": ("enserve.errors", "DeadlineError"),
}

__all__ = [
    "DeadlineError",
    "Engine",
    "EnsembleResult",
    "EnsembleSpec",
    "EnserveError",
    "InferenceError",
    "MemberFailedError",
    "ModelLoadError",
    "OverloadedError",
    "Plan",
    "PlanError",
    "Profile",
    "ProfileError",
    "ReferenceExecutor",
    "ServerConfig",
    "SpecError",
    "UnavailableError",
    "__version__",
    "load_plan",
    "load_profile",
    "load_spec",
    "plan",
    "profile_spec",
    "save_plan",
    "save_profile",
    "serve",
]


def __getattr__(name: str) -> Any:
    target = _PUBLIC.get(name)
    if target is None:
        raise AttributeError(f"module 'enserve' has no attribute '{name}'")
    value = getattr(importlib.import_module(target[0]), target[1])
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
