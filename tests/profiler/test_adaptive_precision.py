"""Reduced precision in the adaptive profiler (`enserve plan SPEC` without --full-profile):
the variants a fingerprint enables are deferred, admitted by the ensemble-level accuracy
check on the held-out rows, then screened like any other; `--precision fp32` adds none."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from enserve.commands.plan import describe_precision
from enserve.errors import ProfileError
from enserve.formats.profile import profile_from_dict
from enserve.plan.precision import choose_precision
from enserve.profiler.adaptive_run import AdaptiveSession, adaptive_profile_spec
from enserve.variants.names import REDUCED_PRECISION
from tests.helpers.precision import amx_here, avx2_only, write_spec


def reduced_in(session: AdaptiveSession) -> dict[str, set[str]]:
    return {part: {v for vs in variants.values() for v in vs if v in REDUCED_PRECISION}
            for part, variants in (("first", session.first_variants),
                                   ("deferred", session.deferred))}


def test_auto_defers_the_variants_the_fingerprint_enables_and_fp32_adds_none(
        tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec", {"synthetic": 32})
    kwargs = {"variants": ["eager"], "cache_dir": tmp_path / "cache", "shares": [1]}
    int8_only = AdaptiveSession(spec, hardware=avx2_only(), **kwargs)
    assert reduced_in(int8_only) == {"first": set(), "deferred": {"int8"}}
    assert all(vs == ["int8"] for vs in int8_only.deferred.values())
    assert any("bf16 not profiled" in n for n in int8_only.notes)
    both = AdaptiveSession(spec, hardware=amx_here(), **kwargs)
    assert reduced_in(both) == {"first": set(), "deferred": {"bf16", "int8"}}
    fp32 = AdaptiveSession(spec, hardware=amx_here(), precision="fp32", **kwargs)
    assert reduced_in(fp32) == {"first": set(), "deferred": set()}
    # no accuracy section: nothing to admit them by, so none is added
    bare = AdaptiveSession(write_spec(tmp_path / "bare", None), hardware=amx_here(), **kwargs)
    assert reduced_in(bare) == {"first": set(), "deferred": set()}
    with pytest.raises(ProfileError, match="--precision"):
        AdaptiveSession(spec, precision="int4", **kwargs)


def test_extend_admits_the_reduced_variants_of_every_member_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = write_spec(tmp_path / "spec", {"synthetic": 32})
    session = AdaptiveSession(spec, variants=["eager", "channels_last"], shares=[1],
                              first_variants=["eager"], cache_dir=tmp_path / "cache",
                              hardware=avx2_only())
    calls: list[dict[str, list[str]]] = []

    def admit(member_variants: dict[str, list[str]], bar: Any) -> dict[str, list[str]]:
        calls.append(dict(member_variants))
        return {m: [] for m in member_variants}

    monkeypatch.setattr(session, "_admit", admit)
    monkeypatch.setattr(session, "skeleton", dict)
    session.profiler = SimpleNamespace(over_budget=lambda: False,  # type: ignore[assignment]
                                       add_variants=lambda variants: [])
    session.extend()
    assert calls == [{"benign": ["int8"]}, {"outlier": ["int8"]},
                     {"benign": ["channels_last"]}, {"outlier": ["channels_last"]}]
    assert not any(session.deferred.values())


@pytest.mark.slow
def test_adaptive_profile_admits_int8_by_the_ensemble_and_refuses_the_outlier(
        tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec", {"synthetic": 128, "quantization_samples": 32})
    data, result, _ = adaptive_profile_spec(
        spec, batch_sizes=(1, 2), shares=[1], variants=["eager"], cache_dir=tmp_path / "c",
        progress=False, repeats=2, warmup=1, budget_s=None, hardware=avx2_only())
    members = {m["name"]: m for m in data["members"]}
    assert members["benign"]["variants"] == ["eager", "int8"]
    assert members["outlier"]["variants"] == ["eager"]
    refused = next(c for c in members["outlier"]["checks"] if c["variant"] == "int8")
    assert not refused["admitted"] and "ensemble-level" in refused["reason"]
    section = data["accuracy"]
    assert section["rows"] == 96  # the held-out rows (32 of 128 calibrate int8)
    assert section["members"]["outlier"]["int8"]["top1_agreement"] < 0.9
    entries = {(e["member"], e["variant"]) for e in data["entries"]}
    assert ("benign", "int8") in entries and ("outlier", "int8") not in entries
    assert data["meta"]["adaptive"]["deferred_variants"] == {}
    assert data["meta"]["adaptive"]["precision"] == "auto"
    # the loop planned over the admitted mixes; so does `enserve plan` afterwards
    assert result.plan is not None and result.plan.precision is not None
    decision = choose_precision(profile_from_dict(data))
    assert decision.assignment.get("outlier") != "int8"
    assert "held-out calibration rows" in describe_precision(decision.plan.precision)

    fp32, _, _ = adaptive_profile_spec(
        spec, batch_sizes=(1, 2), shares=[1], variants=["eager"], cache_dir=tmp_path / "c",
        progress=False, repeats=2, warmup=1, budget_s=None, hardware=avx2_only(),
        precision="fp32")
    assert all(m["variants"] == ["eager"] for m in fp32["members"])
    assert "accuracy" not in fp32
    assert all(e["variant"] == "eager" for e in fp32["entries"])
