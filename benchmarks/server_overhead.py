"""Per-request cost of serving over HTTP and gRPC versus calling the backend in-process.

    .venv/bin/python benchmarks/server_overhead.py [--requests 300]

Writes a temp repository with two ensembles: `tiny` (two small linear members on FP32
[-1, 6]) and `big` (two cheap members on a 1x3x224x224 FP32 image), starts a real server
process on free ports, and measures sequential requests from the real tritonclient:
- in-process: `await ReferenceBackend.infer(...)` in this process (what the server calls);
- HTTP binary, HTTP JSON, gRPC: the same request through the server;
- raw: the request's bytes sent through a plain loopback TCP socket to a reader that
  answers 8 bytes (moving the bytes with no protocol at all).
Overhead = served p50 - in-process p50; the payload part of a big request is its overhead
minus the tiny request's. All numbers come from one run, side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from enserve.bench.local_server import start_server
from enserve.result import validate_inputs
from enserve.server.backend import ReferenceBackend
from enserve.spec import load_spec

# the specs measured here name their own models.py factories: trust that code
os.environ.setdefault("ENSERVE_TRUSTED_CODE", "models.py")

MODELS = '''
import torch
from torch import nn

def _seeded(seed, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()

def linear():
    return _seeded(1, lambda: nn.Linear(6, 5))

def mlp():
    return _seeded(2, lambda: nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5)))

def pool():
    return _seeded(3, lambda: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 10)))

def pool2():
    return _seeded(4, lambda: nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(3, 10)))
'''
SPECS = {
    "tiny": """name: tiny
inputs: [{name: x, datatype: FP32, shape: [-1, 6]}]
members:
  - {name: lin, source: "python:models.py:linear"}
  - {name: mlp, source: "python:models.py:mlp"}
""",
    "big": """name: big
inputs: [{name: image, datatype: FP32, shape: [-1, 3, 224, 224]}]
members:
  - {name: avg, source: "python:models.py:pool"}
  - {name: max, source: "python:models.py:pool2"}
""",
}


def p50_ms(fn: Callable[[], object], n: int) -> float:
    for _ in range(min(20, n)):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def in_process_ms(repo: Path, name: str, x: np.ndarray, n: int) -> float:
    backend = ReferenceBackend(load_spec(repo / name), threads=1)
    inputs = validate_inputs(backend.spec, {backend.spec.inputs[0].name: x})
    loop = asyncio.new_event_loop()
    try:
        return p50_ms(lambda: loop.run_until_complete(
            backend.infer(inputs, ["probabilities"], None)), n)
    finally:
        loop.run_until_complete(backend.close())
        loop.close()


def raw_socket_ms(payload: bytes, n: int) -> float:
    """Round trip of `payload` through loopback TCP: send it all, read an 8-byte answer."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    size = len(payload)

    def reader() -> None:
        conn, _ = server.accept()
        with conn:
            buf = bytearray(size)
            view = memoryview(buf)
            while True:
                got = 0
                while got < size:
                    k = conn.recv_into(view[got:])
                    if k == 0:
                        return
                    got += k
                conn.sendall(b"8 bytes!")

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    client = socket.create_connection(server.getsockname())
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def once() -> None:
        client.sendall(payload)
        client.recv(8)

    try:
        return p50_ms(once, n)
    finally:
        client.close()
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="timed requests per case")
    args = parser.parse_args()
    n = args.requests
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        for name, text in SPECS.items():
            (repo / name).mkdir(parents=True)
            (repo / name / "ensemble.yaml").write_text(text)
            (repo / name / "models.py").write_text(MODELS)
        server = start_server(repo, Path(tmp))
        try:
            http = httpclient.InferenceServerClient(server.http_url)
            grpc = grpcclient.InferenceServerClient(server.grpc_url)
            rng = np.random.default_rng(0)
            rows = []
            for name, x in (("tiny", rng.standard_normal((1, 6)).astype(np.float32)),
                            ("big", rng.standard_normal((1, 3, 224, 224)).astype(np.float32))):
                input_name = "x" if name == "tiny" else "image"
                binary = httpclient.InferInput(input_name, list(x.shape), "FP32")
                binary.set_data_from_numpy(x, binary_data=True)
                as_json = httpclient.InferInput(input_name, list(x.shape), "FP32")
                as_json.set_data_from_numpy(x, binary_data=False)
                out_bin = [httpclient.InferRequestedOutput("probabilities", binary_data=True)]
                out_json = [httpclient.InferRequestedOutput("probabilities", binary_data=False)]
                g_in = grpcclient.InferInput(input_name, list(x.shape), "FP32")
                g_in.set_data_from_numpy(x)
                json_n = n if name == "tiny" else max(10, n // 10)
                local = in_process_ms(repo, name, x, n)
                results = {
                    "in-process": local,
                    "HTTP binary": p50_ms(
                        lambda b=binary, o=out_bin, m=name: http.infer(m, [b], outputs=o), n
                    ),
                    "gRPC": p50_ms(lambda g=g_in, m=name: grpc.infer(m, [g]), n),
                    "HTTP JSON": p50_ms(lambda j=as_json, o=out_json, m=name: http.infer(m, [j], outputs=o),
                                        json_n),
                    "raw TCP": raw_socket_ms(x.tobytes(), n),
                }
                rows.append((name, x, results))
            http.close()
            grpc.close()
        finally:
            server.stop()
    for name, x, results in rows:
        local = results["in-process"]
        print(f"\n{name}: input {list(x.shape)} FP32 ({x.nbytes} bytes), p50 of {n} sequential requests")
        print(f"  {'path':<12} {'p50 ms':>8} {'overhead ms':>12}")
        for path, ms in results.items():
            over = f"{ms - local:12.3f}" if path not in ("in-process", "raw TCP") else f"{'':12}"
            print(f"  {path:<12} {ms:8.3f} {over}")
    (_, _, tiny), (_, _, big) = rows

    def over(r: dict[str, float], path: str) -> float:
        return r[path] - r["in-process"]

    raw_payload = big["raw TCP"] - tiny["raw TCP"]
    print("\nsummary")
    print(f"  per-request overhead, tiny, HTTP binary: {over(tiny, 'HTTP binary'):.3f} ms (target <= 1 ms)")
    print(f"  per-request overhead, tiny, gRPC:        {over(tiny, 'gRPC'):.3f} ms (target <= 1 ms)")
    for path in ("HTTP binary", "gRPC"):
        payload = over(big, path) - over(tiny, path)
        print(f"  1x3x224x224 {path:<11}: overhead {over(big, path):.3f} ms = "
              f"{over(big, path) / big['raw TCP']:.1f}x the raw TCP round trip ({big['raw TCP']:.3f} ms); "
              f"payload part {payload:.3f} ms = {payload / raw_payload:.1f}x raw payload part "
              f"({raw_payload:.3f} ms)")
    print(f"  1x3x224x224 HTTP JSON is {big['HTTP JSON'] / big['HTTP binary']:.0f}x the binary request "
          f"({big['HTTP JSON']:.1f} ms vs {big['HTTP binary']:.3f} ms)")

if __name__ == "__main__":
    main()
