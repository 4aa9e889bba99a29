"""The wire format byte by byte (httpx), malformed bodies, limits, metrics, and a fuzz run."""

from __future__ import annotations

import gzip
import json
import zlib

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enserve.reference import ReferenceExecutor
from tests.helpers.server import RunningServer

HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def http(server: RunningServer) -> httpx.Client:
    with httpx.Client(base_url=f"http://{server.http_url}", timeout=30,
                      headers={"Accept-Encoding": "identity"}) as client:
        yield client


def _binary_request(x: np.ndarray, **parameters: object) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({
        "inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.nbytes}}],
        "parameters": parameters,
    }).encode()
    return header + x.tobytes(), {HEADER: str(len(header))}


def test_binary_response_layout(http: httpx.Client, oracle: dict[str, ReferenceExecutor]) -> None:
    x = np.random.default_rng(21).standard_normal((2, 6)).astype(np.float32)
    body, headers = _binary_request(x, binary_data_output=True)
    response = http.post("/v2/models/tiny/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    length = int(response.headers[HEADER])
    header = json.loads(response.content[:length])
    out = header["outputs"][0]
    assert out["name"] == "probabilities" and out["parameters"]["binary_data_size"] == 2 * 5 * 4
    probs = np.frombuffer(response.content[length:], dtype="<f4").reshape(out["shape"])
    np.testing.assert_allclose(probs, oracle["tiny"].infer({"x": x}).probabilities, rtol=1e-5, atol=1e-6)


def test_raw_binary_request(http: httpx.Client, oracle: dict[str, ReferenceExecutor]) -> None:
    img = np.random.default_rng(22).integers(0, 256, (1, 1, 4, 4), dtype=np.uint8)
    response = http.post("/v2/models/pix/infer", content=img.tobytes(), headers={HEADER: "0"})
    assert response.status_code == 200, response.text
    length = int(response.headers[HEADER])
    probs = np.frombuffer(response.content[length:], dtype="<f4")
    np.testing.assert_allclose(probs, oracle["pix"].infer({"img": img}).probabilities[0], rtol=1e-5, atol=1e-6)


def test_nested_json_data_and_gzip(http: httpx.Client, oracle: dict[str, ReferenceExecutor]) -> None:
    x = np.random.default_rng(23).standard_normal((2, 6)).astype(np.float32)
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 6], "data": x.tolist()}]})
    response = http.post("/v2/models/tiny/versions/1/infer", content=gzip.compress(body.encode()),
                         headers={"Content-Encoding": "gzip"})
    assert response.status_code == 200, response.text
    out = response.json()["outputs"][0]
    np.testing.assert_allclose(np.array(out["data"]).reshape(out["shape"]),
                               oracle["tiny"].infer({"x": x}).probabilities, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b"{not json", {}, 400, "not valid JSON"),
        (b"[]", {}, 400, "JSON object"),
        (b'{"inputs": []}', {}, 400, "non-empty list"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 6], "data": [1, 2]}]}', {}, 400,
         "2 values given"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 6], "data": ["a","b","c","d","e","f"]}]}',
         {}, 400, "numbers"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 6], "data": [NaN,0,0,0,0,0]}]}', {}, 400,
         "NaN"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 6], '
         b'"parameters": {"binary_data_size": 24}}]}' + b"\0" * 10, {HEADER: "88"}, 400, "truncated"),
        (b'{"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]}', {}, 400, "BYTES"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 6], "data": [0,0,0,0,0,0]}]}',
         {HEADER: "9999"}, 400, "outside the body"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 6], "data": [0,0,0,0,0,0]}]}',
         {"Content-Encoding": "br"}, 415, "not supported"),
        (b"x" * (1024 * 1024 + 1), {}, 413, "exceeds the limit"),
        (gzip.compress(b" " * (2 * 1024 * 1024)), {"Content-Encoding": "gzip"}, 413, "decompressed"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 6], "data": [0,0,0,0,0,0]}],'
         b' "parameters": {"timeout": "soon"}}', {}, 400, "timeout"),
        (b"[" * 100000 + b"]" * 100000, {}, 400, "JSON"),
    ],
)
def test_malformed_requests(http: httpx.Client, body: bytes, headers: dict[str, str], status: int,
                            message: str) -> None:
    if headers.get(HEADER) == "88":
        headers = {HEADER: str(body.index(b"}]}") + 3)}
    response = http.post("/v2/models/tiny/infer", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert http.get("/v2/health/ready").status_code == 200


def test_unknown_paths_and_models(http: httpx.Client) -> None:
    assert http.get("/v2/models/nope").status_code == 404
    assert "unknown model" in http.get("/v2/models/nope").json()["error"]
    assert http.get("/v2/models/tiny/versions/9").status_code == 400
    assert http.get("/v2/nowhere").status_code == 404
    assert http.get("/v2/models/nope/ready").status_code == 503  # not ready: 503, as the server
    assert http.post("/v2/repository/index").status_code == 401


def test_metrics_names(server: RunningServer, http: httpx.Client) -> None:
    x = np.ones((1, 6), np.float32)
    body, headers = _binary_request(x)
    assert http.post("/v2/models/tiny/infer", content=body, headers=headers).status_code == 200
    text = httpx.get(f"http://127.0.0.1:{server.metrics}/metrics").text
    for name in ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
                 "nv_inference_exec_count", "nv_inference_request_duration_us",
                 "nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us",
                 "nv_inference_pending_request_count", "nv_cpu_utilization", "nv_cpu_memory_used_bytes",
                 "enserve_member_latency_seconds_bucket", "enserve_member_skew_seconds_count",
                 "enserve_combine_seconds_sum", "enserve_process_tree_processes",
                 "enserve_process_tree_rss_bytes", "enserve_process_tree_pss_bytes",
                 "enserve_process_tree_uss_bytes"):
        assert f"\n{name}" in text, name
    tree = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
            if line.startswith("enserve_process_tree_")}
    assert 0 < tree["enserve_process_tree_pss_bytes"] <= tree["enserve_process_tree_rss_bytes"]
    assert tree["enserve_process_tree_processes"] >= 1
    assert 'nv_inference_count{model="tiny.lin",version="1"}' in text
    assert 'enserve_member_latency_seconds_count{member="mlp",model="tiny"}' in text
    assert http.get("/metrics").status_code == 200


