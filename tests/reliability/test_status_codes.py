"""Whose fault is it: client errors 4xx, server faults 5xx, not ready / overloaded 503 with
`Retry-After` — on HTTP and gRPC alike, with no filesystem path in any error body."""

from __future__ import annotations

import json
import re

import grpc
import httpx
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from tests.helpers.server import TOKEN, RunningServer

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def http(fault_server: RunningServer) -> httpx.Client:
    with httpx.Client(base_url=f"http://{fault_server.http_url}", timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def stub(fault_server: RunningServer) -> pb_grpc.GRPCInferenceServiceStub:
    channel = grpc.insecure_channel(fault_server.grpc_url)
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def _infer_body(x: list[float], **parameters: object) -> dict[str, object]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 6], "data": x}],
            "parameters": parameters}


# --- 7: malformed input is a 400, never a 500 ----------------------------------------------
MALFORMED = {
    "zero-element tensor with a huge axis": b'{"inputs":[{"name":"x","datatype":"FP32",'
        b'"shape":[4611686018427387904,0,8,8],"data":[]}]}',
    "a JSON integer of 5000 digits": b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,6],'
        b'"data":[' + b"9" * 5000 + b',0,0,0,0,0]}]}',
    "timeout of 1 followed by 400 zeros": json.dumps(
        {**_infer_body([0.0] * 6), "parameters": {"timeout": 10**400}}, default=str).encode()
        .replace(b'"' + str(10**400).encode() + b'"', str(10**400).encode()),
    "timeout NaN": b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,6],"data":[0,0,0,0,0,0]}],'
        b'"parameters":{"timeout":NaN}}',
    "timeout Infinity": b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,6],"data":[0,0,0,0,0,0]}],'
        b'"parameters":{"timeout":Infinity}}',
}


@pytest.mark.parametrize("what", sorted(MALFORMED))
def test_malformed_infer_body_is_400(http: httpx.Client, what: str) -> None:
    response = http.post("/v2/models/tiny/infer", content=MALFORMED[what])
    assert response.status_code == 400, (what, response.status_code, response.text)
    assert "error" in response.json()


@pytest.mark.parametrize("value", ["²", "١٢", "9" * 5000, "-1", "1e3"])
def test_bad_header_length_is_400(http: httpx.Client, value: str) -> None:
    body = json.dumps(_infer_body([0.0] * 6)).encode()
    response = http.post("/v2/models/tiny/infer", content=body,
                         headers={"Inference-Header-Content-Length": value.encode()})
    assert response.status_code == 400, (value, response.status_code, response.text)


def test_overlong_model_name_is_400(http: httpx.Client) -> None:
    name = "m" * 300
    for path in (f"/v2/repository/models/{name}/load", f"/v2/repository/models/{name}/unload"):
        response = http.post(path, headers=AUTH)
        assert response.status_code == 400, (path, response.status_code, response.text)
    assert http.post(f"/v2/models/{name}/infer", json=_infer_body([0.0] * 6)).status_code in (400, 404)
    assert http.get(f"/v2/models/{name}").status_code in (400, 404)


def test_grpc_malformed_is_invalid_argument(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = pb.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="x", datatype="FP32", shape=[4611686018427387904, 0, 8, 8])
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()

    for bad in (float("nan"), float("inf"), 1e300):
        request = pb.ModelInferRequest(model_name="tiny")
        tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 6])
        tensor.contents.fp32_contents.extend([0.0] * 6)
        request.parameters["timeout"].double_param = bad
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (bad, info.value.details())


# --- 3: server faults are 5xx, not-ready is 503 with Retry-After ---------------------------
def test_member_failure_is_500_not_400(http: httpx.Client, stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    response = http.post("/v2/models/crashy/infer", json=_infer_body([13.0] + [0.0] * 5))
    assert response.status_code == 500, response.text
    assert "blew up" in response.json()["error"]
    request = pb.ModelInferRequest(model_name="crashy")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 6])
    tensor.contents.fp32_contents.extend([13.0] + [0.0] * 5)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    # and the member still answers good requests afterwards
    assert http.post("/v2/models/crashy/infer", json=_infer_body([1.0] * 6)).status_code == 200


def test_model_not_loaded_is_503_with_retry_after(http: httpx.Client,
                                                   stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    response = http.post("/v2/models/pix/infer", json=_infer_body([0.0] * 6))  # in the repo, not loaded
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) >= 1
    request = pb.ModelInferRequest(model_name="pix")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 6]).contents.fp32_contents.extend([0.0] * 6)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_unknown_model_stays_404(http: httpx.Client) -> None:
    assert http.post("/v2/models/nope/infer", json=_infer_body([0.0] * 6)).status_code == 404


# --- 4: a default deadline, per server and per request -------------------------------------
def test_default_deadline_applies(http: httpx.Client) -> None:
    """The server runs with --request-timeout 0.15: the slow model (0.3 s) times out."""
    response = http.post("/v2/models/slow/infer", json=_infer_body([0.0] * 6))
    assert response.status_code == 504, response.text
    # a request may ask for longer than the server's default
    response = http.post("/v2/models/slow/infer", json=_infer_body([0.0] * 6, timeout=5_000_000))
    assert response.status_code == 200, response.text


# --- 8: no absolute path in any error body -------------------------------------------------
ABSOLUTE = re.compile(r"(?<![\w.])/(?:tmp|home|work|root|usr|var|private)/")


def test_no_paths_in_error_bodies(http: httpx.Client, fault_server: RunningServer) -> None:
    bodies = []
    for name in ("broken", "evil"):
        response = http.post(f"/v2/repository/models/{name}/load", headers=AUTH)
        assert response.status_code == 400, response.text
        bodies.append(response.text)
    index = http.post("/v2/repository/index", headers=AUTH, json={})
    assert index.status_code == 200
    bodies.append(index.text)
    assert any("does_not_exist" in b for b in bodies)  # still says what went wrong
    for body in bodies:
        assert not ABSOLUTE.search(body), body


# --- 9: code named by a spec runs only when the operator trusts it --------------------------
def test_untrusted_callable_refused(http: httpx.Client) -> None:
    """`evil` names python:os:getpid; the server trusts only `models.py`."""
    response = http.post("/v2/repository/models/evil/load", headers=AUTH)
    assert response.status_code == 400
    assert "trust" in response.json()["error"]


def test_http_health_not_ready_is_503(http: httpx.Client) -> None:
    assert http.get("/v2/models/pix/ready").status_code == 503
    assert http.get("/v2/models/tiny/ready").status_code == 200


def test_numbers_still_work(http: httpx.Client) -> None:
    x = np.random.default_rng(1).standard_normal(6).astype(np.float32)
    response = http.post("/v2/models/tiny/infer", json=_infer_body([float(v) for v in x]))
    assert response.status_code == 200
