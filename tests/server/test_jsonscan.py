"""The scanning JSON decoder against `json.loads` (the oracle) on random documents, and
the big-body decode of `/infer`: typed arrays, the budget told first, JSON errors kept."""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
import pytest

from enserve.server import jsonscan
from enserve.server.codec import decode_infer_request
from enserve.server.errors import Code, ServerError
from enserve.server.limits import Limits


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(7 if depth < 4 else 4)
    if kind == 0:
        return rng.choice([rng.randint(-10**12, 10**12), rng.random() * 1e6 - 5e5, 0, -0.0, 1e-300])
    if kind == 1:
        chars = '[]0123456789,." \\\u00e9\x01ab'
        return "".join(rng.choice(chars) for _ in range(rng.randrange(3000 if rng.random() < 0.2 else 8)))
    if kind == 2:
        return rng.choice([True, False, None])
    if kind == 3:  # a flat numeric array, often a long one
        n = rng.choice([0, 1, 5, 300, 2000, 40000])
        ints = rng.random() < 0.5
        return [rng.randint(-999, 999) if ints else rng.uniform(-1e3, 1e3) for _ in range(n)]
    if kind in (4, 5):
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {f"k{i}": _random_value(rng, depth + 1) for i in range(rng.randrange(4))}


def _encode(value: Any, rng: random.Random) -> bytes:
    sep = rng.choice([(",", ":"), (", ", ": "), (" ,\n", " :\t")])
    return json.dumps(value, separators=sep).encode()


@pytest.mark.parametrize("seed", range(40))
def test_same_values_as_json_loads(seed: int) -> None:
    rng = random.Random(seed)
    value = {"a": _random_value(rng), "b": [_random_value(rng) for _ in range(3)]}
    text = _encode(value, rng)
    budget = [len(text)]
    assert jsonscan.materialize(jsonscan.loads(text), budget) == json.loads(text)


def test_big_arrays_become_spans_and_strings_stay_strings() -> None:
    numbers = ",".join(["1.5"] * 1000)
    text = json.dumps({"s": f"[{numbers}]", "d": [1.5] * 1000, "n": [[2] * 600, [3] * 600]}).encode()
    value = jsonscan.loads(text)
    assert value["s"] == f"[{numbers}]"
    assert isinstance(value["d"], jsonscan.Numbers)
    assert all(isinstance(row, jsonscan.Numbers) for row in value["n"])


@pytest.mark.parametrize("text", [
    b'{"a": [' + b"1," * 2000 + b"1}",          # unterminated array
    b'{[' + b"1," * 2000 + b'1]: 2}',            # an array as a key
    b'{"a": [' + b"01," * 2000 + b"1]}",         # leading zeros
    b'{"a": [' + b"1,," * 2000 + b"1]}",         # empty elements
    b'{"a": "' + b"\\" * 3001 + b'"}',           # odd backslashes: unterminated string
    b'{"a": [' + b"+1," * 2000 + b"1]}",
])
def test_invalid_json_stays_invalid(text: bytes) -> None:
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ServerError) as info:
        jsonscan.materialize(jsonscan.loads(text), [len(text)])
    assert info.value.code is Code.BAD_REQUEST


def _infer_body(data: Any, shape: list[int], datatype: str = "FP32", **extra: Any) -> bytes:
    return json.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "data": data}],
                       **extra}).encode()


@pytest.mark.parametrize("datatype", ["FP32", "FP64", "INT64", "UINT8"])
def test_big_tensor_data_decodes_typed_and_tells_the_budget(datatype: str) -> None:
    rng = np.random.default_rng(3)
    dtype = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "UINT8": np.uint8}[datatype]
    x = (rng.random((30, 700)) * 200).astype(dtype)  # rows over RUN_BYTES
    asked: list[int] = []
    for data in (x.reshape(-1).tolist(), x.tolist()):  # flat and nested
        body = _infer_body(data, list(x.shape), datatype)
        request = decode_infer_request("m", "", body, None, Limits(), asked.append)
        np.testing.assert_array_equal(request.inputs["x"], x)
        assert request.inputs["x"].dtype == dtype
    assert asked == [x.nbytes, x.nbytes]


def test_big_tensor_errors_are_400() -> None:
    limits = Limits()
    with pytest.raises(ServerError, match="fractional"):
        decode_infer_request("m", "", _infer_body([0.5] * 5000, [5000], "INT32"), None, limits)
    with pytest.raises(ServerError, match="rectangular"):
        decode_infer_request("m", "", _infer_body([[1] * 3000, [1] * 2999], [5999]), None, limits)
    with pytest.raises(ServerError, match="values given"):
        decode_infer_request("m", "", _infer_body([1] * 3000, [2999]), None, limits)


def test_big_numbers_outside_data_are_bounded() -> None:
    pad = [0.5] * (jsonscan.OTHER_NUMBERS_LIMIT // 3)
    small = decode_infer_request("m", "", _infer_body([1.0], [1], parameters={"pad": pad[:2000]}),
                                 None, Limits())
    assert small.parameters["pad"] == pad[:2000]
    with pytest.raises(ServerError) as info:
        decode_infer_request("m", "", _infer_body([1.0], [1], parameters={"pad": pad}), None, Limits())
    assert info.value.code is Code.TOO_LARGE


def test_budget_refusal_stops_the_decode() -> None:
    def refuse(nbytes: int) -> None:
        raise ServerError("no room", Code.UNAVAILABLE)

    with pytest.raises(ServerError) as info:
        decode_infer_request("m", "", _infer_body([0.5] * 5000, [5000]), None, Limits(), refuse)
    assert info.value.code is Code.UNAVAILABLE
