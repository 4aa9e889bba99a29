"""Instances of a member share one copy of its weights: every worker maps the member's
weight file from the cache, so the file's pages are counted once across them (PSS)."""

from __future__ import annotations

import secrets
import textwrap
from pathlib import Path

import numpy as np
import pytest

from enserve.formats.plan import Plan
from enserve.members.onnx_shared import optimized_path
from enserve.reference import ReferenceExecutor
from enserve.runtime import Engine
from enserve.runtime.memory import mapping_memory, pids_memory, tree_memory
from enserve.spec import spec_from_dict
from enserve.variants.artifacts import artifact_path
from tests.helpers.onnx_models import write_wide_onnx

WIDE = textwrap.dedent('''
    import torch
    from torch import nn


    def wide():  # ~8 MiB of weights, so its pages dominate what is measured
        torch.manual_seed(5)
        return nn.Sequential(nn.Flatten(), nn.Linear(12, 2048), nn.ReLU(),
                             nn.Linear(2048, 1024), nn.ReLU(), nn.Linear(1024, 5))
''')


@pytest.mark.parametrize("framework", ["torch", "onnxruntime"])
def test_two_instances_share_the_weight_pages(tmp_path: Path, framework: str):
    (tmp_path / "wide.py").write_text(WIDE)
    write_wide_onnx(tmp_path / "wide.onnx", seed=secrets.randbelow(2**31))  # a new model each run
    source = "python:wide.py:wide" if framework == "torch" else "onnx:wide.onnx"
    spec = spec_from_dict(
        {"name": "wide", "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3, 2, 2]}],
         "members": [{"name": "wide", "source": source}], "combiner": "mean_prob"},
        base_dir=tmp_path, where=str(tmp_path / "ensemble.yaml"))
    plan = Plan.of([{"member": "wide", "variant": None, "device": "cpu", "batch_size": 2,
                     "share": 1, "memory_bytes": 0}] * 2)
    cache = tmp_path / "cache"
    x = np.random.default_rng(1).standard_normal((6, 3, 2, 2)).astype(np.float32)
    expected = ReferenceExecutor(spec).infer(x)
    with Engine(spec, plan, max_batch=8, cache_dir=cache) as engine:
        for _ in range(3):  # both instances answer (rows are split between them)
            result = engine.infer_sync(x, timeout=60)
        pids = list(engine.worker_pids().values())
        if framework == "torch":
            weights = artifact_path(spec, spec.members[0], "weights", ".safetensors", cache)
        else:  # ORT maps the initializers of the optimized copy (default cache folder)
            weights = optimized_path(tmp_path / "wide.onnx").with_suffix(".data")
        per_worker = [mapping_memory(pid, str(weights)) for pid in pids]
        memory = engine.memory()
        whole = tree_memory()
        workers = pids_memory(pids)
    np.testing.assert_allclose(result.probabilities, expected.probabilities, rtol=1e-5, atol=1e-6)
    size = weights.stat().st_size
    assert size > 7.5 * 2**20
    assert engine.stats()["members"]["wide"]["instances"] == 2
    for rss, pss in per_worker:
        assert rss > 0.9 * size  # each worker has the whole file mapped and resident ...
        assert pss < 0.6 * size  # ... but pays only its half of the shared pages
    assert sum(pss for _, pss in per_worker) < 1.1 * size  # one copy in all
    assert memory["workers"]["processes"] == 2
    assert workers.pss < workers.rss and whole.pss <= whole.rss
    assert whole.processes >= 3  # this process, a fork server, the workers


def test_two_instances_of_a_fused_group_share_its_folded_weights(tmp_path: Path):
    from enserve.fusion.folded_key import folded_path

    (tmp_path / "wide.py").write_text(WIDE)
    members = [{"name": n, "source": "python:wide.py:wide"} for n in ("wide_a", "wide_b")]
    spec = spec_from_dict(
        {"name": "wide2", "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3, 2, 2]}],
         "members": members, "combiner": "mean_prob"},
        base_dir=tmp_path, where=str(tmp_path / "ensemble.yaml"))
    plan = Plan.of([{"member": "fx:wide_a+wide_b", "variant": "fused-fx", "device": "cpu",
                     "batch_size": 2, "share": 1, "memory_bytes": 0}] * 2)
    cache = tmp_path / "cache"
    x = np.random.default_rng(2).standard_normal((6, 3, 2, 2)).astype(np.float32)
    expected = ReferenceExecutor(spec).infer(x)
    with Engine(spec, plan, max_batch=8, cache_dir=cache) as engine:
        for _ in range(3):
            result = engine.infer_sync(x, timeout=60)
        weights = folded_path(spec, ["wide_a", "wide_b"], False, cache)  # in the engine's cache
        per_worker = [mapping_memory(pid, str(weights)) for pid in engine.worker_pids().values()]
    np.testing.assert_allclose(result.probabilities, expected.probabilities, rtol=1e-5, atol=1e-6)
    size = weights.stat().st_size
    assert size > 15 * 2**20 and len(per_worker) == 2
    for rss, pss in per_worker:
        assert rss > 0.9 * size and pss < 0.6 * size  # both map it; each pays half
