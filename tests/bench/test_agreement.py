"""Live top-1 agreement in `enserve bench`: the arithmetic on fakes, and the report of a
real bench whose plan runs one member in bf16 beside the fp32 baseline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from enserve.bench.agreement import live_agreement
from enserve.cli import main
from enserve.precision.calibration import held_out, load_calibration
from enserve.reference import ReferenceExecutor
from enserve.spec import load_spec
from enserve.variants.load import load_variant


def _one_hot(classes: np.ndarray) -> np.ndarray:
    return np.eye(4, dtype=np.float32)[classes]


def test_agreement_and_accuracy_from_top1() -> None:
    x = {"x": np.arange(10, dtype=np.float32)[:, None]}
    want = np.array([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    got = want.copy()
    got[[2, 7]] = 0  # two rows disagree
    labels = want.copy()
    labels[0] = 3  # the reference is wrong on one row, the tested plan on that one too
    calls: list[int] = []

    def tested(inputs: dict[str, np.ndarray]) -> np.ndarray:
        rows = inputs["x"][:, 0].astype(int)
        calls.append(len(rows))
        return _one_hot(got[rows])

    result = live_agreement(tested, lambda i: _one_hot(want[i["x"][:, 0].astype(int)]),
                            x, labels, max_rows=3)
    assert calls == [3, 3, 3, 1]
    assert result.rows == 10 and result.top1_agreement == 0.8
    assert result.reference_accuracy == 0.9 and result.accuracy == 0.7
    assert "drop 20.00 pp" in result.describe()


MODELS = '''
import torch
from torch import nn

def net_a():
    # no opinion: uniform probabilities, so b's top-1 is the ensemble's
    layer = nn.Linear(6, 5)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer

def net_b():
    # five nearly equal rows: bf16's rounding flips the top-1 of many inputs
    torch.manual_seed(2)
    layer = nn.Linear(6, 5)
    with torch.no_grad():
        base = torch.randn(1, 6)
        layer.weight.copy_(base + 1e-3 * torch.randn(5, 6))
        layer.bias.zero_()
    return layer
'''


def _profile(path: Path) -> Path:
    """b is twice as fast in bf16, admitted at 0.995 agreement: the plan runs b in bf16."""
    entries = []
    for member, variant, latency in (("a", "eager", 0.002), ("b", "eager", 0.004),
                                     ("b", "bf16", 0.002)):
        for batch in (1, 8):
            entries.append({"member": member, "variant": variant, "device": "cpu",
                            "batch_size": batch, "share": 1, "latency_s": latency * batch,
                            "memory_bytes": 1 << 20})
    path.write_text(json.dumps({
        "devices": [{"id": "cpu", "kind": "cpu", "memory_bytes": 8 << 30, "compute_units": 2}],
        "members": [{"name": "a"}, {"name": "b"}],
        "entries": entries,
        "accuracy": {"rows": 64, "labels": False, "fp32_accuracy": None,
                     "tolerance": {"min_top1_agreement": 0.99, "max_accuracy_drop": None},
                     "assignments": [
                         {"precisions": {}, "top1_agreement": 1.0, "admitted": True},
                         {"precisions": {"b": "bf16"}, "top1_agreement": 0.995,
                          "admitted": True}]},
    }))
    return path


def test_bench_reports_live_agreement_with_the_fp32_plan(tmp_path: Path, capsys) -> None:
    (tmp_path / "models.py").write_text(MODELS)
    (tmp_path / "ensemble.yaml").write_text(yaml.safe_dump({
        "name": "tiny",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 6]}],
        "members": [{"name": "a", "source": "python:models.py:net_a"},
                    {"name": "b", "source": "python:models.py:net_b"}],
        "accuracy": {"synthetic": 64},
    }))
    out = tmp_path / "report.json"
    # no --trust-code here: in process it would replace the trust the suite's conftest set
    code = main(["bench", str(tmp_path / "ensemble.yaml"),
                 "--profile", str(_profile(tmp_path / "profile.json")), "--baseline", "fp32",
                 "--duration", "0.5", "--warmup", "0.2", "--concurrency", "2",
                 "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["precision"]["members"] == {"b": "bf16"}
    live = report["enserve"]["live_agreement"]
    # The same figure computed here, in process: b in bf16 against every member fp32.
    spec = load_spec(tmp_path / "ensemble.yaml")
    held = held_out(spec, load_calibration(spec))  # the rows int8 was not calibrated on
    rows = {"x": held.inputs["x"]}
    fp32 = ReferenceExecutor(spec).infer(rows).probabilities.argmax(axis=1)
    mixed = ReferenceExecutor(spec, members={"a": load_variant(spec, "a", "eager"),
                                             "b": load_variant(spec, "b", "bf16")})
    expected = float(np.mean(mixed.infer(rows).probabilities.argmax(axis=1) == fp32))
    assert expected < 0.95  # the check can tell bf16 from fp32 on this model
    assert live["rows"] == held.rows == 32
    assert abs(live["top1_agreement"] - expected) <= 3 / 32  # batch shapes may round apart
    assert "top-1 agreement with the fp32 plan" in capsys.readouterr().out
