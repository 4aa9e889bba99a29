"""The dashboard in a real browser: digits served by the engine, real traffic, the page
opened in headless Chromium; the numbers it shows must be the ones `/metrics` says."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from browser import dump_dom, find_chromium, keyed_text, screenshot
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from server_fixtures import start_server
from tritonclient.utils import InferenceServerException

from enserve.server.engine_backend import engine_available

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BATCHES = (1, 2, 4, 8, 3)


def _scrape(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def _value(m: dict[str, list[tuple[dict[str, str], float]]], name: str, **match: str) -> float:
    return sum(v for labels, v in m.get(name, []) if all(labels.get(k) == x for k, x in match.items()))


def _quantile(q: float, m: dict[str, list[tuple[dict[str, str], float]]], name: str, model: str) -> float:
    """histogram_quantile over the scraped buckets (written here, not shared with the server)."""
    buckets = sorted((math.inf if labels["le"] == "+Inf" else float(labels["le"]), v)
                     for labels, v in m[f"{name}_bucket"] if labels.get("model") == model)
    rank = q * buckets[-1][1]
    lo, lo_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            return lo if math.isinf(bound) else lo + (bound - lo) * (rank - lo_count) / (count - lo_count)
        lo, lo_count = bound, count
    raise AssertionError("no bucket reached")


def _shown_ms(text: str) -> float:
    return float(text.replace("ms", "").strip())


@pytest.mark.slow
def test_dashboard_in_chromium_matches_metrics(tmp_path: Path) -> None:
    browser = find_chromium()
    if engine_available():
        pytest.skip(engine_available())
    server = start_server(EXAMPLES, tmp_path, "--backend", "engine", models=["digits"])
    try:
        client = httpclient.InferenceServerClient(server.http_url, network_timeout=120)
        x = np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32)
        for i in range(40):
            batch = BATCHES[i % len(BATCHES)]
            tensor = httpclient.InferInput("input", [batch, 1, 8, 8], "FP32")
            tensor.set_data_from_numpy(x[:batch])
            client.infer("digits", [tensor])
        for _ in range(3):  # refused: wrong shape
            tensor = httpclient.InferInput("input", [2, 64], "FP32")
            tensor.set_data_from_numpy(np.zeros((2, 64), np.float32))
            with pytest.raises(InferenceServerException):
                client.infer("digits", [tensor])
        client.close()
        metrics = _scrape(httpx.get(f"http://{server.http_url}/metrics", timeout=30).text)
        stats = httpx.get(f"http://{server.http_url}/v2/models/digits/stats", timeout=30).json()

        url = f"http://{server.http_url}/dashboard"
        shown, attrs = keyed_text(dump_dom(browser, url))
        # The page's default window is 10 s; every scrape the dashboard kept before this one is
        # the server's start (nothing asked for it during the traffic), so the window spans it all.
        model = {"model": "digits"}
        assert shown["digits/state"] == "READY"
        assert int(shown["digits/requests.success"]) == _value(metrics, "nv_inference_request_success_total", **model) == 40
        assert int(shown["digits/requests.failure"]) == _value(metrics, "nv_inference_request_failure_total", **model) == 3
        assert int(shown["digits/requests.inferences"]) == _value(metrics, "nv_inference_count_total", **model) == 8 * sum(BATCHES)
        assert int(shown["digits/errors.bad_request"]) == _value(
            metrics, "enserve_request_failures_total", model="digits", reason="bad_request") == 3
        for q, key in ((0.5, "p50"), (0.99, "p99")):
            expected = 1000 * _quantile(q, metrics, "enserve_request_latency_seconds", "digits")
            assert _shown_ms(shown[f"digits/latency.{key}"]) == pytest.approx(expected, rel=0.01), key
        for entry in stats["model_stats"][0]["batch_stats"]:
            assert attrs[f"digits/batch.{entry['batch_size']}"]["data-count"] == str(entry["compute_infer"]["count"])
        for member in ("cnn", "dwcnn", "mlp", "cnn5"):
            restarts = _value(metrics, "enserve_instance_restarts_total", model="digits", member=member)
            assert int(shown[f"digits/member.{member}.restarts"]) == restarts
            cell = shown[f"digits/plan.{member}.cpu"]
            assert cell.startswith("b") and " s" in cell, cell  # batch and share in each cell
        assert float(shown["digits/requests.per_s"]) > 0
        assert shown["residency/digits"] == "loaded" and shown["residency/imagenet6"] == "not loaded"

        picture = screenshot(browser, url, tmp_path / "dashboard.png")
        with Image.open(picture) as image:
            assert image.size == (1400, 1300)
            colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
            assert colours is None or len(colours) > 50  # drawn, not a blank page
    finally:
        assert server.stop() == 0, server.log.read_text()
