"""The engine behind the server: the request's outputs and deadline pass through, and the
per-member statistics and metrics fill under the engine as under the reference."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from enserve.reference import ReferenceExecutor
from enserve.server.app import ServerConfig
from enserve.server.dataplane import DataPlane
from enserve.server.engine_backend import EngineBackend
from enserve.server.errors import Code, ServerError
from enserve.server.limits import Limits
from enserve.server.protocol import InferRequest, RequestedOutput
from enserve.server.repository import ModelRepository
from enserve.spec import EnsembleSpec, load_spec


def _engine(spec: EnsembleSpec) -> EngineBackend:
    return EngineBackend(spec, max_batch=8, max_queue=16)


def test_engine_backend_fills_per_member_statistics_and_metrics(repo: Path) -> None:
    x = np.random.default_rng(3).standard_normal((2, 6)).astype(np.float32)
    want = ReferenceExecutor(load_spec(repo / "tiny")).infer(x)

    async def main() -> None:
        plane = DataPlane(ModelRepository(repo, _engine, unload_timeout_s=30), Limits(),
                          backend_name="engine")
        plane.started = True
        try:
            await plane.repository.load("tiny")
            meta = plane.model_metadata("tiny")
            assert meta["outputs"][0]["shape"] == [-1, 5]  # from Ready, no probe request
            lean = await plane.infer(InferRequest(
                "tiny", inputs={"x": x}, outputs=[RequestedOutput("probabilities")]))
            assert set(lean.outputs) == {"probabilities"}
            np.testing.assert_allclose(lean.outputs["probabilities"], want.probabilities,
                                       rtol=1e-5, atol=1e-6)
            full = await plane.infer(InferRequest(
                "tiny", inputs={"x": x},
                outputs=[RequestedOutput("logits_mlp"), RequestedOutput("top_k_scores")]))
            np.testing.assert_allclose(full.outputs["logits_mlp"], want.member_logits["mlp"],
                                       rtol=1e-5, atol=1e-5)
            for member in ("lin", "mlp"):
                assert plane.stats.of(f"tiny.{member}", "1").success.count == 2
            text = plane.metrics.render().decode()
            assert 'enserve_member_latency_seconds_count{member="mlp",model="tiny"} 2.0' in text
            assert 'enserve_member_skew_seconds_count{model="tiny"} 2.0' in text
            with pytest.raises(ServerError) as info:
                await plane.infer(InferRequest("tiny", inputs={"x": x},
                                               deadline=time.monotonic() - 1))
            assert info.value.code is Code.TIMEOUT
        finally:
            await plane.repository.unload("tiny")

    asyncio.run(main())


def test_server_config_defaults_to_the_cli_default_backend() -> None:
    import argparse

    from enserve.commands import serve

    parser = argparse.ArgumentParser()
    serve.register(parser.add_subparsers())
    args = parser.parse_args(["serve", "repo"])
    assert ServerConfig(repository=Path("repo")).backend == args.backend == "engine"
