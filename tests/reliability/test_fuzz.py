"""Fuzzing: the HTTP API from its own OpenAPI document (schemathesis) and gRPC with mutated
messages. Nothing may answer 500 / INTERNAL and the server must stay healthy. CI runs a
bounded number of examples; `benchmarks/chaos.py fuzz` runs ten thousand and more."""

from __future__ import annotations

import os
import random

import grpc
import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from tritonclient.grpc import service_pb2 as pb

from tests.helpers.server import TOKEN, RunningServer

EXAMPLES = int(os.environ.get("ENSERVE_FUZZ_EXAMPLES", "15"))


def test_http_api_never_answers_500(fault_server: RunningServer) -> None:
    """Every operation of `/openapi.json`, with schema-generated (and schema-violating)
    parameters and bodies."""
    schema = schemathesis.openapi.from_url(f"http://{fault_server.http_url}/openapi.json")
    statuses: dict[int, int] = {}
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        def check(case: schemathesis.Case) -> None:
            response = case.call(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500 or response.status_code in (503, 504), (
                case.method, case.formatted_path, case.body, response.status_code, response.text)

        check()
    assert operations >= 10 and sum(statuses.values()) >= operations, statuses
    assert httpx.get(f"http://{fault_server.http_url}/v2/health/live").status_code == 200


def _valid_request() -> bytes:
    request = pb.ModelInferRequest(model_name="tiny", id="fuzz")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[2, 6])
    tensor.contents.fp32_contents.extend([0.25] * 12)
    request.outputs.add(name="probabilities")
    request.parameters["timeout"].int64_param = 5_000_000
    return request.SerializeToString()


def mutate(data: bytes, rng: random.Random) -> bytes:
    """Flip, drop, duplicate or insert a few bytes."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        at = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(at, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            del buf[min(at, len(buf) - 1)]
        elif op == 2:
            buf[at:at] = buf[at:at + rng.randint(1, 8)]
        else:
            buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
    return bytes(buf)


def test_grpc_mutated_messages(fault_server: RunningServer) -> None:
    rng = random.Random(10)
    seed = _valid_request()
    channel = grpc.insecure_channel(fault_server.grpc_url)
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                               request_serializer=None, response_deserializer=None)
    codes: dict[str, int] = {}
    try:
        for _ in range(EXAMPLES * 20):
            try:
                call(mutate(seed, rng), timeout=30)
                code = "OK"
            except grpc.RpcError as exc:
                code = exc.code().name
                assert exc.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), exc.details()
            codes[code] = codes.get(code, 0) + 1
    finally:
        channel.close()
    assert codes.get("OK", 0) + codes.get("INVALID_ARGUMENT", 0) > 0, codes
    assert httpx.get(f"http://{fault_server.http_url}/v2/health/live").status_code == 200
