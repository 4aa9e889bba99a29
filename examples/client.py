"""Send real tritonclient requests (HTTP and gRPC) to a running enserve server.

Start a server first, e.g. `enserve serve examples/ --model digits --trust-code models.py`, then:

    python examples/client.py [--http localhost:8000] [--grpc localhost:8001]

It asks the `digits` ensemble about a few handwritten digits (examples/digits/samples.npy)
and prints the ensemble's top classes, the members' agreement and the true labels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

HERE = Path(__file__).resolve().parent
MODEL = "digits"
OUTPUTS = ["top_k_indices", "top_k_scores", "agreement"]


def sample_batch(count: int) -> tuple[np.ndarray, np.ndarray | None]:
    samples = HERE / "digits" / "samples.npy"
    labels = HERE / "digits" / "samples_labels.npy"
    if samples.is_file():
        batch = np.load(samples, allow_pickle=False)[:count].astype(np.float32)
        truth = np.load(labels, allow_pickle=False)[:count] if labels.is_file() else None
        return batch.reshape(-1, 1, 8, 8), truth
    rng = np.random.default_rng(0)
    return rng.random((count, 1, 8, 8), dtype=np.float32), None


def ask_http(url: str, batch: np.ndarray) -> dict[str, np.ndarray]:
    client = httpclient.InferenceServerClient(url)
    print(f"HTTP {url}: live={client.is_server_live()} ready={client.is_model_ready(MODEL)}")
    tensor = httpclient.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=True)
    wanted = [httpclient.InferRequestedOutput(name, binary_data=True) for name in OUTPUTS]
    result = client.infer(MODEL, [tensor], outputs=wanted)
    client.close()
    return {name: result.as_numpy(name) for name in OUTPUTS}


def ask_grpc(url: str, batch: np.ndarray) -> dict[str, np.ndarray]:
    client = grpcclient.InferenceServerClient(url)
    print(f"gRPC {url}: live={client.is_server_live()} ready={client.is_model_ready(MODEL)}")
    tensor = grpcclient.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    wanted = [grpcclient.InferRequestedOutput(name) for name in OUTPUTS]
    result = client.infer(MODEL, [tensor], outputs=wanted)
    client.close()
    return {name: result.as_numpy(name) for name in OUTPUTS}


def show(answers: dict[str, np.ndarray], truth: np.ndarray | None) -> None:
    for row, (classes, scores) in enumerate(zip(answers["top_k_indices"], answers["top_k_scores"],
                                                strict=True)):
        best = ", ".join(f"{c} ({s:.2f})" for c, s in zip(classes, scores, strict=True))
        label = f"  true {truth[row]}" if truth is not None else ""
        print(f"  sample {row}: top classes {best}; members agreeing {answers['agreement'][row]}{label}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", default="localhost:8000", help="HTTP host:port")
    parser.add_argument("--grpc", default="localhost:8001", help="gRPC host:port")
    parser.add_argument("--count", type=int, default=4, help="how many digits to send")
    args = parser.parse_args()
    batch, truth = sample_batch(args.count)
    http_answers = ask_http(args.http, batch)
    show(http_answers, truth)
    grpc_answers = ask_grpc(args.grpc, batch)
    show(grpc_answers, truth)
    same = all(np.allclose(http_answers[k], grpc_answers[k]) for k in OUTPUTS)
    print(f"HTTP and gRPC answers agree: {same}")


if __name__ == "__main__":
    main()
