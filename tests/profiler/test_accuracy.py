"""Reduced precision through the real profiler: int8 and bf16 admitted or refused by the
ensemble's answers on a calibration set; a plan from a foreign fingerprint re-planned."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from enserve.errors import PlanError
from enserve.formats.profile import profile_from_dict
from enserve.hardware import current_hardware, detect_hardware
from enserve.plan import Plan
from enserve.plan.precision import choose_precision
from enserve.plan_policy import fit_plan
from enserve.profiler import profile_spec_dict
from tests.helpers.precision import amx_here, avx2_only, write_spec

FAST: dict[str, Any] = {"batch_sizes": (1,), "shares": [1], "repeats": 2, "warmup": 1,
                        "progress": False, "fusion": "off"}
INTEL_AMX = ("model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz\n"
             "flags\t\t: avx2 fma avx512f avx512_bf16 avx512_vnni amx_bf16 amx_int8 amx_tile\n")


@pytest.mark.slow
def test_int8_and_bf16_admitted_by_the_ensemble_and_the_outlier_int8_refused(
        tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec", {"synthetic": 128, "quantization_samples": 32})
    data, _ = profile_spec_dict(spec, variants=None, cache_dir=tmp_path / "cache",
                                hardware=amx_here(), **FAST)
    members = {m["name"]: m for m in data["members"]}
    assert members["benign"]["variants"] == ["eager", "bf16", "int8"]
    assert members["outlier"]["variants"] == ["eager", "bf16"]
    refused = next(c for c in members["outlier"]["checks"] if c["variant"] == "int8")
    assert not refused["admitted"] and "ensemble-level" in refused["reason"]
    section = data["accuracy"]
    # measured on the 96 rows int8 was not calibrated on (32 calibrate it)
    assert section["rows"] == 96 and section["search"] == "every assignment (9)"
    assert section["calibration"]["quantization_rows"] == 32
    alone = section["members"]["outlier"]["int8"]["top1_agreement"]
    assert alone < 0.9  # the crafted member really breaks in int8
    entries = {(e["member"], e["variant"]) for e in data["entries"]}
    assert ("outlier", "int8") not in entries and ("benign", "int8") in entries
    assert data["hardware"]["cpu_model"].endswith("(fake AMX)")

    decision = choose_precision(profile_from_dict(data))
    assert decision.assignment.get("outlier") != "int8"
    info = decision.plan.precision
    assert info is not None and info["top1_agreement"] >= 0.99


def test_without_an_accuracy_section_reduced_precision_is_refused(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec", None)
    data, _ = profile_spec_dict(spec, variants=["eager", "int8"], cache_dir=tmp_path / "c",
                                **FAST)
    for m in data["members"]:
        assert m["variants"] == ["eager"]
        int8 = next(c for c in m["checks"] if c["variant"] == "int8")
        assert not int8["admitted"]
    assert "accuracy" not in data


def test_precision_fp32_and_slow_hardware_skip_reduced_variants(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec", {"synthetic": 16})
    data, _ = profile_spec_dict(spec, variants=["eager", "bf16"], cache_dir=tmp_path / "c",
                                hardware=avx2_only(), **FAST)
    assert all(m["variants"] == ["eager"] for m in data["members"])
    assert any("bf16 not profiled" in n and "AVX-512-BF16" in n for n in data["meta"]["notes"])
    data, _ = profile_spec_dict(spec, variants=None, cache_dir=tmp_path / "c",
                                precision="fp32", **FAST)
    assert all(m["variants"] == ["eager"] for m in data["members"])


@pytest.mark.slow
def test_a_plan_from_a_foreign_fingerprint_is_replanned_reused_or_refused(
        tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec", None)
    foreign = detect_hardware(cpuinfo=INTEL_AMX, cores=2, gpus=(), mps=False)
    old = Plan.from_dict({
        "algorithm": "greedy", "objective": "throughput",
        "devices": [{"id": "cpu", "kind": "cpu", "memory_bytes": 8 << 30, "compute_units": 2}],
        "instances": [{"member": m, "variant": "eager", "device": "cpu", "batch_size": 1,
                       "share": 1, "memory_bytes": 1 << 20} for m in ("benign", "outlier")],
        "predicted": {"throughput": 1.0, "latency_s": 1.0},
        "hardware": foreign.to_json_dict(), "precision": {"mode": "fp32", "members": {}},
    })
    said: list[str] = []
    unmarked = Plan.from_dict({**old.to_dict(), "hardware": None})
    assert fit_plan(spec, unmarked, "replan", say=said.append) is unmarked
    assert "no hardware fingerprint" in said[-1]
    with pytest.raises(PlanError, match="no hardware fingerprint"):
        fit_plan(spec, unmarked, "fail", say=said.append)
    assert fit_plan(spec, old, "reuse", say=said.append) is old
    assert "Intel(R) Xeon(R)" in said[-1] and "reusing" in said[-1]
    with pytest.raises(PlanError, match="plan-policy fail"):
        fit_plan(spec, old, "fail", say=said.append)
    new = fit_plan(spec, old, "replan", progress=False, cache_dir=tmp_path / "cache",
                   say=said.append)
    assert "re-planning" in said[-1]
    assert new.hardware is not None and new.hardware["id"] == current_hardware().id
    assert {i.member for i in new.instances} == {"benign", "outlier"}
    assert new.precision is not None and new.precision["mode"] == "fp32"  # the old plan's
    # --precision overrides the old plan's mode for the re-plan
    auto = fit_plan(spec, old, "replan", progress=False, cache_dir=tmp_path / "cache",
                    say=said.append, precision="auto")
    assert auto.precision is not None and auto.precision["mode"] == "auto"
    with pytest.raises(PlanError, match="--precision"):
        fit_plan(spec, old, "replan", progress=False, cache_dir=tmp_path / "cache",
                 say=said.append, precision="int4")
    # the new plan fits: no message, same object
    said.clear()
    assert fit_plan(spec, new, "fail", say=said.append) is new and said == []
