"""Process-level behaviour: SIGTERM drains admitted requests; a worker killed under load
(engine backend) leaves every request answered or clearly refused, and the server recovers."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from enserve.reference import ReferenceExecutor
from tests.helpers.server import start_server


def _infer(url: str, batch: int) -> np.ndarray:
    client = httpclient.InferenceServerClient(url, network_timeout=60)
    try:
        tensor = httpclient.InferInput("x", [batch, 6], "FP32")
        tensor.set_data_from_numpy(np.random.default_rng(batch).standard_normal((batch, 6)).astype(np.float32))
        return client.infer("slow", [tensor]).as_numpy("probabilities")
    finally:
        client.close()


def test_sigterm_drains_admitted_requests(repo: Path, tmp_path: Path) -> None:
    server = start_server(repo, tmp_path, models=["slow"])
    try:
        results: dict[int, object] = {}

        def worker(i: int) -> None:
            try:
                results[i] = _infer(server.http_url, i + 1)
            except Exception as exc:  # recorded, asserted below
                results[i] = exc

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # wait until all four are admitted (0.3 s each, serial)
            stats = httpclient.InferenceServerClient(server.http_url).get_inference_statistics("slow")
            if stats["model_stats"][0]["execution_count"] >= 1:
                break
            time.sleep(0.05)
        server.process.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        assert server.process.wait(30) == 0
        for i in range(4):
            assert isinstance(results[i], np.ndarray), results[i]
            assert results[i].shape == (i + 1, 5)
    finally:
        server.stop()


def test_worker_killed_under_load(repo: Path, tmp_path: Path, oracle: dict[str, ReferenceExecutor]) -> None:
    import psutil

    server = start_server(repo, tmp_path, "--backend", "engine", models=["tiny"])
    try:
        x = np.random.default_rng(31).standard_normal((3, 6)).astype(np.float32)
        first = httpclient.InferInput("x", [3, 6], "FP32")
        first.set_data_from_numpy(x)
        answer = httpclient.InferenceServerClient(server.http_url).infer("tiny", [first])
        np.testing.assert_allclose(answer.as_numpy("probabilities"), oracle["tiny"].infer({"x": x}).probabilities,
                                   rtol=1e-5, atol=1e-6)
        outcomes: list[object] = []
        stop = threading.Event()

        def load() -> None:
            client = httpclient.InferenceServerClient(server.http_url, network_timeout=30)
            x = np.ones((2, 6), np.float32)
            tensor = httpclient.InferInput("x", [2, 6], "FP32")
            tensor.set_data_from_numpy(x)
            until = time.monotonic() + 20
            while not stop.is_set() and time.monotonic() < until:
                try:
                    outcomes.append(client.infer("tiny", [tensor]).as_numpy("probabilities"))
                except InferenceServerException as exc:
                    outcomes.append(exc)
            client.close()

        threads = [threading.Thread(target=load) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        children = psutil.Process(server.process.pid).children(recursive=True)
        assert children, "the engine backend should run worker processes"
        os.kill(children[0].pid, signal.SIGKILL)
        time.sleep(2.0)
        stop.set()
        for t in threads:
            t.join(30)
        assert outcomes
        for outcome in outcomes:
            assert isinstance(outcome, np.ndarray) or str(outcome).strip(), outcome
        assert server.ready()
        tensor = httpclient.InferInput("x", [1, 6], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 6), np.float32))
        deadline = time.monotonic() + 20
        while True:  # recovered: answers again
            try:
                httpclient.InferenceServerClient(server.http_url).infer("tiny", [tensor])
                break
            except InferenceServerException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        assert server.stop() == 0
