"""`enserve predict SPEC --input FILE`: run the reference executor on one batch."""

from __future__ import annotations

import argparse
import json
from typing import Any

from enserve.combine import top_k
from enserve.commands.images import load_batch
from enserve.reference import ReferenceExecutor
from enserve.result import EnsembleResult, v2_json_response
from enserve.spec import EnsembleSpec, load_spec


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "predict",
        help="answer one batch with the reference executor",
        description="Run every member on a batch (.npy, or a .png/.jpg image) and combine.",
    )
    p.add_argument("spec", help="ensemble spec (YAML file or its folder)")
    p.add_argument("--input", required=True, help=".npy batch or .png/.jpg image")
    p.add_argument("--top-k", type=int, default=None, help="classes to show (default: spec's top_k)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads per member")
    p.add_argument("--json", action="store_true", help="print an Open Inference Protocol response")
    p.add_argument("--members", action="store_true", help="also output each member's logits")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    batch = load_batch(args.input, spec.inputs[0])
    result = ReferenceExecutor(spec, threads=args.threads).infer({spec.inputs[0].name: batch})
    if args.json:
        requested = ["probabilities"]
        if args.members or spec.return_members:
            requested += [f"logits_{m.name}" for m in spec.members]
        outputs = result.outputs(spec, requested)
        print(json.dumps(v2_json_response(spec.name, outputs, spec.version)))
        return 0
    print_table(spec, result, args.top_k or spec.top_k)
    return 0


def print_table(spec: EnsembleSpec, result: EnsembleResult, k: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{spec.name}: {spec.combiner} of {len(spec.members)} members")
    table.add_column("#", justify="right")
    table.add_column(f"top-{k} (class: probability)")
    table.add_column("members agreeing on top-1", justify="right")
    indices, scores = top_k(result.probabilities, k)
    for row in range(indices.shape[0]):
        ranked = ", ".join(f"{c}: {s:.3f}" for c, s in zip(indices[row], scores[row], strict=True))
        table.add_row(str(row), ranked, f"{result.agreement[row]}/{len(spec.members)}")
    Console().print(table)
