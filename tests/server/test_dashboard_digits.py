"""One real server on the digits ensemble (engine backend, a plan, a memory budget):
the dashboard opened in headless Chromium must show the numbers `/metrics` says, and every
query of the Grafana dashboard must name a metric this server exports."""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from tests.helpers.browser import dump_dom, find_chromium, keyed_text, screenshot
from tests.helpers.server import RunningServer, start_server

ROOT = Path(__file__).resolve().parents[2]
BATCHES = (1, 2, 4, 8, 3)
PREDICTED = 640.0
MEMBERS = ("cnn", "dwcnn", "mlp", "cnn5")


def _plan() -> dict[str, object]:
    """A hand-written plan: every member once on the CPU, half a core each."""
    return {
        "algorithm": "hand-written", "objective": "throughput",
        "devices": [{"id": "cpu", "kind": "cpu", "memory_bytes": 8 << 30, "compute_units": 2}],
        "instances": [{"member": m, "variant": None, "device": "cpu", "batch_size": 8, "share": 0.5,
                       "memory_bytes": 1 << 20} for m in MEMBERS],
        "predicted": {"throughput": PREDICTED, "latency_s": 0.01},
    }


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("repo")
    shutil.copytree(ROOT / "examples" / "digits", repo / "digits")
    (repo / "digits" / "plan.json").write_text(json.dumps(_plan()))
    shutil.copytree(repo / "digits", repo / "other")  # in the repository, never loaded
    (repo / "other" / "plan.json").unlink()
    server = start_server(repo, tmp_path_factory.mktemp("server"), "--backend", "engine",
                          "--memory-budget-mb", "16384", "--plan-policy", "reuse", models=["digits"])
    yield server
    assert server.stop() == 0, server.log.read_text()


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
def test_dashboard_in_chromium_matches_metrics(digits: RunningServer, tmp_path: Path) -> None:
    browser = find_chromium()
    server = digits
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
    assert int(shown["digits/requests.success"]) == _value(metrics, "nv_inference_request_success_total", **model) >= 40
    assert int(shown["digits/requests.failure"]) == _value(metrics, "nv_inference_request_failure_total", **model) >= 3
    assert int(shown["digits/requests.inferences"]) == _value(metrics, "nv_inference_count_total", **model) >= 8 * sum(BATCHES)
    assert int(shown["digits/errors.bad_request"]) == _value(
        metrics, "enserve_request_failures_total", model="digits", reason="bad_request") >= 3
    for q, key in ((0.5, "p50"), (0.99, "p99")):
        expected = 1000 * _quantile(q, metrics, "enserve_request_latency_seconds", "digits")
        assert _shown_ms(shown[f"digits/latency.{key}"]) == pytest.approx(expected, rel=0.01), key
    for entry in stats["model_stats"][0]["batch_stats"]:
        assert attrs[f"digits/batch.{entry['batch_size']}"]["data-count"] == str(entry["compute_infer"]["count"])
    for member in MEMBERS:
        restarts = _value(metrics, "enserve_instance_restarts_total", model="digits", member=member)
        assert int(shown[f"digits/member.{member}.restarts"]) == restarts
        cell = shown[f"digits/plan.{member}.cpu"]
        assert cell.startswith("b") and " s" in cell, cell  # batch and share in each cell
    assert float(shown["digits/requests.per_s"]) > 0
    assert shown["residency/digits"] == "loaded" and shown["residency/other"] == "not loaded"
    assert shown["digits/plan.predicted"] == f"{PREDICTED:.0f} rows/s"

    picture = screenshot(browser, url, tmp_path / "dashboard.png")
    with Image.open(picture) as image:
        assert image.size == (1400, 1300)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 50  # drawn, not a blank page


PROMQL_WORDS = {
    "sum", "avg", "min", "max", "count", "by", "without", "rate", "irate", "increase", "histogram_quantile",
    "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool", "topk", "bottomk",
    "clamp_min", "clamp_max", "label_values", "abs", "delta", "deriv", "avg_over_time", "max_over_time",
}


def _metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers outside label matchers, grouping
    clauses, strings, ranges and numbers that are not PromQL's own words."""
    stripped = re.sub(r'"[^"]*"', "", expr)
    stripped = re.sub(r"\{[^}]*\}", "", stripped)
    stripped = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", stripped)
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)
    names = set(re.findall(r"(?<![\w$.])[a-zA-Z_:][a-zA-Z0-9_:]*", stripped))
    return names - PROMQL_WORDS


def _exported(text: str) -> set[str]:
    """Every series name the scrape can carry, from its samples and `# TYPE` lines."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            names.add(name)
            if kind.strip() == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def _queries(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            else:
                yield from _queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from _queries(item)


def test_grafana_queries_name_exported_metrics(digits: RunningServer) -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "enserve.json").read_text())
    with httpx.Client(base_url=f"http://{digits.http_url}", timeout=60) as client:
        tensor = {"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.5] * 64}
        assert client.post("/v2/models/digits/infer", json={"inputs": [tensor]}).status_code == 200
        client.post("/v2/models/digits/infer", json={"inputs": [{**tensor, "shape": [1, 64]}]})
        exported = _exported(client.get("/metrics").text)
        metrics_port = httpx.get(f"http://127.0.0.1:{digits.metrics}/metrics", timeout=60).text
    assert _exported(metrics_port) == exported
    # GPU gauges are exported only by a process that uses CUDA (none here): they must at least
    # be the names the server writes.
    source = (ROOT / "src" / "enserve" / "server" / "metrics.py").read_text()
    gpu_only = {n for n in ("nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes", "nv_gpu_utilization")
                if f'"{n}"' in source}
    queries = list(_queries(dashboard))
    assert len(queries) >= 20
    used: set[str] = set()
    for query in queries:
        assert query.count("(") == query.count(")") and query.count("{") == query.count("}"), query
        names = _metric_names(query.split("label_values(", 1)[-1] if "label_values(" in query else query)
        if "label_values(" in query:
            names = {query.split("label_values(", 1)[1].split(",")[0].strip()}
        assert names, query
        missing = names - exported - gpu_only
        assert not missing, f"{query}: {sorted(missing)} not exported"
        used |= names
    assert {"enserve_instance_busy_seconds", "enserve_swap_resident_bytes", "enserve_member_latency_seconds_bucket",
            "enserve_request_failures_total", "enserve_plan_predicted_throughput", "enserve_instance_info"} <= used
