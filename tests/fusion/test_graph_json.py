"""Folded graphs stored as JSON data (`fusion.graph_json`): the rebuilt graph computes what
the traced one does, anything outside the allow-lists is refused, and a refused graph in
the folded-weights file falls back to the member's code."""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import fx, nn

import enserve.fusion.folded as folded
from enserve.errors import ModelLoadError
from enserve.fusion import load_fused
from enserve.fusion.fold import folded_copy
from enserve.fusion.folded_key import folded_path
from enserve.fusion.graph_allow import FUNCTIONS
from enserve.fusion.graph_json import decode_graph, storable_graph
from enserve.reference import ReferenceExecutor
from enserve.spec import load_spec
from tests.helpers.tiny_models import mlp, small_cnn, write_torch_ensemble

SRC = Path(__file__).resolve().parents[2] / "src"


def _with_statistics(module: nn.Module, seed: int) -> nn.Module:
    """Seeded random weights, and BatchNorm statistics far from the defaults, so that
    folding changes every convolution."""
    torch.manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.normal_(0, 0.1)  # type: ignore[union-attr]
                m.running_var.uniform_(0.5, 1.5)  # type: ignore[union-attr]
                m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)
    return module.eval()


def _torchvision(name: str) -> nn.Module:
    import torchvision

    torch.manual_seed(7)
    return torchvision.models.get_model(name, weights=None, num_classes=10)


def _rebuilt(gm: fx.GraphModule) -> fx.GraphModule:
    data = storable_graph(gm)
    assert data is not None, "graph not storable"
    again = decode_graph(json.loads(json.dumps(data)), "test")  # through JSON text
    assert all(t.is_meta for t in again.state_dict().values())
    again.load_state_dict(gm.state_dict(), assign=True)
    return again.eval()


CASES = [
    ("small_cnn", small_cnn, (2, 1, 8, 8)),
    ("mlp", mlp, (2, 1, 6, 6)),
    ("resnet18", lambda: _torchvision("resnet18"), (2, 3, 40, 40)),
    ("mobilenet_v3_large", lambda: _torchvision("mobilenet_v3_large"), (2, 3, 40, 40)),
    ("efficientnet_b0", lambda: _torchvision("efficientnet_b0"), (2, 3, 40, 40)),
]


@pytest.mark.parametrize("name,build,shape", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("channels_last", [False, True])
def test_the_rebuilt_graph_equals_the_traced_one(name: str, build: Any, shape: tuple[int, ...],
                                                 channels_last: bool) -> None:
    gm, folds = folded_copy(_with_statistics(build(), seed=len(name)), consume=True)
    assert isinstance(gm, fx.GraphModule) and (folds > 0 or name == "mlp")  # BN after Linear
    if channels_last:
        gm = gm.to(memory_format=torch.channels_last)
    again = _rebuilt(gm)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    if channels_last and x.dim() == 4:
        x = x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(again(x), gm(x), rtol=1e-6, atol=1e-6)


def test_the_allow_list_names_its_functions_by_their_own_names() -> None:
    for name, fn in FUNCTIONS.items():
        assert name.rsplit(".", 1)[-1] == fn.__name__


def _stored_small_cnn() -> dict[str, Any]:
    gm, _ = folded_copy(_with_statistics(small_cnn(), 1), consume=True)
    data = storable_graph(gm)  # type: ignore[arg-type]
    assert data is not None
    return data


def _first(data: dict[str, Any], op: str) -> dict[str, Any]:
    return next(n for n in data["nodes"] if n["op"] == op)


def _replace_a_module_call(data: dict[str, Any]) -> None:
    node = _first(data, "call_module")
    node.update(op="call_function", target="os.system")


@pytest.mark.parametrize("tamper", [
    _replace_a_module_call,
    lambda d: _first(d, "call_module").update(op="call_method", target="__reduce__"),
    lambda d: d["modules"][_first(d, "call_module")["target"]].update(type="Module"),
    lambda d: d["modules"][_first(d, "call_module")["target"]]["args"].update(device="cpu"),
    lambda d: _first(d, "call_module").update(name="x; import os"),
    lambda d: _first(d, "call_module").update(target='0"); import os; ("'),
    lambda d: _first(d, "call_module").update(args={"tuple": [{"node": "later"}]}),
    lambda d: _first(d, "call_module").update(args={"tuple": [{"object": "os.system"}]}),
    lambda d: _first(d, "placeholder").update(type="os.system"),
    lambda d: d.update(format=0),
], ids=["function", "method", "module", "module-argument", "node-name", "attribute-path",
        "forward-reference", "value-tag", "annotation", "format"])
def test_anything_outside_the_allow_lists_is_refused(tamper: Any) -> None:
    data = _stored_small_cnn()
    decode_graph(json.loads(json.dumps(data)), "intact")  # accepted as written
    tamper(data)
    with pytest.raises(ModelLoadError, match="stored graph refused"):
        decode_graph(data, "tampered")


def test_getattr_is_allowed_only_for_shape_and_kin() -> None:
    data = _stored_small_cnn()
    node = _first(data, "call_module")
    node.update(op="call_function", target="getattr",
                args={"tuple": [{"node": "x"}, "__class__"]}, kwargs={"dict": []})
    with pytest.raises(ModelLoadError, match="getattr"):
        decode_graph(data, "tampered")


def _rewrite_graphs(path: Path, change: Any) -> None:
    """Edit the file's stored graphs in place (a new header; the data after it unchanged)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    graphs = json.loads(header["__metadata__"]["graphs"])
    change(graphs)
    header["__metadata__"]["graphs"] = json.dumps(graphs)
    head = json.dumps(header).encode()
    head += b" " * (-(8 + len(head)) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + raw[8 + n:])


def test_a_refused_graph_in_the_file_falls_back_to_the_code(tmp_path: Path, monkeypatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    spec = load_spec(write_torch_ensemble(tmp_path / "spec"))
    names = [m.name for m in spec.members]
    load_fused(spec, names, "fx", cache_dir=tmp_path)
    path = folded_path(spec, names, False, tmp_path)
    _rewrite_graphs(path, lambda graphs: _replace_a_module_call(graphs["cnn_b"]))

    built: list[str] = []
    real = folded.skeleton
    monkeypatch.setattr(folded, "skeleton", lambda s, m: (built.append(m.name), real(s, m))[1])
    with caplog.at_level(logging.WARNING, logger=folded.__name__):
        fused = load_fused(spec, names, "fx", cache_dir=tmp_path)
    assert built == ["cnn_b"]  # the others came from their stored graphs
    assert "cnn_b" in caplog.text and "os.system" in caplog.text
    x = np.random.default_rng(3).standard_normal((4, 1, 8, 8)).astype(np.float32)
    ref = ReferenceExecutor(spec).infer(x)
    np.testing.assert_allclose(fused.infer(x).probabilities, ref.probabilities, atol=2e-6, rtol=0)


def test_no_pickle_loading_left_in_src() -> None:
    hits = [str(p) for p in SRC.rglob("*.py") if "weights_only=False" in p.read_text()]
    assert hits == []


def test_stored_modules_are_built_on_meta_whatever_their_size() -> None:
    data = _stored_small_cnn()
    conv = data["modules"][_first(data, "call_module")["target"]]
    conv["args"].update(in_channels=1 << 20, out_channels=1 << 20)  # tebibytes of float32
    conv["dtype"] = None
    again = decode_graph(data, "huge")  # nothing allocated: the file's tensors won't fit it
    assert all(t.is_meta for t in again.state_dict().values())
