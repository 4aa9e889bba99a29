"""Packed weights, meta-device construction, and unloading really returning memory."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from enserve.errors import ModelLoadError
from enserve.fusion import load_fused
from enserve.members.packed import PackedFile, load_packed, pack_ensemble, read_seconds
from enserve.members.warm import WarmWorker, load_runner
from enserve.reference import ReferenceExecutor
from enserve.spec import load_spec
from tests.helpers.tiny_models import write_torch_ensemble


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    spec_path = write_torch_ensemble(tmp_path_factory.mktemp("tiny"))
    out = pack_ensemble(load_spec(spec_path), spec_path.parent / "packed.safetensors")
    return spec_path, out


def test_packed_load_equals_reference(packed: tuple[Path, Path]) -> None:
    spec_path, path = packed
    spec = load_spec(spec_path)
    modules = load_packed(spec, path)
    assert sorted(modules) == ["cnn_a", "cnn_b", "cnn_c", "mlp"]
    assert not any(p.is_meta for m in modules.values() for p in m.parameters())
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    ref = ReferenceExecutor(spec).infer(x)
    fused = load_fused(spec, list(modules), "fx", modules=modules)
    np.testing.assert_allclose(fused.infer(x).probabilities, ref.probabilities, atol=2e-6)
    np.testing.assert_allclose(load_runner(str(spec_path), str(path), fused=False)(x), ref.probabilities,
                               atol=2e-6)
    assert read_seconds(path) >= 0


def _rewrite_header(src: Path, dst: Path, edit: object) -> None:
    raw = src.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)  # type: ignore[operator]
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    dst.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])


def test_untrusted_headers_are_refused(packed: tuple[Path, Path], tmp_path: Path) -> None:
    _, path = packed
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(ModelLoadError, match="header length"):
        PackedFile(bad)
    key = next(k for k in PackedFile(path).entries if k.endswith("weight"))

    def stretch(h: dict) -> None:  # type: ignore[type-arg]
        h[key]["data_offsets"][1] += 10**9

    _rewrite_header(path, bad, stretch)
    with pytest.raises(ModelLoadError, match="outside the file"):
        PackedFile(bad)


def test_warm_worker_loads_and_answers(packed: tuple[Path, Path]) -> None:
    spec_path, path = packed
    worker = WarmWorker(threads=1)
    try:
        worker.wait_ready()
        assert worker.load(spec_path, path) > 0
        x = np.random.default_rng(1).standard_normal((2, 1, 8, 8)).astype(np.float32)
        expected = ReferenceExecutor(load_spec(spec_path)).infer(x).probabilities
        np.testing.assert_allclose(worker.infer(x), expected, atol=2e-6)
        worker.unload()
        with pytest.raises(ModelLoadError, match="warm worker"):
            worker.infer(x)
    finally:
        worker.stop()
    assert not worker.process.is_alive()


RSS_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    import numpy as np, psutil, torch
    from safetensors.torch import save_file
    from enserve.members.packed import load_packed
    from enserve.fusion import load_fused
    from enserve.spec import spec_from_dict
    from enserve.server.residency import Loaded, ResidencyManager
    from pathlib import Path

    folder = Path(sys.argv[1])
    (folder / "big.py").write_text(
        "from torch import nn\\n"
        "def big():\\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 800_000))\\n")
    save_file({"big/1.weight": torch.randn(800_000, 64), "big/1.bias": torch.randn(800_000)},
              str(folder / "packed.safetensors"), metadata={"enserve": '{"members": ["big"]}'})
    spec = spec_from_dict({"name": "big", "inputs": [{"name": "x", "shape": [-1, 1, 8, 8]}],
        "members": [{"name": "big", "source": "python:big.py:big"}]}, base_dir=folder)

    def loader(name):
        fused = load_fused(spec, ["big"], "fx", modules=load_packed(spec, folder / "packed.safetensors"))
        fused.infer(np.ones((1, 1, 8, 8), np.float32))  # touch every weight page
        return Loaded(fused, {"cpu": fused.param_bytes()})

    rss = lambda: psutil.Process().memory_info().rss
    async def main():
        m = ResidencyManager(10**9, loader)
        await m.load("warmup"); await m.unload("warmup")  # first-use allocations settle
        before = rss()
        await m.load("big")
        loaded = rss()
        await m.unload("big")
        after = rss()
        print(json.dumps({"before": before, "loaded": loaded, "after": after}))
    asyncio.run(main())
    """
)


def test_unload_returns_memory(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(done.stdout.strip().splitlines()[-1])
    weights = 800_000 * 65 * 4  # ~208 MB
    assert r["loaded"] - r["before"] > 0.7 * weights
    assert r["after"] - r["before"] < 0.15 * weights, r
