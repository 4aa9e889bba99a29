"""Digits demo: held-out accuracy with reduced precision allowed vs the fp32 ensemble.

Profiles examples/digits on this machine (its accuracy section admits reduced precision
on 512 training rows), plans with mixed precision, runs the plan in the engine over the
held-out split and compares with the fp32 reference executor on the same rows.

    python benchmarks/precision_digits.py [--json] [--adaptive [--budget-s 60]]

`--adaptive` profiles as `enserve plan SPEC` does by default (the adaptive profiler:
reduced variants deferred, admitted after the first plan while the budget lasts).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from enserve.demo.digits import DEFAULT_SPEC, digits_split
from enserve.formats.profile import profile_from_dict
from enserve.hardware import current_hardware
from enserve.plan.precision import choose_precision
from enserve.profiler import profile_spec
from enserve.profiler.adaptive_run import adaptive_profile_spec
from enserve.reference import ReferenceExecutor
from enserve.runtime.engine import Engine
from enserve.spec import load_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--adaptive", action="store_true",
                        help="profile adaptively (as `enserve plan SPEC`), not the full grid")
    parser.add_argument("--budget-s", type=float, default=60.0)
    args = parser.parse_args()
    spec = load_spec(DEFAULT_SPEC)
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    deferred: dict[str, list[str]] = {}
    if args.adaptive:
        data, _, _ = adaptive_profile_spec(DEFAULT_SPEC, batch_sizes=(8, 32), shares=[1],
                                           progress=False, budget_s=args.budget_s)
        profile = profile_from_dict(data)
        deferred = data["meta"]["adaptive"].get("deferred_variants") or {}
    else:
        profile = profile_spec(DEFAULT_SPEC, batch_sizes=(8, 32), shares=[1], fusion="off",
                               repeats=5, progress=False)
    profiled_s = time.perf_counter() - started
    plan = choose_precision(profile, fusion="off").plan
    split = digits_split()
    fp32 = ReferenceExecutor(spec).infer(split.x_test).probabilities.argmax(axis=1)
    engine = Engine(spec, plan).start()
    try:
        answers = np.concatenate([
            engine.infer_sync({"input": split.x_test[i:i + 32]}, timeout=120)
            .probabilities.argmax(axis=1) for i in range(0, len(split.x_test), 32)])
    finally:
        engine.stop()
    report = {
        "machine": current_hardware().describe(),
        "profile": f"adaptive (budget {args.budget_s:g} s)" if args.adaptive else "full",
        "profile_seconds": round(profiled_s, 1),
        "not_screened": deferred,
        "held_out_rows": len(split.y_test),
        "plan_instances": [(i.member, i.variant, i.batch_size) for i in plan.instances],
        "precision": dict(plan.precision or {}),
        "fp32_accuracy": float(np.mean(fp32 == split.y_test)),
        "planned_accuracy": float(np.mean(answers == split.y_test)),
        "agreement_with_fp32": float(np.mean(answers == fp32)),
        "seconds": round(time.perf_counter() - started, 1),
        "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
    }
    report["accuracy_drop_pp"] = 100 * (report["fp32_accuracy"] - report["planned_accuracy"])
    print(json.dumps(report, indent=2) if args.json else
          f"digits held-out ({report['held_out_rows']} rows): fp32 "
          f"{report['fp32_accuracy']:.2%}, planned {report['planned_accuracy']:.2%} "
          f"(drop {report['accuracy_drop_pp']:.2f} pp, agreement "
          f"{report['agreement_with_fp32']:.2%}); mix {report['precision'].get('members')}"
          f" ({report['profile']} profile, {report['profile_seconds']} s)")


if __name__ == "__main__":
    main()
