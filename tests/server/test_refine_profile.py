"""`enserve serve --refine-profile` on a tiny ensemble: the engine starts from an adaptive
profile, the refinement runs in the background (niced children), saves the refined
profile, exports progress as metrics, and a plan switch keeps answers correct."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from enserve.formats.plan import Plan
from enserve.reference import ReferenceExecutor
from enserve.server.engine_backend import EngineBackend
from enserve.server.instance_metrics import instance_lines
from enserve.spec import load_spec
from tests.helpers.convnets import tiny_spec_path  # noqa: F401  (fixture)


@pytest.mark.slow
def test_serving_starts_from_an_adaptive_profile_and_refines_it(
        tiny_spec_path: Path, tmp_path: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENSERVE_CACHE_DIR", str(tmp_path / "cache"))
    spec = load_spec(tiny_spec_path)
    x = np.random.default_rng(0).standard_normal((3, 3, 12, 12)).astype(np.float32)
    want = ReferenceExecutor(spec).infer(x).probabilities
    backend = EngineBackend(spec, max_batch=8, max_queue=16, refine_profile=True)
    try:
        assert backend.refiner is not None
        first = backend.engine
        got = backend.engine.infer_sync(x, timeout=120).probabilities
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        assert backend.refiner._thread is not None
        backend.refiner._thread.join(timeout=600)  # a bound, not a timing claim
        status = backend.refiner.status()
        assert status.state in ("converged", "done"), status
        assert status.measured > 0 and status.rounds >= 1
        refined = list((tmp_path / "cache" / "profile" / "refined").glob("tiny-*.json"))
        assert len(refined) == 1
        text = "\n".join(instance_lines([("tiny", backend)]))
        assert 'enserve_profile_refinement_measured{model="tiny"}' in text
        # A switch (forced here: the tiny plan rarely gains 5%) answers the same.
        plan = backend.refiner.serving
        backend.switch_plan(Plan.of([{"member": i.member, "variant": i.variant,
                                      "batch_size": i.batch_size} for i in plan.instances]))
        assert backend.engine is not first
        got = backend.engine.infer_sync(x, timeout=120).probabilities
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        assert first._state == "stopped"
    finally:
        backend.shutdown()
