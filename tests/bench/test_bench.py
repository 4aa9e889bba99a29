"""The load generator, the baseline servers, and `enserve bench` end to end on a tiny
ensemble (short runs: shapes and bookkeeping, not speed)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from enserve.bench.load import closed_loop, open_loop
from enserve.bench.targets import InProcessServer, fastest_variants
from enserve.cli import main
from enserve.errors import OverloadedError
from enserve.spec import load_spec

MODELS = '''
import torch
from torch import nn

def net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4))

def net_a():
    return net(1)

def net_b():
    return net(2)
'''


@pytest.fixture
def tiny_spec_path(tmp_path: Path) -> Path:
    (tmp_path / "models.py").write_text(MODELS)
    (tmp_path / "ensemble.yaml").write_text(yaml.safe_dump({
        "name": "tiny",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3, 2, 2]}],
        "members": [{"name": "a", "source": "python:models.py:net_a"},
                    {"name": "b", "source": "python:models.py:net_b"}],
    }))
    return tmp_path / "ensemble.yaml"


def test_closed_loop_throughput_follows_concurrency():
    async def target(x):
        await asyncio.sleep(0.02)

    payloads = [np.zeros((2, 1))]
    result = asyncio.run(closed_loop(target, payloads, concurrency=4, duration_s=0.5))
    # 4 clients x 2 rows / 20 ms = 400 rows/s at best
    assert 250 < result.throughput <= 420
    assert result.failed == 0 and len(result.latencies) == result.completed


def test_open_loop_counts_rejections_and_failures():
    calls = {"n": 0}

    async def target(x):
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            raise OverloadedError("overloaded")
        if calls["n"] % 3 == 1:
            raise ValueError("boom")

    result = asyncio.run(open_loop(target, [np.zeros((1, 1))], rate=200, duration_s=0.5))
    assert result.rejected > 0 and result.failed > 0 and result.completed > 0
    assert 50 < result.completed + result.failed + result.rejected < 200
    assert "boom" in result.errors[0]


def test_in_process_server_batches_up_to_its_batch_size():
    seen: list[int] = []

    def fn(batch: np.ndarray) -> np.ndarray:
        seen.append(batch.shape[0])
        return batch * 2

    server = InProcessServer(fn, batch_size=3, name="t")
    try:
        futures = [server.submit(np.full((1, 1), i, np.float32)) for i in range(7)]
        for i, f in enumerate(futures):
            assert f.result(timeout=5)[0, 0] == 2 * i
    finally:
        server.stop()
    assert max(seen) <= 3 and sum(seen) == 7


def test_fastest_variants_reads_the_profile(tiny_spec_path: Path):
    spec = load_spec(tiny_spec_path)
    profile = {"entries": [
        {"member": "a", "variant": "eager", "device": "cpu", "batch_size": 8, "share": 2,
         "latency_s": 0.02},
        {"member": "a", "variant": "onnx", "device": "cpu", "batch_size": 8, "share": 2,
         "latency_s": 0.01},
        {"member": "b", "variant": "torchscript", "device": "cpu", "batch_size": 8, "share": 2,
         "latency_s": 0.01},
        {"member": "b", "variant": "onnx", "device": "cpu", "batch_size": 8, "share": 1,
         "latency_s": 0.001},
    ]}
    assert fastest_variants(spec, profile, threads=2, batch_size=8) == {
        "a": "onnx", "b": "torchscript"}
    assert fastest_variants(spec, None, threads=2, batch_size=8) == {"a": "onnx", "b": "onnx"}


def test_bench_json_has_the_documented_shape(tiny_spec_path: Path, capsys):
    code = main(["bench", str(tiny_spec_path), "--duration", "0.5", "--warmup", "0.2",
                 "--concurrency", "2", "--baseline", "sequential", "naive", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("throughput", "p50_s", "p95_s", "p99_s", "predicted_throughput"):
        assert key in report["enserve"]
    assert report["enserve"]["throughput"] > 0
    memory = report["enserve"]["memory"]  # the process tree and the engine's workers
    assert memory["workers"]["processes"] >= 1
    for part in (memory["workers"], memory["tree"]):
        assert 0 < part["uss"] <= part["pss"] <= part["rss"]
    assert set(report["baselines"]) == {"sequential", "naive"}
    for base in report["baselines"].values():
        assert base["throughput"] > 0 and base["p50_s"] > 0
    assert set(report["ratios"]) == {"sequential", "naive"}
    assert report["ratios"]["naive"] == pytest.approx(
        report["enserve"]["throughput"] / report["baselines"]["naive"]["throughput"])


def test_bench_sweep_writes_a_png(tiny_spec_path: Path, tmp_path: Path, capsys):
    plot = tmp_path / "sweep.png"
    code = main(["bench", str(tiny_spec_path), "--duration", "0.3", "--warmup", "0.1",
                 "--sweep", "--levels", "1,2", "--baseline", "naive", "--plot", str(plot)])
    assert code == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plot:" in capsys.readouterr().out


def test_bench_rejects_bad_arguments(tiny_spec_path: Path, capsys):
    assert main(["bench", str(tiny_spec_path), "--duration", "0"]) == 2
    assert "must be positive" in capsys.readouterr().err


def test_bench_fusion_on_with_unfused_baseline(tiny_spec_path: Path, capsys):
    code = main(["bench", str(tiny_spec_path), "--duration", "0.4", "--warmup", "0.1",
                 "--concurrency", "2", "--fusion", "on", "--baseline", "unfused", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fusion"]["groups"] == ["fx:a+b"]
    assert {i["member"] for i in report["enserve"]["instances"]} == {"fx:a+b"}
    assert set(report["ratios"]) == {"unfused"} and report["ratios"]["unfused"] > 0
    unfused = report["baselines"]["unfused"]
    assert unfused["throughput"] > 0
    assert {i["member"] for i in unfused["instances"]} == {"a", "b"}


def test_bench_unfused_baseline_is_skipped_without_fused_groups(tiny_spec_path: Path, capsys):
    code = main(["bench", str(tiny_spec_path), "--duration", "0.3", "--warmup", "0.1",
                 "--concurrency", "1", "--fusion", "off", "--baseline", "unfused", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fusion"]["groups"] == [] and report["ratios"] == {}
    assert "no fused group" in report["notes"][0]


def test_resolve_plan_under_each_fusion_mode(tiny_spec_path: Path):
    from enserve.bench.plans import resolve_plan
    from enserve.errors import EnserveError
    from enserve.formats.plan import Plan

    spec = load_spec(tiny_spec_path)
    fused = Plan.of([{"member": "fx:a+b", "variant": "fused-fx", "device": "cpu",
                      "batch_size": 4, "share": 2, "memory_bytes": 0}])
    off = resolve_plan(spec, fused, None, "off", cores=2).plan
    assert off is not None
    assert [(i.member, i.share) for i in off.instances] == [("a", 1.0), ("b", 1.0)]
    assert resolve_plan(spec, fused, None, "auto", cores=2).plan is fused
    with pytest.raises(EnserveError, match="uses no fused group"):
        resolve_plan(spec, off, None, "on", cores=2)
    default_on = resolve_plan(spec, None, None, "on", cores=2)
    assert default_on.plan is not None
    assert [i.member for i in default_on.plan.instances] == ["fx:a+b", "fx:a+b"]
    assert resolve_plan(spec, None, None, "auto", cores=2).plan is None
