"""Digits demo: held-out accuracy with reduced precision allowed vs the fp32 ensemble.

Profiles examples/digits on this machine (its accuracy section admits reduced precision
on 512 training rows), plans with mixed precision, runs the plan in the engine over the
held-out split and compares with the fp32 reference executor on the same rows.

    python benchmarks/precision_digits.py [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from enserve.demo.digits import DEFAULT_SPEC, digits_split
from enserve.hardware import current_hardware
from enserve.plan.precision import choose_precision
from enserve.profiler import profile_spec
from enserve.reference import ReferenceExecutor
from enserve.runtime.engine import Engine
from enserve.spec import load_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    spec = load_spec(DEFAULT_SPEC)
    started = time.perf_counter()
    profile = profile_spec(DEFAULT_SPEC, batch_sizes=(8, 32), shares=[1], fusion="off",
                           repeats=5, progress=False)
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
        "held_out_rows": len(split.y_test),
        "plan_instances": [(i.member, i.variant, i.batch_size) for i in plan.instances],
        "precision": dict(plan.precision or {}),
        "fp32_accuracy": float(np.mean(fp32 == split.y_test)),
        "planned_accuracy": float(np.mean(answers == split.y_test)),
        "agreement_with_fp32": float(np.mean(answers == fp32)),
        "seconds": round(time.perf_counter() - started, 1),
    }
    report["accuracy_drop_pp"] = 100 * (report["fp32_accuracy"] - report["planned_accuracy"])
    print(json.dumps(report, indent=2) if args.json else
          f"digits held-out ({report['held_out_rows']} rows): fp32 "
          f"{report['fp32_accuracy']:.2%}, planned {report['planned_accuracy']:.2%} "
          f"(drop {report['accuracy_drop_pp']:.2f} pp, agreement "
          f"{report['agreement_with_fp32']:.2%}); mix {report['precision'].get('members')}")


if __name__ == "__main__":
    main()
