"""The adaptive profiler on hand-made "true" latencies: what it measures, what it models, and
that disagreements between model and measurement change the plan."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from enserve.formats.plan import Plan
from enserve.formats.profile import Profile, profile_from_dict
from enserve.plan import Constraints, evaluate, plan
from enserve.profiler.adaptive import AdaptiveProfiler, Grid, Setting, instance_setting
from enserve.profiler.latency_model import LatencyModel, Measured, fit

GB = 2**30
CPU = {"id": "cpu", "kind": "cpu", "memory_bytes": 8 * GB, "compute_units": 2}
BATCHES = (1, 2, 4, 8, 16)
SHARES = (1.0, 2.0)

Truth = Callable[[str, str, int, float], float]  # (member, variant, batch, share) -> seconds


def amdahl(fixed_ms: float, per_sample_ms: float, serial: float) -> Callable[[int, float], float]:
    def latency(batch: int, share: float) -> float:
        return (fixed_ms + per_sample_ms * batch) / 1000 * (serial + (1 - serial) * 2 / share)
    return latency


class FakeMachine:
    """Answers measurements from a truth function; records what was asked."""

    def __init__(self, truth: Truth) -> None:
        self.truth = truth
        self.calls: list[list[Setting]] = []

    def measure(self, settings: Sequence[Setting]) -> list[dict[str, Any]]:
        self.calls.append(list(settings))
        return [self.entry(s) for s in settings]

    def entry(self, s: Setting) -> dict[str, Any]:
        member, variant, device, share, batch = s
        return {"member": member, "variant": variant, "device": device, "batch_size": batch,
                "share": share, "latency_s": self.truth(member, variant or "", batch, share),
                "memory_bytes": (100 + 10 * batch) * 2**20}

    def full_profile(self, variants: dict[str, tuple[str, ...]]) -> Profile:
        entries = [self.entry((m, v, "cpu", s, b)) for m, vs in variants.items() for v in vs
                   for s in SHARES for b in BATCHES]
        return profile_from_dict({"devices": [CPU], "members": [{"name": m} for m in variants],
                                  "entries": entries})


def greedy(profile: Profile) -> Plan:
    return plan(profile, "greedy", "throughput", Constraints(time_sharing=False))


def adaptive(machine: FakeMachine, variants: dict[str, tuple[str, ...]],
             **kwargs: Any) -> AdaptiveProfiler:
    grid = Grid(BATCHES, {"cpu": SHARES}, variants, {"cpu": "cpu"})
    skeleton = {"devices": [CPU], "members": [{"name": m} for m in variants]}
    return AdaptiveProfiler(skeleton, grid, machine.measure, greedy, **kwargs)


def settings_of(p: Plan) -> set[Setting]:
    return {instance_setting(i) for i in p.instances}


def test_fit_recovers_the_model_from_three_points() -> None:
    truth = amdahl(4.0, 2.0, 0.2)
    points = [Measured(b, s, truth(b, s), 100 + 10 * b) for b, s in [(1, 2.0), (8, 2.0), (8, 1.0)]]
    model = fit(points)
    for b in BATCHES:
        for s in SHARES:
            assert model.latency(b, s) == pytest.approx(truth(b, s), rel=1e-9)
    assert model.memory(16) == 260


def test_fit_with_one_point_is_linear_through_the_origin() -> None:
    model = fit([Measured(4, 2.0, 0.04, 1000)], kind="cpu")
    assert isinstance(model, LatencyModel)
    assert model.latency(8, 2.0) == pytest.approx(0.08)
    assert model.latency(4, 1.0) > 0.04  # fewer cores: slower (prior serial fraction)


def test_when_the_model_is_right_few_settings_are_measured_and_the_plan_is_optimal() -> None:
    truths = {"a": amdahl(4.0, 2.0, 0.2), "b": amdahl(1.0, 5.0, 0.1)}
    machine = FakeMachine(lambda m, v, b, s: truths[m](b, s))
    variants = {"a": ("eager",), "b": ("eager",)}
    result = adaptive(machine, variants).run()
    full = machine.full_profile(variants)
    best = greedy(full)
    assert result.converged
    assert result.measured < len(full.entries) / 2
    assert evaluate(full, result.plan).throughput == pytest.approx(best.predicted.throughput,
                                                                   rel=1e-6)
    modelled = [e for e in result.profile.entries if getattr(e, "modelled", False)]
    assert len(modelled) == len(full.entries) - result.measured


def test_a_modelled_setting_that_measures_slow_is_replaced_in_the_plan() -> None:
    """Truth has a cliff at batch 16 the affine model cannot see: the first plan uses it,
    refinement measures it, and the plan changes."""
    smooth = amdahl(6.0, 2.0, 0.2)

    def truth(member: str, variant: str, batch: int, share: float) -> float:
        slow = 4.0 if member == "a" and batch == 16 else 1.0
        return smooth(batch, share) * slow * (1.0 if member == "a" else 0.5)

    machine = FakeMachine(truth)
    variants = {"a": ("eager",), "b": ("eager",)}
    seen: list[Plan] = []
    result = adaptive(machine, variants, on_plan=seen.append).run()
    assert len(seen) >= 2  # the first plan, then the changed one
    assert settings_of(seen[-1]) == settings_of(result.plan)
    first = result.rounds[0]
    assert first.reason == "plan uses modelled settings"
    cliff = {s for s in first.measured if s[0] == "a" and s[4] == 16}
    assert cliff, "the first plan relied on the modelled batch 16 of member a"
    assert any(r.plan_changed for r in result.rounds[1:])
    assert all(not (s[0] == "a" and s[4] == 16) for s in settings_of(result.plan))
    full = machine.full_profile(variants)
    assert evaluate(full, result.plan).throughput == pytest.approx(
        greedy(full).predicted.throughput, rel=1e-6)
    # the profile keeps the measured value, not the model's
    entry = next(e for e in result.profile.entries if e.member == "a" and e.batch_size == 16
                 and e.share == 2)
    assert entry.latency_s == pytest.approx(truth("a", "eager", 16, 2.0))


def test_a_close_competitor_is_measured_and_wins() -> None:
    """Variant 'fast' looks slightly worse from its one screening point (the model borrows
    'eager''s batch shape), but batches far better: measured as a close competitor, it
    replaces 'eager' in the plan."""
    eager = amdahl(8.0, 2.0, 0.2)

    def truth(member: str, variant: str, batch: int, share: float) -> float:
        if variant == "fast":
            return eager(1, share) * 1.08 if batch == 1 else eager(batch, share) * 0.6
        return eager(batch, share)

    machine = FakeMachine(truth)
    variants = {"a": ("eager", "fast")}
    profiler = adaptive(machine, variants, screen_ratio=1.05, margin=0.1)
    result = profiler.run()
    assert [v for (_, v, _, _, _) in profiler.seed_settings()] == ["eager", "eager"]
    reasons = [r.reason for r in result.rounds]
    assert "close competitors" in reasons
    assert {s[1] for s in settings_of(result.plan)} == {"fast"}
    full = machine.full_profile(variants)
    assert evaluate(full, result.plan).throughput == pytest.approx(
        greedy(full).predicted.throughput, rel=1e-6)


def test_budget_stops_the_refinement_with_a_valid_plan() -> None:
    machine = FakeMachine(lambda m, v, b, s: amdahl(4.0, 2.0, 0.2)(b, s))
    ticks = iter(range(1000))
    result = adaptive(machine, {"a": ("eager",)}, budget_s=0.5,
                      clock=lambda: float(next(ticks))).run()
    assert not result.converged
    assert result.rounds[-1].reason == "budget spent"
    assert result.plan is not None and result.plan.instances


def test_a_round_measures_only_what_fits_in_the_budget_left() -> None:
    """About one second per setting (start-up + runs): with 2.5 s left (the clock stands
    still), a round measures at most two settings, never overrunning the budget."""
    machine = FakeMachine(lambda m, v, b, s: amdahl(4.0, 2.0, 0.2)(b, s))
    result = adaptive(machine, {"a": ("eager",), "b": ("eager",)}, budget_s=2.5,
                      clock=lambda: 0.0).run()
    assert result.plan is not None and result.plan.instances
    assert all(len(r.measured) <= 2 for r in result.rounds)
    assert any(r.measured for r in result.rounds)


def test_failed_measurements_are_not_retried() -> None:
    machine = FakeMachine(lambda m, v, b, s: amdahl(4.0, 2.0, 0.2)(b, s))
    real = machine.measure

    def flaky(settings: Sequence[Setting]) -> list[dict[str, Any]]:
        return [e for e in real(settings) if e["batch_size"] != 16]

    machine.measure = flaky  # type: ignore[method-assign]
    result = adaptive(machine, {"a": ("eager",)}).run()
    asked = [s for call in machine.calls for s in call if s[4] == 16]
    assert len(asked) == len(set(asked))
    assert result.plan is not None


@pytest.mark.slow
def test_enserve_profile_adaptive_on_a_real_tiny_ensemble(tiny_spec_path: Path,
                                                          tmp_path: Path) -> None:
    """End to end: admission checks and measurements in child processes, the rest modelled."""
    from enserve.cli import main
    from enserve.formats.profile import load_profile

    out = tmp_path / "profile.json"
    code = main(["profile", str(tiny_spec_path), "--adaptive", "--variants", "eager",
                 "--batch-sizes", "1,2,4,8", "--shares", "1", "--cache-dir",
                 str(tmp_path / "cache"), "--no-progress", "--budget-s", "60",
                 "--out", str(out)])
    assert code == 0
    written = load_profile(out)
    modelled = [e for e in written.entries if getattr(e, "modelled", False)]
    assert len(written.entries) == 2 * 4  # two members x four batch sizes x one share
    assert 0 < len(modelled) < len(written.entries)
    adaptive_meta = written.meta["adaptive"]  # type: ignore[attr-defined]
    assert adaptive_meta["measured_settings"] + adaptive_meta["modelled_settings"] == 8
    plan(written, "greedy")  # the profile plans