# --- fuzz: malformed requests never get a 5xx and never take the server down -------------------
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)
_names = st.sampled_from(["x", "y", "", "img"]) | st.text(max_size=5)
_datatypes = st.sampled_from(["FP32", "FP64", "INT8", "UINT8", "BOOL", "BYTES", "BF16", "fp32", ""]) | st.integers()
_shapes = st.lists(st.integers(-3, 20), max_size=4) | _json_values
_tensors = st.fixed_dictionaries(
    {"name": _names, "datatype": _datatypes, "shape": _shapes},
    optional={"data": _json_values | st.lists(st.floats(allow_nan=True), max_size=40),
              "parameters": st.fixed_dictionaries({}, optional={
                  "binary_data_size": st.integers(-5, 200) | _json_values})},
)
_requests = st.fixed_dictionaries(
    {"inputs": st.lists(_tensors, max_size=3) | _json_values},
    optional={"outputs": st.lists(st.fixed_dictionaries({"name": _names}, optional={
                  "parameters": st.dictionaries(st.sampled_from(["binary_data", "classification"]),
                                                _json_values)}), max_size=3) | _json_values,
              "parameters": st.dictionaries(st.sampled_from(["binary_data_output", "priority", "k"]),
                                            _json_values),
              "id": _json_values},
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(request=_requests, tail=st.binary(max_size=64), header=st.none() | st.integers(-2, 400),
       model=st.sampled_from(["tiny", "pix", "twoin", "tiny.lin", "nope"]))
def test_fuzz_infer_never_5xx(http: httpx.Client, request: dict, tail: bytes, header: int | None,
                              model: str) -> None:
    body = json.dumps(request).encode() + tail
    headers = {} if header is None else {HEADER: str(header)}
    response = http.post(f"/v2/models/{model}/infer", content=body, headers=headers)
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        assert isinstance(response.json()["error"], str)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.binary(max_size=256), encoding=st.sampled_from([None, "gzip", "deflate", "zstd"]),
       path=st.sampled_from(["/v2/models/tiny/infer", "/v2/repository/index",
                             "/v2/repository/models/tiny/load", "/v2/models/%2e%2e/infer"]))
def test_fuzz_bytes_never_5xx(http: httpx.Client, body: bytes, encoding: str | None, path: str) -> None:
    headers = {"Content-Encoding": encoding} if encoding else {}
    if encoding == "deflate" and body:
        body = zlib.compress(body)[: len(body)]
    response = http.post(path, content=body, headers=headers)
    assert response.status_code < 500, response.text


def test_healthy_after_fuzz(http: httpx.Client) -> None:
    assert http.get("/v2/health/ready").status_code == 200
    assert http.get("/v2/models/tiny/ready").status_code == 200
