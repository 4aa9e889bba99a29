"""DataPlane and repository in-process, with a controllable fake backend: overload,
timeouts, drain, unload waiting for requests, names that try to leave the repository."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from enserve.result import EnsembleResult
from enserve.server.backend import Outcome, Timing, check_deadline
from enserve.server.dataplane import DataPlane
from enserve.server.errors import Code, ServerError
from enserve.server.limits import Limits
from enserve.server.protocol import InferRequest
from enserve.server.repository import ModelRepository
from enserve.spec import EnsembleSpec


class GatedBackend:
    """Answers only when `gate` is set; counts what it ran."""

    def __init__(self, spec: EnsembleSpec) -> None:
        self.spec = spec
        self.gate = asyncio.Event()
        self.ran = 0
        self.closed = False

    def output_classes(self) -> int | None:
        return 5

    async def infer(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str],
                    deadline: float | None) -> Outcome:
        submitted = time.monotonic()
        await self.gate.wait()
        check_deadline(deadline, submitted)
        self.ran += 1
        batch = next(iter(inputs.values())).shape[0]
        logits = np.zeros((batch, 5), np.float32)
        probs = np.full((batch, 5), 0.2, np.float32)
        members = {m.name: logits for m in self.spec.members}
        return Outcome(EnsembleResult(probs, np.zeros(batch, np.int32), members),
                       Timing(0.0, 0.001, {m: 0.001 for m in members}, 0.0001))

    def stats(self) -> dict[str, Any]:
        return {"ran": self.ran}

    def memory_bytes(self) -> int:
        return 1000

    def shutdown(self) -> None:
        self.closed = True

    async def close(self) -> None:
        self.shutdown()


def _plane(repo: Path, **limits: Any) -> tuple[DataPlane, dict[str, GatedBackend]]:
    backends: dict[str, GatedBackend] = {}

    def factory(spec: EnsembleSpec) -> GatedBackend:
        backends[spec.name] = GatedBackend(spec)
        return backends[spec.name]

    plane = DataPlane(ModelRepository(repo, factory, unload_timeout_s=5), Limits(**limits))
    plane.started = True
    return plane, backends


def _request(batch: int = 1, **parameters: Any) -> InferRequest:
    return InferRequest("tiny", inputs={"x": np.ones((batch, 6), np.float32)}, parameters=parameters)


def test_overload_is_a_clear_503(repo: Path) -> None:
    async def main() -> None:
        plane, backends = _plane(repo, max_pending=2)
        await plane.repository.load("tiny")
        held = [asyncio.create_task(plane.infer(_request())) for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(ServerError, match="overloaded") as info:
            await plane.infer(_request())
        assert info.value.code is Code.UNAVAILABLE and info.value.code.http_status == 503
        backends["tiny"].gate.set()
        assert all(r.outputs["probabilities"].shape == (1, 5) for r in await asyncio.gather(*held))
        await plane.infer(_request())  # room again

    asyncio.run(main())


def test_timeout_parameter(repo: Path) -> None:
    async def main() -> None:
        plane, backends = _plane(repo)
        await plane.repository.load("tiny")
        started = time.monotonic()
        with pytest.raises(ServerError, match="timed out") as info:
            await plane.infer(_request(timeout=50_000))  # 50 ms, in microseconds
        assert info.value.code is Code.TIMEOUT
        assert time.monotonic() - started < 30  # the gated backend never answers: the 50 ms timeout did
        assert plane.stats.of("tiny", "1").fail.count == 1
        backends["tiny"].gate.set()
        assert (await plane.infer(_request(timeout=5_000_000))).outputs

    asyncio.run(main())


def test_drain_finishes_admitted_requests_and_refuses_new(repo: Path) -> None:
    async def main() -> None:
        plane, backends = _plane(repo)
        await plane.repository.load("tiny")
        admitted = [asyncio.create_task(plane.infer(_request(b))) for b in (1, 2, 3)]
        await asyncio.sleep(0.05)
        drain = asyncio.create_task(plane.drain())
        await asyncio.sleep(0.05)
        assert not plane.ready()
        with pytest.raises(ServerError, match="shutting down"):
            await plane.infer(_request())
        assert not drain.done()
        backends["tiny"].gate.set()
        await drain
        answers = await asyncio.gather(*admitted)
        assert [a.outputs["probabilities"].shape[0] for a in answers] == [1, 2, 3]

    asyncio.run(main())


def test_unload_waits_for_requests_in_flight(repo: Path) -> None:
    async def main() -> None:
        plane, backends = _plane(repo)
        await plane.repository.load("tiny")
        backend = backends["tiny"]
        running = asyncio.create_task(plane.infer(_request()))
        await asyncio.sleep(0.05)
        unload = asyncio.create_task(plane.unload("tiny"))
        await asyncio.sleep(0.05)
        assert not backend.closed and not unload.done()
        assert not plane.model_ready("tiny")
        backend.gate.set()
        assert (await running).outputs
        await unload
        assert backend.closed
        assert plane.repository.index()[0]["name"] == "broken"
        states = {r["name"]: r["state"] for r in plane.repository_index()}
        assert states["tiny"] == "UNAVAILABLE"

    asyncio.run(main())


@pytest.mark.parametrize("name", ["..", ".", "../x", "a/b", "", "tiny/../pix", "%2e%2e", "outside"])
def test_names_cannot_leave_the_repository(repo: Path, tmp_path: Path, name: str) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "ensemble.yaml").write_text((repo / "tiny" / "ensemble.yaml").read_text())
    link = repo / "outside"
    if not link.exists():
        link.symlink_to(outside, target_is_directory=True)
    try:
        plane, _ = _plane(repo)
        with pytest.raises(ServerError) as info:
            asyncio.run(plane.load(name))
        assert info.value.code in (Code.BAD_REQUEST, Code.NOT_FOUND)
        assert "outside" not in plane.repository.names()
    finally:
        link.unlink()


def test_bearer_token(repo: Path) -> None:
    plane, _ = _plane(repo)
    plane.repository_token = "t0k"
    plane.authorize("Bearer t0k")
    for bad in (None, "Bearer nope", "t0k", "bearer t0k"):
        with pytest.raises(ServerError) as info:
            plane.authorize(bad)
        assert info.value.code.http_status == 401


def test_memory_budget_loads_on_demand_and_evicts(repo: Path) -> None:
    from enserve.server.repository import BudgetedRepository

    async def main() -> None:
        backends: dict[str, list[GatedBackend]] = {}

        def factory(spec: EnsembleSpec) -> GatedBackend:
            backend = GatedBackend(spec)
            backend.gate.set()
            backends.setdefault(spec.name, []).append(backend)
            return backend

        repository = BudgetedRepository(repo, factory, budget_bytes=1500, idle_unload_s=None)
        plane = DataPlane(repository, Limits())
        plane.started = True
        try:
            assert not plane.model_ready("tiny")
            assert (await plane.infer(_request())).outputs  # loads on the first request
            assert plane.model_ready("tiny") and plane.model_ready("tiny.mlp")
            await plane.load("pix")  # 1000 + 1000 > 1500: tiny (idle) is evicted
            assert backends["tiny"][0].closed
            states = {r["name"]: r for r in plane.repository_index()}
            assert states["pix"]["state"] == "READY" and states["tiny"]["state"] == "UNAVAILABLE"
            assert "next request" in states["tiny"]["reason"]
            assert (await plane.infer(_request(2))).outputs["probabilities"].shape == (2, 5)
            assert len(backends["tiny"]) == 2 and backends["pix"][0].closed
            await plane.unload("tiny")  # explicit: stays unloaded until an explicit load
            with pytest.raises(ServerError, match="not ready"):
                await plane.infer(_request())
            await plane.load("tiny")
            assert plane.model_ready("tiny")
            text = plane.metrics.render().decode()
            assert "enserve_swap_loads 4" in text
            assert "enserve_swap_evictions 2" in text
            assert "enserve_swap_cold_starts 4" in text  # every load here found it absent
            assert 'enserve_swap_budget_bytes{device="cpu"} 1500' in text
            assert 'enserve_swap_resident_bytes{device="cpu"} 1000' in text
            with pytest.raises(ServerError, match="unknown model"):
                await plane.infer(InferRequest("nope", inputs={"x": np.ones((1, 6), np.float32)}))
        finally:
            await repository.close()

    asyncio.run(main())


class _Context:
    """The bits of a gRPC servicer context the handlers use."""

    def time_remaining(self) -> float | None:
        return None

    async def abort(self, code: Any, details: str) -> None:
        raise AssertionError(f"{code}: {details}")


def test_big_grpc_request_decodes_off_the_event_loop(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A big ModelInfer message is decoded in a worker thread: the event loop (health
    checks) runs while it is decoded. (Inline, the decode would wait out its 10 s guard.)"""
    import threading

    from tritonclient.grpc import service_pb2 as pb

    from enserve.server import grpc as grpc_server
    from enserve.server.decoding import THREAD_BYTES

    decoding, answered = threading.Event(), threading.Event()
    seen: list[bool] = []
    real = grpc_server.decode_request

    def slow_decode(message: Any, limits: Limits) -> InferRequest:
        decoding.set()
        seen.append(answered.wait(10))  # ends early only if the loop ran meanwhile
        return real(message, limits)

    monkeypatch.setattr(grpc_server, "decode_request", slow_decode)
    rows = THREAD_BYTES // (6 * 4) + 1
    message = pb.ModelInferRequest(model_name="tiny")
    tensor = message.inputs.add(name="x", datatype="FP32", shape=[rows, 6])
    tensor.contents.fp32_contents.extend(np.full(rows * 6, 0.5, np.float32).tolist())

    async def main() -> None:
        plane, backends = _plane(repo, max_batch=rows)
        await plane.repository.load("tiny")
        backends["tiny"].gate.set()
        servicer = grpc_server.InferenceServicer(plane)
        call = asyncio.create_task(servicer.ModelInfer(message, _Context()))  # type: ignore[arg-type]
        while not decoding.is_set():
            await asyncio.sleep(0.005)
        assert plane.live()
        answered.set()  # the "health check" ran while the message was decoded
        reply = await call
        assert reply.outputs[0].shape[0] == rows

    asyncio.run(main())
    assert seen == [True]


