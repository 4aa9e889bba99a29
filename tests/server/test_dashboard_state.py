"""The dashboard's JSON: Prometheus text read back exactly, windows over scrapes, the
endpoint on a real server (reference backend), and the flag that turns it off."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import httpx
import numpy as np
import pytest

from enserve.server.app import EnserveServer, ServerConfig
from enserve.server.backend import Timing
from enserve.server.dashboard.history import History, Scrape
from enserve.server.dashboard.promtext import parse, quantile
from enserve.server.metrics import BUCKETS, Metrics
from enserve.server.stats import StatsBook
from tests.helpers.server import RunningServer


def test_parse_reads_back_what_metrics_renders() -> None:
    stats = StatsBook()
    stats.of('odd"name\\x', "1").record_success(4, 0.01, 0.001, 0.0, 0.008, 0.0)
    metrics = Metrics(stats)
    metrics.request_latency.labels("m").observe(0.003)
    metrics.request_failures.labels("m", "timeout").inc(2)
    samples = parse(metrics.render().decode())
    assert samples.total("nv_inference_count", model='odd"name\\x') == 4
    assert samples.total("nv_inference_request_success") == 1
    assert samples.families["nv_inference_count"].kind == "counter"
    assert samples.total("enserve_request_failures_total", model="m", reason="timeout") == 2
    assert samples.total("enserve_request_latency_seconds_count", model="m") == 1
    buckets = samples.buckets("enserve_request_latency_seconds", model="m")
    assert buckets[-1] == (math.inf, 1.0) and dict(buckets)[0.0025] == 0.0 and dict(buckets)[0.005] == 1.0


def test_quantile_interpolates_inside_buckets_like_promql() -> None:
    buckets = [(0.1, 10.0), (0.2, 30.0), (0.4, 40.0), (math.inf, 40.0)]
    assert quantile(0.25, buckets) == pytest.approx(0.1)        # rank 10: top of the first bucket
    assert quantile(0.5, buckets) == pytest.approx(0.15)        # rank 20: halfway through (0.1, 0.2]
    assert quantile(0.05, buckets) == pytest.approx(0.02)       # rank 2 of 10 in (0, 0.1]
    assert quantile(1.0, buckets) == pytest.approx(0.4)
    assert quantile(0.99, [(1.0, 1.0), (math.inf, 5.0)]) == 1.0  # in +Inf: the largest finite bound
    assert quantile(0.5, [(1.0, 0.0), (math.inf, 0.0)]) is None


def _scrape(t: float, count: float, slow: float) -> Scrape:
    text = (f'c{{model="a"}} {count}\n'
            f'h_bucket{{le="0.1",model="a"}} {count - slow}\nh_bucket{{le="1.0",model="a"}} {count}\n'
            f'h_bucket{{le="+Inf",model="a"}} {count}\nh_count{{model="a"}} {count}\nh_sum{{model="a"}} {count * 0.05}\n')
    return Scrape(t, parse(text))


def test_window_rates_and_quantiles_cover_only_the_window() -> None:
    history = History(window_s=10.0, max_window_s=30.0)
    for t, count, slow in [(0, 0, 0), (5, 100, 0), (10, 200, 0), (15, 300, 0)]:
        history.add(_scrape(t, count, slow))
    now = _scrape(20, 400, 100)                    # the last 100 were all slow
    window = history.window(now)                   # base: t=10 (newest at least 10 s old)
    assert window.span_s == 10
    assert window.rate("c", model="a") == pytest.approx(20.0)
    assert window.quantiles("h", model="a")["p50_s"] == pytest.approx(0.1)  # rank 100 of 200: top of bucket 1
    assert window.quantiles("h", model="a")["p99_s"] > 0.9
    since_start = history.window(now, 0)
    assert since_start.span_s == 20 and since_start.rate("c", model="a") == pytest.approx(20.0)
    young = History(window_s=10.0)
    young.add(_scrape(0, 0, 0))
    assert young.window(_scrape(3, 30, 0)).rate("c", model="a") == pytest.approx(10.0)  # shorter while young
    assert History().window(_scrape(0, 5, 0)).rate("c", model="a") is None


def test_counter_reset_counts_from_zero() -> None:
    history = History(window_s=10.0)
    history.add(_scrape(0, 500, 0))
    assert history.window(_scrape(10, 40, 0)).increase("c", model="a") == 40


def _metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families  # independent of promtext

    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_state_endpoint_matches_metrics(server: RunningServer) -> None:
    url = f"http://{server.http_url}"
    x = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 6], "data": x.ravel().tolist()}]}
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(5):
            assert client.post("/v2/models/tiny/infer", json=body).status_code == 200
        bad = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 5], "data": [0.0] * 15}]}
        assert client.post("/v2/models/tiny/infer", json=bad).status_code == 400
        text = client.get("/metrics").text
        state = client.get("/dashboard/state", params={"window": 0}).json()
        assert client.get("/dashboard/state", params={"window": "soon"}).status_code == 400
        assert "error" in client.get("/dashboard/state", params={"window": "-1"}).json()
    m = _metrics(text)
    tiny = next(e for e in state["ensembles"] if e["name"] == "tiny")
    labels = (("model", "tiny"), ("version", "1"))
    assert tiny["requests"]["success"] == m[("nv_inference_request_success_total", labels)]
    assert tiny["requests"]["failure"] == m[("nv_inference_request_failure_total", labels)] >= 1
    assert tiny["requests"]["inferences"] == m[("nv_inference_count_total", labels)]
    errors = {e["reason"]: e["total"] for e in tiny["errors"]}
    assert errors["bad_request"] == m[("enserve_request_failures_total", (("model", "tiny"), ("reason", "bad_request")))]
    assert tiny["batches"]["request_rows"]["3"] >= 5
    assert [m_["name"] for m_ in tiny["members"]] == ["lin", "mlp"]
    assert all(m_["latency"]["p50_s"] > 0 and m_["lateness_s"] >= 0 for m_ in tiny["members"])
    # the fastest member's lateness is 0, read back as a p50 inside the first histogram bucket
    assert min(m_["lateness_s"] for m_ in tiny["members"]) <= BUCKETS[0]
    assert tiny["plan"]["devices"] == []  # the reference backend runs members in-process
    states = {r["name"]: r["state"] for r in state["residency"]["models"]}
    assert states["tiny"] == "loaded" and states["slow"] == "not loaded"
    names = {f["name"] for f in state["metrics"]}
    assert {"nv_inference_count", "enserve_request_latency_seconds", "enserve_request_failures_total"} <= names
    assert state["server"]["backend"] == "reference" and state["server"]["ready"] is True


def test_page_is_self_contained(server: RunningServer) -> None:
    response = httpx.get(f"http://{server.http_url}/dashboard", timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    page = response.text
    assert "<script" in page and "<style" in page
    for external in ("http://", "https://", "//cdn", "<link", "src="):
        assert external not in page, external


def test_no_dashboard_flag(repo: Path) -> None:
    async def main(enabled: bool) -> tuple[int, int]:
        config = ServerConfig(repository=repo, http_port=0, grpc_port=None, metrics_port=None,
                              models=["tiny"], dashboard=enabled)
        server = EnserveServer(config)
        await server.start()
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.ports['http']}") as client:
                page = (await client.get("/dashboard")).status_code
                data = (await client.get("/dashboard/state")).status_code
        finally:
            await server.stop()
        return page, data

    assert asyncio.run(main(False)) == (404, 404)
    assert asyncio.run(main(True)) == (200, 200)


def test_policy_counters_reach_the_snapshot() -> None:
    from types import SimpleNamespace

    from enserve.server.dashboard.state import _policies

    metrics = Metrics(StatsBook())
    timing = SimpleNamespace(timing=Timing(0.0, 0.03, {"fast": 0.01}))
    metrics.observe_policy("m", SimpleNamespace(stage_rows=[6, 3], late=["slow"], outcome=timing))
    metrics.observe_policy("m", SimpleNamespace(stage_rows=[2, 0], late=[], outcome=timing))
    metrics.observe_deadline_exceeded("m")
    history = History()
    history.add(Scrape(0.0, parse(Metrics(StatsBook()).render().decode())))
    window = history.window(Scrape(2.0, parse(metrics.render().decode())))
    found = _policies("m", window)
    assert found is not None
    assert [(s["stage"], s["total"], s["per_s"]) for s in found["stage_answers"]] == [("0", 8, 4), ("1", 3, 1.5)]
    assert found["partial_answers"]["total"] == 1 and found["deadline_exceeded"]["total"] == 1
    assert _policies("other", window) is None


def test_callers_share_one_snapshot_within_reuse_s(tmp_path: Path) -> None:
    from fastapi import FastAPI

    from enserve.server.dashboard import add_dashboard
    from enserve.server.dataplane import DataPlane
    from enserve.server.repository import ModelRepository

    plane = DataPlane(ModelRepository(tmp_path, lambda spec: None))  # type: ignore[arg-type,return-value]
    app = FastAPI()
    add_dashboard(app, plane, reuse_s=3600.0)

    async def fetch() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as client:
            return [await client.get("/dashboard/state", params={"window": w}) for w in (7, 7, 8)]

    first, second, other = asyncio.run(fetch())
    assert "cpu;dur=" in first.headers["server-timing"] and "reused" not in first.headers["server-timing"]
    assert "reused" in second.headers["server-timing"] and second.content == first.content
    assert "reused" not in other.headers["server-timing"]
    assert first.json()["ensembles"] == [] and first.json()["residency"]["models"] == []


def test_refusals_before_the_data_plane_are_counted_by_reason(server: RunningServer) -> None:
    """Bad JSON, a bad binary header and an undecodable gRPC message never reach `infer`;
    they still count in `enserve_request_failures_total`, which the dashboard's errors show."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb

    key = ("enserve_request_failures_total", (("model", "tiny"), ("reason", "bad_request")))
    with httpx.Client(base_url=f"http://{server.http_url}", timeout=30) as client:
        before = _metrics(client.get("/metrics").text).get(key, 0.0)
        assert client.post("/v2/models/tiny/infer", content=b"{not json").status_code == 400
        assert client.post("/v2/models/tiny/infer", content=b"{}",
                           headers={"Inference-Header-Content-Length": "-3"}).status_code == 400
        request = pb.ModelInferRequest(model_name="tiny")
        request.inputs.add(name="x", datatype="FP32", shape=[2, 6])  # no raw_input_contents for it
        with grpc.insecure_channel(server.grpc_url) as channel:
            infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                        request_serializer=pb.ModelInferRequest.SerializeToString,
                                        response_deserializer=pb.ModelInferResponse.FromString)
            with pytest.raises(grpc.RpcError) as refused:
                infer(request, timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        after = _metrics(client.get("/metrics").text)[key]
    assert after == before + 3
