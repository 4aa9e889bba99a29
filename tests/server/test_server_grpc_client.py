"""The real `tritonclient.grpc` (sync and asyncio) against a real server process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aiogrpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from enserve.reference import ReferenceExecutor
from tests.helpers.server import TOKEN, RunningServer

AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


def _input(name: str, arr: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
    tensor.set_data_from_numpy(arr)
    return tensor


def test_health_and_metadata(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert "statistics" in client.get_server_metadata(as_json=True)["extensions"]
    meta = client.get_model_metadata("tiny", as_json=True)
    assert meta["platform"] == "ensemble"
    assert meta["inputs"][0] == {"name": "x", "datatype": "FP32", "shape": ["-1", "6"]}
    member = client.get_model_metadata("twoin.mlp", as_json=True)
    assert member["inputs"][0]["datatype"] == "FP64"
    assert client.is_model_ready("tiny.lin") and not client.is_model_ready("nope")
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_metadata("nope")
    with pytest.raises(InferenceServerException, match="not supported") as info:
        client.get_system_shared_memory_status()
    assert info.value.status() == "StatusCode.UNIMPLEMENTED"


def test_infer_equals_reference(
    client: grpcclient.InferenceServerClient, oracle: dict[str, ReferenceExecutor]
) -> None:
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 6)).astype(np.float32)
    result = client.infer("tiny", [_input("x", x)], request_id="g1")
    np.testing.assert_allclose(result.as_numpy("probabilities"), oracle["tiny"].infer({"x": x}).probabilities,
                               rtol=1e-5, atol=1e-6)
    assert result.get_response().id == "g1"
    wanted = [grpcclient.InferRequestedOutput(n) for n in ("top_k_scores", "top_k_indices", "agreement")]
    result = client.infer("tiny", [_input("x", x)], outputs=wanted)
    expected = oracle["tiny"].infer({"x": x}).outputs(oracle["tiny"].spec, ["top_k_indices", "agreement"])
    np.testing.assert_array_equal(result.as_numpy("top_k_indices"), expected["top_k_indices"])
    np.testing.assert_array_equal(result.as_numpy("agreement"), expected["agreement"])
    img = rng.integers(0, 256, (3, 1, 4, 4), dtype=np.uint8)
    result = client.infer("pix", [_input("img", img)])
    np.testing.assert_allclose(result.as_numpy("probabilities"), oracle["pix"].infer({"img": img}).probabilities,
                               rtol=1e-5, atol=1e-6)
    a, b = rng.standard_normal((2, 6)).astype(np.float32), rng.standard_normal((2, 6))
    result = client.infer("twoin", [_input("a", a), _input("b", b)])
    np.testing.assert_allclose(result.as_numpy("probabilities"),
                               oracle["twoin"].infer({"a": a, "b": b}).probabilities, rtol=1e-5, atol=1e-6)


def test_stats_config_repository(client: grpcclient.InferenceServerClient) -> None:
    client.infer("tiny", [_input("x", np.ones((3, 6), np.float32))])
    stats = client.get_inference_statistics("tiny", as_json=True)["model_stats"][0]
    assert int(stats["inference_count"]) >= 3
    config = client.get_model_config("tiny", as_json=True)["config"]
    assert config["platform"] == "ensemble"
    assert len(config["ensemble_scheduling"]["step"]) == 2
    index = {m["name"]: m for m in client.get_model_repository_index(headers=AUTH, as_json=True)["models"]}
    assert index["tiny"]["state"] == "READY"
    with pytest.raises(InferenceServerException, match="Bearer"):
        client.get_model_repository_index()
    client.unload_model("twoin", headers=AUTH)
    assert not client.is_model_ready("twoin")
    client.load_model("twoin", headers=AUTH)
    assert client.is_model_ready("twoin")
    with pytest.raises(InferenceServerException, match="valid model name|outside"):
        client.load_model("../tiny", headers=AUTH)


@pytest.mark.parametrize(
    ("arr", "message"),
    [
        (np.zeros((1, 5), np.float32), "axis 1 is 5"),
        (np.zeros((1, 6), np.int32), "datatype INT32 given"),
        (np.zeros((20, 6), np.float32), "exceeds the limit 16"),
        (np.full((1, 6), np.inf, np.float32), "NaN or infinity"),
    ],
)
def test_error_paths(client: grpcclient.InferenceServerClient, arr: np.ndarray, message: str) -> None:
    with pytest.raises(InferenceServerException, match=message) as info:
        client.infer("tiny", [_input("x", arr)])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert client.is_server_ready()


def test_asyncio_client(server: RunningServer, oracle: dict[str, ReferenceExecutor]) -> None:
    rng = np.random.default_rng(12)
    batches = [rng.standard_normal((b, 6)).astype(np.float32) for b in (1, 3, 5, 2)]

    async def main() -> list[np.ndarray]:
        client = aiogrpcclient.InferenceServerClient(server.grpc_url)
        try:
            assert await client.is_model_ready("tiny")
            tensors = []
            for x in batches:
                t = aiogrpcclient.InferInput("x", list(x.shape), "FP32")
                t.set_data_from_numpy(x)
                tensors.append(t)
            results = await asyncio.gather(*(client.infer("tiny", [t]) for t in tensors))
            return [r.as_numpy("probabilities") for r in results]
        finally:
            await client.close()

    for x, got in zip(batches, asyncio.run(main()), strict=True):
        np.testing.assert_allclose(got, oracle["tiny"].infer({"x": x}).probabilities, rtol=1e-5, atol=1e-6)
