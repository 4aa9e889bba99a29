"""Reduced precision through the engine on the digits demo: fp32 vs bf16 (opt-in).

Runs the same engine plan twice — every member in fp32 eager, then every member as the
bf16 variant — and reports the ensemble's accuracy on the demo's labelled samples and its
saturated throughput (closed loop), side by side, on the demo's held-out test split. Usage:

    .venv/bin/python benchmarks/reduced_precision.py [--duration 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from enserve.bench.load import run_load
from enserve.demo.digits import digits_split
from enserve.formats.plan import Plan
from enserve.runtime import Engine
from enserve.spec import load_spec

# the specs measured here name their own models.py factories: trust that code
os.environ.setdefault("ENSERVE_TRUSTED_CODE", "models.py")

DIGITS = Path("examples/digits")


def plan_for(spec, variant: str, batch: int) -> Plan:
    return Plan.of([{"member": m.name, "variant": variant, "device": "cpu",
                     "batch_size": batch, "share": 1, "memory_bytes": 0}
                    for m in spec.members])


def measure(spec, variant: str, samples, labels, duration: float, batch: int) -> dict:
    with Engine(spec, plan_for(spec, variant, batch), max_batch=64) as engine:
        probs = np.concatenate([engine.infer_sync(samples[i:i + 64]).probabilities
                                for i in range(0, len(samples), 64)])
        rng = np.random.default_rng(0)
        payloads = [samples[rng.choice(len(samples), batch)] for _ in range(16)]

        async def call(x):
            return await engine.infer(x, outputs=["probabilities"])

        load = run_load(call, payloads, "closed", concurrency=8, duration_s=duration,
                        warmup_s=1.0)
    if load.failed or not load.completed:
        raise SystemExit(f"{variant}: requests failed: {load.errors[:1]}")
    return {"variant": variant, "accuracy": float((probs.argmax(1) == labels).mean()),
            "throughput": load.throughput, "p50_s": load.summary()["p50_s"],
            "probabilities": probs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--batch", type=int, default=32, help="samples per request")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    spec = load_spec(DIGITS)
    split = digits_split()  # the demo's held-out test split
    samples, labels = split.x_test.astype(np.float32), split.y_test
    fp32 = measure(spec, "eager", samples, labels, args.duration, args.batch)
    bf16 = measure(spec, "bf16", samples, labels, args.duration, args.batch)
    result = {
        "samples": len(samples),
        "fp32": {k: v for k, v in fp32.items() if k != "probabilities"},
        "bf16": {k: v for k, v in bf16.items() if k != "probabilities"},
        "speedup": bf16["throughput"] / fp32["throughput"],
        "accuracy_delta": bf16["accuracy"] - fp32["accuracy"],
        "max_abs_prob_diff": float(np.abs(bf16["probabilities"] - fp32["probabilities"]).max()),
        "top1_agreement": float((bf16["probabilities"].argmax(1)
                                 == fp32["probabilities"].argmax(1)).mean()),
    }
    print(json.dumps(result, indent=2) if args.json else
          f"fp32 {fp32['throughput']:.0f}/s acc {fp32['accuracy']:.4f}; bf16 "
          f"{bf16['throughput']:.0f}/s acc {bf16['accuracy']:.4f}; speed-up "
          f"{result['speedup']:.2f}x, accuracy delta {result['accuracy_delta']:+.4f}")


if __name__ == "__main__":
    main()