_ROWS = 80_000  # 480,000 values of "0.5,": a 1.9 MB body, decoded into a 1.9 MB array


@pytest.mark.parametrize(("values", "limits", "status", "says"), [
    (_ROWS * 6, {"max_batch": 4}, 400, "batch"),  # decoded in full, then refused by the plane
    (_ROWS * 6 - 1, {}, 400, "values given"),  # refused while decoding, in a thread
    (_ROWS * 6, {"body_budget_bytes": 3 * 1024 * 1024}, 503, "budget"),  # no room for the array
])
def test_refused_big_body_is_freed_without_the_cyclic_gc(
        repo: Path, values: int, limits: dict[str, int], status: int, says: str) -> None:
    """A big JSON body refused after it was read leaves nothing of its size behind, with the
    cyclic GC off, neither once answered nor when the body budget releases its bytes: no
    reference cycle may keep the body or its arrays beyond the budget (before, a recursive
    closure of the JSON scanner held each body until a collection found it, and the budget
    was released before the frames of a failed request were cleared)."""
    import gc
    import tracemalloc

    import httpx

    from enserve.server.http import build_app

    body = (f'{{"inputs":[{{"name":"x","datatype":"FP32","shape":[{_ROWS},6],'
            f'"data":[{",".join(["0.5"] * values)}]}}]}}').encode()
    at_release: list[int] = []

    async def main() -> int:
        plane, _ = _plane(repo, **limits)
        await plane.repository.load("tiny")
        release = plane.body_budget.release

        def traced_release(nbytes: int) -> None:
            if nbytes >= len(body):  # this request's body and more: its arrays should be gone
                at_release.append(tracemalloc.get_traced_memory()[0])
            release(nbytes)

        plane.body_budget.release = traced_release  # type: ignore[method-assign]
        transport = httpx.ASGITransport(app=build_app(plane))
        async with httpx.AsyncClient(transport=transport, base_url="http://enserve") as client:
            warm = await client.post("/v2/models/tiny/infer", content=body)  # imports, caches
            assert warm.status_code == status, warm.text
            gc.collect()
            gc.disable()
            at_release.clear()
            tracemalloc.start()
            try:
                reply = await client.post("/v2/models/tiny/infer", content=body)
                assert reply.status_code == status and says in reply.text, reply.text
                del reply
                # the app ran in this task: let the loop drop the callback handle that
                # resumed it (it holds the decode's future, whose result is the request)
                await asyncio.sleep(0)
                return tracemalloc.get_traced_memory()[0]
            finally:
                tracemalloc.stop()
                gc.enable()

    left = asyncio.run(main())
    assert left < len(body) // 4, f"{left} bytes still held after a {len(body)}-byte body was refused"
    assert at_release and max(at_release) < len(body) // 4, (
        f"{at_release} bytes held when the budget released a {len(body)}-byte body")
