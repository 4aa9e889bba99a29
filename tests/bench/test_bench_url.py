"""`enserve bench --url`: the same harness loads a running server next to the engine."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from enserve.cli import main
from tests.helpers.server import RunningServer


def test_bench_drives_a_served_model_over_http_and_grpc(
    repo: Path, server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([
        "bench", str(repo / "tiny"), "--url", f"http://127.0.0.1:{server.http}",
        "--url", f"grpc://127.0.0.1:{server.grpc}", "--duration", "1", "--warmup", "0.2",
        "--concurrency", "2", "--fusion", "off", "--json",
    ])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    for name in ("served-http", "served-grpc"):
        served = report["baselines"][name]
        assert served["completed"] > 0 and served["failed"] == 0, served
        assert served["p50_s"] > 0
        assert report["ratios"][name] > 0


@pytest.mark.parametrize(("url", "message"), [
    ("ftp://127.0.0.1:1", "scheme must be http:// or grpc://"),
    ("http://127.0.0.1", "expected SCHEME://HOST:PORT"),
    ("http://127.0.0.1:9/v2", "without a path"),
])
def test_bad_urls_are_named(repo: Path, url: str, message: str,
                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", str(repo / "tiny"), "--url", url, "--duration", "1"]) == 2
    assert message in capsys.readouterr().err


def test_unknown_model_on_the_server_is_a_clear_error(
    repo: Path, server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = (repo / "tiny" / "ensemble.yaml").read_text().replace("name: tiny", "name: absent", 1)
    folder = tmp_path / "absent"
    folder.mkdir()
    for item in (repo / "tiny").iterdir():
        if item.is_file() and item.name != "ensemble.yaml":
            shutil.copy(item, folder / item.name)
    (folder / "ensemble.yaml").write_text(spec)
    code = main(["bench", str(folder), "--url", f"http://127.0.0.1:{server.http}",
                 "--duration", "1", "--fusion", "off"])
    assert code == 2
    assert "model 'absent' is not ready" in capsys.readouterr().err
