"""Workers carry only what their member runs: an ONNX Runtime worker never imports torch."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from enserve.reference import ReferenceExecutor
from enserve.runtime import Engine, launch
from enserve.spec import spec_from_dict
from tests.helpers.onnx_models import imports_torch, write_linear_onnx
from tests.helpers.runtime import MODELS


def _mixed_spec(folder: Path, with_torch: bool):
    (folder / "models.py").write_text(MODELS)
    write_linear_onnx(folder / "flat.onnx", 12, 5, seed=1)
    write_linear_onnx(folder / "resized.onnx", 48, 5, seed=2)
    members = [
        {"name": "flat", "source": "onnx:flat.onnx"},
        # numpy bilinear resize in the worker: preprocessing must not pull torch in either
        {"name": "resized", "source": "onnx:resized.onnx", "preprocess": {"resize": [4, 4]}},
    ]
    if with_torch:
        members.append({"name": "eager", "source": "python:models.py:net_a"})
    data = {"name": "mixed", "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3, 2, 2]}],
            "members": members, "combiner": "mean_prob"}
    return spec_from_dict(data, base_dir=folder, where=str(folder / "ensemble.yaml"))


def test_onnx_workers_never_import_torch(tmp_path: Path):
    spec = _mixed_spec(tmp_path, with_torch=True)
    x = np.random.default_rng(3).standard_normal((5, 3, 2, 2)).astype(np.float32)
    expected = ReferenceExecutor(spec).infer(x)
    with Engine(spec, max_batch=8) as engine:
        result = engine.infer_sync(x, timeout=60)
        pids = engine.worker_pids()
        servers = launch.server_pids()
        torch_in = {label.split("#")[0]: imports_torch(pid) for label, pid in pids.items()}
        lean_server_torch = imports_torch(servers["lean"])
    np.testing.assert_allclose(result.probabilities, expected.probabilities, rtol=1e-5, atol=1e-6)
    assert torch_in == {"flat": False, "resized": False, "eager": True}
    assert not lean_server_torch
    assert os.getpid() not in pids.values()


def test_onnx_only_ensemble_starts_no_torch_server(tmp_path: Path):
    spec = _mixed_spec(tmp_path, with_torch=False)
    launch.stop_server("torch")
    x = np.random.default_rng(4).standard_normal((3, 3, 2, 2)).astype(np.float32)
    with Engine(spec, max_batch=4) as engine:
        engine.infer_sync(x, timeout=60)
        assert not any(imports_torch(pid) for pid in engine.worker_pids().values())
        assert "torch" not in launch.server_pids()


def test_fused_group_with_its_folded_file_forks_without_torchvision(tmp_path: Path):
    """The first start writes the group's folded-weights file (torch server); the next
    forks from the fused server: torch, but neither torchvision nor ONNX Runtime."""
    (tmp_path / "models.py").write_text(MODELS)
    members = [{"name": n, "source": f"python:models.py:{n}"} for n in ("net_a", "net_b")]
    spec = spec_from_dict({"name": "pair", "inputs": [{"name": "x", "datatype": "FP32",
                                                       "shape": [-1, 3, 2, 2]}],
                           "members": members, "combiner": "mean_prob"},
                          base_dir=tmp_path, where=str(tmp_path / "ensemble.yaml"))
    from enserve.formats.plan import Plan

    plan = Plan.of([{"member": "fx:net_a+net_b", "variant": "fused-fx", "batch_size": 4}])
    cache = tmp_path / "cache"
    x = np.random.default_rng(5).standard_normal((3, 3, 2, 2)).astype(np.float32)
    expected = ReferenceExecutor(spec).infer(x)
    assert launch.flavor(spec, "fx:net_a+net_b", "fused-fx", "cpu", cache) == "torch"
    with Engine(spec, plan, max_batch=4, cache_dir=cache) as engine:
        engine.infer_sync(x, timeout=60)
    assert launch.flavor(spec, "fx:net_a+net_b", "fused-fx", "cpu", cache) == "fused"
    with Engine(spec, plan, max_batch=4, cache_dir=cache) as engine:
        result = engine.infer_sync(x, timeout=60)
        (pid,) = engine.worker_pids().values()
        libraries = [ln.split()[-1] for ln in Path(f"/proc/{pid}/maps").read_text().splitlines()
                     if ".so" in ln]
        assert launch.server_pids().get("fused")
    np.testing.assert_allclose(result.probabilities, expected.probabilities, rtol=1e-5, atol=1e-6)
    assert any("libtorch" in n for n in libraries)
    assert not any("torchvision" in n or "onnxruntime" in n for n in libraries)


def test_every_fork_server_computes_the_library_versions_its_workers_need():
    import importlib

    from enserve.members import onnx_shared
    from enserve.runtime import preload_warm
    from enserve.variants import fingerprint

    for flavor, modules in launch.PRELOAD.items():
        assert modules[-1] == "enserve.runtime.preload_warm", flavor
    fingerprint.library_versions.cache_clear()
    onnx_shared._ort_version.cache_clear()
    importlib.reload(preload_warm)  # what the fork server's import does
    assert fingerprint.library_versions.cache_info().currsize == 1
    assert onnx_shared._ort_version.cache_info().currsize == 1


def test_a_script_without_a_main_guard_runs_once(tmp_path: Path):
    """Workers never re-import the caller's main script (multiprocessing's forkserver
    would, running its top level again in every worker)."""
    import subprocess
    import sys

    spec = _mixed_spec(tmp_path, with_torch=False)
    script = tmp_path / "app.py"
    script.write_text(
        "from pathlib import Path\n"
        "import numpy as np\n"
        "from enserve.runtime import Engine\n"
        "from enserve.spec import load_spec\n"
        "here = Path(__file__).parent\n"
        "with open(here / 'runs.txt', 'a') as f:\n"
        "    f.write('run\\n')\n"
        f"spec = load_spec({str(spec.source_file)!r})\n"
        "x = np.random.default_rng(5).standard_normal((2, 3, 2, 2)).astype(np.float32)\n"
        "with Engine(spec, max_batch=4) as engine:\n"
        "    print('answer', engine.infer_sync(x, timeout=60).probabilities.shape)\n")
    (tmp_path / "ensemble.yaml").write_text(
        "name: mixed\ninputs: [{name: x, datatype: FP32, shape: [-1, 3, 2, 2]}]\n"
        "members:\n  - {name: flat, source: 'onnx:flat.onnx'}\n"
        "  - {name: resized, source: 'onnx:resized.onnx', preprocess: {resize: [4, 4]}}\n"
        "combiner: mean_prob\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "answer (2, 5)" in done.stdout
    assert (tmp_path / "runs.txt").read_text() == "run\n"
