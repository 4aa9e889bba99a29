"""Planning: which member instances run on which device, how, and with what share.

`plan(profile, algorithm=..., objective=..., constraints=..., devices=...) -> Plan` is the
entry point; every algorithm is a pure function of the profile, devices and constraints.
See docs/planner.md for the formats, the cost model and the algorithms.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from enserve.formats.plan import OBJECTIVES, Instance, Plan, Predicted, load_plan, save_plan
from enserve.plan.cost import CostReport, evaluate
from enserve.plan.problem import Constraints
from enserve.plan.solve import ALGORITHMS, SOLVERS, plan, to_plan

__all__ = [
    "ALGORITHMS",
    "OBJECTIVES",
    "SOLVERS",
    "Constraints",
    "CostReport",
    "Instance",
    "Plan",
    "Predicted",
    "evaluate",
    "load_plan",
    "plan",
    "save_plan",
    "to_plan",
]


class _PlanPackage(types.ModuleType):
    """`enserve.plan(profile, ...)` is `enserve.plan.plan(profile, ...)`: the package is
    also the planner's entry point, so the public name works whichever was imported
    first (an imported subpackage takes its name in `enserve`'s namespace)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Plan:
        return plan(*args, **kwargs)


sys.modules[__name__].__class__ = _PlanPackage
