"""The real `tritonclient.http` (sync and asyncio) against a real server process."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from tritonclient.utils import InferenceServerException

from enserve.reference import ReferenceExecutor
from tests.helpers.server import TOKEN, RunningServer

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(server: RunningServer) -> httpclient.InferenceServerClient:
    c = httpclient.InferenceServerClient(server.http_url)
    yield c
    c.close()


def _input(name: str, arr: np.ndarray, binary: bool = True) -> httpclient.InferInput:
    from tritonclient.utils import np_to_triton_dtype

    tensor = httpclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
    tensor.set_data_from_numpy(arr, binary_data=binary)
    return tensor


def test_health_and_server_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "enserve"
    assert "binary_tensor_data" in meta["extensions"]
    assert "model_repository" in meta["extensions"]


def test_model_and_member_metadata(client: httpclient.InferenceServerClient) -> None:
    meta = client.get_model_metadata("tiny")
    assert meta["platform"] == "ensemble"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 6]}]
    outputs = {o["name"]: o for o in meta["outputs"]}
    assert outputs["probabilities"]["shape"] == [-1, 5]
    assert outputs["top_k_indices"]["shape"] == [-1, 2]
    assert {"logits_lin", "logits_mlp"} <= set(outputs)
    assert client.get_model_metadata("tiny", model_version="1")["versions"] == ["1"]
    member = client.get_model_metadata("tiny.mlp")
    assert member["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 5]}]
    assert client.is_model_ready("tiny") and client.is_model_ready("tiny.lin")
    assert not client.is_model_ready("nope")
    assert not client.is_model_ready("tiny", model_version="7")
    assert not client.is_model_ready("broken")


def test_infer_binary_batch_equals_reference(
    client: httpclient.InferenceServerClient, oracle: dict[str, ReferenceExecutor]
) -> None:
    x = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    result = client.infer("tiny", [_input("x", x)])
    expected = oracle["tiny"].infer({"x": x})
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected.probabilities, rtol=1e-5, atol=1e-6)
    assert result.get_response()["model_name"] == "tiny"


def test_infer_json_selected_outputs(
    client: httpclient.InferenceServerClient, oracle: dict[str, ReferenceExecutor]
) -> None:
    x = np.random.default_rng(2).standard_normal((4, 6)).astype(np.float32)
    wanted = [httpclient.InferRequestedOutput("top_k_indices", binary_data=False),
              httpclient.InferRequestedOutput("logits_mlp", binary_data=True),
              httpclient.InferRequestedOutput("agreement", binary_data=False)]
    result = client.infer("tiny", [_input("x", x, binary=False)], outputs=wanted, request_id="r-7")
    expected = oracle["tiny"].infer({"x": x})
    outputs = expected.outputs(oracle["tiny"].spec, ["top_k_indices", "logits_mlp", "agreement"])
    response = result.get_response()
    assert response["id"] == "r-7"
    assert [o["name"] for o in response["outputs"]] == ["top_k_indices", "logits_mlp", "agreement"]
    assert "data" in response["outputs"][0] and "data" not in response["outputs"][1]
    np.testing.assert_array_equal(result.as_numpy("top_k_indices"), outputs["top_k_indices"])
    np.testing.assert_array_equal(result.as_numpy("agreement"), outputs["agreement"])
    np.testing.assert_allclose(result.as_numpy("logits_mlp"), outputs["logits_mlp"], rtol=1e-5, atol=1e-6)


def test_infer_other_datatypes(
    client: httpclient.InferenceServerClient, oracle: dict[str, ReferenceExecutor]
) -> None:
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (5, 1, 4, 4), dtype=np.uint8)
    result = client.infer("pix", [_input("img", img)])
    np.testing.assert_allclose(result.as_numpy("probabilities"), oracle["pix"].infer({"img": img}).probabilities,
                               rtol=1e-5, atol=1e-6)
    a = rng.standard_normal((2, 6)).astype(np.float32)
    b = rng.standard_normal((2, 6))  # FP64
    result = client.infer("twoin", [_input("a", a), _input("b", b, binary=False)])
    np.testing.assert_allclose(result.as_numpy("probabilities"),
                               oracle["twoin"].infer({"a": a, "b": b}).probabilities, rtol=1e-5, atol=1e-6)


def test_compressed_request_and_response(
    client: httpclient.InferenceServerClient, oracle: dict[str, ReferenceExecutor]
) -> None:
    x = np.random.default_rng(4).standard_normal((2, 6)).astype(np.float32)
    for algorithm in ("gzip", "deflate"):
        result = client.infer("tiny", [_input("x", x)], request_compression_algorithm=algorithm,
                              response_compression_algorithm=algorithm)
        np.testing.assert_allclose(result.as_numpy("probabilities"),
                                   oracle["tiny"].infer({"x": x}).probabilities, rtol=1e-5, atol=1e-6)


def test_statistics_and_config(client: httpclient.InferenceServerClient) -> None:
    x = np.ones((2, 6), dtype=np.float32)
    before = client.get_inference_statistics("tiny")["model_stats"][0]
    client.infer("tiny", [_input("x", x)])
    after = client.get_inference_statistics("tiny")["model_stats"][0]
    assert after["inference_count"] == before["inference_count"] + 2
    assert after["execution_count"] == before["execution_count"] + 1
    assert after["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    member = client.get_inference_statistics("tiny.mlp")["model_stats"][0]
    assert member["inference_count"] >= 2
    everything = client.get_inference_statistics()["model_stats"]
    assert {"tiny", "tiny.lin", "tiny.mlp"} <= {s["name"] for s in everything}
    config = client.get_model_config("tiny")
    assert config["platform"] == "ensemble" and config["max_batch_size"] == 16
    assert config["input"][0] == {"name": "x", "data_type": "TYPE_FP32", "dims": [6]}
    assert [s["model_name"] for s in config["ensemble_scheduling"]["step"]] == ["tiny.lin", "tiny.mlp"]


def test_repository_index_unload_load(client: httpclient.InferenceServerClient) -> None:
    index = {row["name"]: row for row in client.get_model_repository_index(headers=AUTH)}
    assert index["tiny"]["state"] == "READY"
    assert index["slow"]["state"] == "UNAVAILABLE"
    assert index["broken"]["state"] == "UNAVAILABLE" and "does_not_exist" in index["broken"]["reason"]
    with pytest.raises(InferenceServerException, match="Bearer"):
        client.unload_model("pix")
    client.unload_model("pix", headers=AUTH)
    assert not client.is_model_ready("pix")
    with pytest.raises(InferenceServerException, match="not ready"):
        client.infer("pix", [_input("img", np.zeros((1, 1, 4, 4), dtype=np.uint8))])
    client.load_model("pix", headers=AUTH)
    assert client.is_model_ready("pix")
    with pytest.raises(InferenceServerException, match="outside|valid model name"):
        client.load_model("..", headers=AUTH)
    with pytest.raises(InferenceServerException, match="not in the repository"):
        client.load_model("nothing_here", headers=AUTH)
    with pytest.raises(InferenceServerException, match="does_not_exist"):
        client.load_model("broken", headers=AUTH)


@pytest.mark.parametrize(
    ("model", "inputs", "outputs", "message"),
    [
        ("nope", [("x", np.zeros((1, 6), np.float32))], None, "unknown model"),
        ("tiny", [("x", np.zeros((1, 7), np.float32))], None, "axis 1 is 7"),
        ("tiny", [("x", np.zeros((1, 6), np.bool_))], None, "datatype BOOL given, FP32 expected"),
        ("tiny", [("x", np.zeros((1, 6), np.float16))], None, "datatype FP16 given"),
        ("tiny", [("y", np.zeros((1, 6), np.float32))], None, "unknown input"),
        ("tiny", [("x", np.zeros((1, 6), np.float32))], ["nope"], "unknown output"),
        ("tiny", [("x", np.zeros((17, 6), np.float32))], None, "exceeds the limit 16"),
        ("tiny", [("x", np.full((1, 6), np.nan, np.float32))], None, "NaN"),
        ("tiny.lin", [("x", np.zeros((1, 6), np.float32))], None, "member"),
    ],
)
def test_error_paths(client: httpclient.InferenceServerClient, model: str, inputs: list, outputs: list | None,
                     message: str) -> None:
    wanted = [httpclient.InferRequestedOutput(n) for n in outputs] if outputs else None
    with pytest.raises(InferenceServerException, match=message):
        client.infer(model, [_input(n, a) for n, a in inputs], outputs=wanted)
    assert client.is_server_ready()


def test_asyncio_client_concurrent(server: RunningServer, oracle: dict[str, ReferenceExecutor]) -> None:
    rng = np.random.default_rng(5)
    batches = [rng.standard_normal((b, 6)).astype(np.float32) for b in (1, 2, 3, 4, 5, 6)]

    async def main() -> list[np.ndarray]:
        client = aiohttpclient.InferenceServerClient(server.http_url)
        try:
            assert await client.is_server_ready()
            tensors = []
            for x in batches:
                t = aiohttpclient.InferInput("x", list(x.shape), "FP32")
                t.set_data_from_numpy(x)
                tensors.append(t)
            results = await asyncio.gather(*(client.infer("tiny", [t]) for t in tensors))
            return [r.as_numpy("probabilities") for r in results]
        finally:
            await client.close()

    for x, got in zip(batches, asyncio.run(main()), strict=True):
        np.testing.assert_allclose(got, oracle["tiny"].infer({"x": x}).probabilities, rtol=1e-5, atol=1e-6)
