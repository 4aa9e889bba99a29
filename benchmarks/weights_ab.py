"""Does running from shared, mapped weights cost speed? Each member loaded two ways per
framework, timed interleaved call by call in one process (both ways see the same
background load), median and best of N per way:

  torch-heap    eager module built normally (weights in private heap memory, as before)
  torch-mapped  eager module with its weights mapped from the cached file (as workers now do)
  ort-private   ONNX Runtime session reading and optimizing the model itself (as before)
  ort-shared    session on the optimized copy whose initializers are mapped (as workers now do)

  .venv/bin/python benchmarks/weights_ab.py --spec three/ensemble.yaml --batch 8 --reps 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np


def _loaders(spec: Any, member: Any) -> dict[str, Any]:
    from enserve.members import TorchMember, build_torch_module
    from enserve.members.mapped import mapped_module
    from enserve.members.onnx_member import OnnxMember
    from enserve.members.preprocess import Preprocessor
    from enserve.variants.load import cached_onnx, load_variant

    pre = Preprocessor(member.preprocess)
    ways = {
        "torch-heap": TorchMember(member.name, build_torch_module(spec, member).eval(), pre),
        "torch-mapped": TorchMember(member.name, mapped_module(spec, member), pre),
    }
    path = cached_onnx(spec, member, None)
    if path is None:
        load_variant(spec, member, "onnx")  # export once (cached)
        path = cached_onnx(spec, member, None)
    assert path is not None
    os.environ["ENSERVE_ORT_PRIVATE"] = "1"
    ways["ort-private"] = OnnxMember(member.name, path, pre, threads=1)
    del os.environ["ENSERVE_ORT_PRIVATE"]
    ways["ort-shared"] = OnnxMember(member.name, path, pre, threads=1)
    return ways


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", required=True)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    import torch

    from enserve.spec import load_spec

    torch.set_num_threads(1)
    spec = load_spec(args.spec)
    shape = [d if d > 0 else 1 for d in spec.inputs[0].shape[1:]]
    x = np.random.default_rng(0).standard_normal((args.batch, *shape)).astype(np.float32)
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                              "load_avg": os.getloadavg(), "batch": args.batch, "members": {}}
    for member in spec.members:
        ways = _loaders(spec, member)
        outs = {k: w(x) for k, w in ways.items()}  # warm-up, and the outputs agree
        for k in ("torch-mapped",):
            np.testing.assert_allclose(outs[k], outs["torch-heap"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(outs["ort-shared"], outs["ort-private"], rtol=1e-4, atol=1e-4)
        times: dict[str, list[float]] = {k: [] for k in ways}
        for _ in range(args.reps):
            for k, w in ways.items():
                t0 = time.perf_counter()
                w(x)
                times[k].append(time.perf_counter() - t0)
        row = {k: {"median_ms": statistics.median(v) * 1e3, "min_ms": min(v) * 1e3}
               for k, v in times.items()}
        row["ratio_torch_mapped_over_heap"] = (row["torch-mapped"]["median_ms"]
                                               / row["torch-heap"]["median_ms"])
        row["ratio_ort_shared_over_private"] = (row["ort-shared"]["median_ms"]
                                                / row["ort-private"]["median_ms"])
        report["members"][member.name] = row
        print(member.name, json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
