"""IPC overhead of the engine: a tiny ensemble (two 1-layer models), one request at a time.

Compares the engine's per-request latency with the same ensemble called in process
(ReferenceExecutor), interleaved in rounds. Usage:

    .venv/bin/python benchmarks/ipc_overhead.py [--requests 3000] [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

from enserve.reference import ReferenceExecutor
from enserve.runtime import Engine
from enserve.spec import spec_from_dict

# the specs measured here name their own models.py factories: trust that code
os.environ.setdefault("ENSERVE_TRUSTED_CODE", "models.py")

MODELS = textwrap.dedent('''
    import torch
    from torch import nn

    def one_layer(seed):
        torch.manual_seed(seed)
        return nn.Linear(64, 10)

    def first():
        return one_layer(1)

    def second():
        return one_layer(2)
''')


def tiny_spec(folder: Path):
    (folder / "models.py").write_text(MODELS)
    return spec_from_dict({
        "name": "ipc2",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}],
        "members": [{"name": "first", "source": "python:models.py:first"},
                    {"name": "second", "source": "python:models.py:second"}],
    }, base_dir=folder, where="ipc2")


def timed(fn, x: np.ndarray, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn(x)
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=3000, help="requests per round and side")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        spec = tiny_spec(Path(tmp))
        x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
        reference = ReferenceExecutor(spec, threads=1)
        with Engine(spec, max_batch=8) as engine:
            np.testing.assert_allclose(engine.infer_sync(x).probabilities,
                                       reference.infer(x).probabilities, rtol=1e-5)
            timed(engine.infer_sync, x, 200)
            timed(reference.infer, x, 200)
            rounds = []
            for _ in range(args.rounds):
                inproc = statistics.median(timed(reference.infer, x, args.requests))
                eng = statistics.median(timed(engine.infer_sync, x, args.requests))
                rounds.append({"in_process_p50_s": inproc, "engine_p50_s": eng,
                               "overhead_p50_s": eng - inproc})
    result = {
        "rounds": rounds,
        "in_process_p50_s": statistics.median(r["in_process_p50_s"] for r in rounds),
        "engine_p50_s": statistics.median(r["engine_p50_s"] for r in rounds),
        "overhead_p50_s": statistics.median(r["overhead_p50_s"] for r in rounds),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"in-process p50 {result['in_process_p50_s'] * 1e3:.3f} ms, engine p50 "
              f"{result['engine_p50_s'] * 1e3:.3f} ms, overhead p50 "
              f"{result['overhead_p50_s'] * 1e3:.3f} ms (median of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
