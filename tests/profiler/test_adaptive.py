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
    """The loop on `machine`; without the multi-core penalty unless given (these tests
    are about the loop; the penalty has its own below)."""
    grid = Grid(BATCHES, {"cpu": SHARES}, variants, {"cpu": "cpu"})
    skeleton = {"devices": [CPU], "members": [{"name": m} for m in variants]}
    kwargs.setdefault("multicore_penalty", 0.0)
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
    assert result.measured <= len(full.entries) / 2
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
                 and e.share == 1)
    assert entry.latency_s == pytest.approx(truth("a", "eager", 16, 1.0))


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


# -- noisy measurements and time-shared cores: measured and modelled disagree ----------------

class NoisyMachine(FakeMachine):
    """The truth, but the first measurement of some settings is off by a factor (a burst of
    other load, or a quiet moment); later ones are right."""

    def __init__(self, truth: Truth, first: dict[Setting, float]) -> None:
        super().__init__(truth)
        self.first = dict(first)

    def entry(self, s: Setting) -> dict[str, Any]:
        out = super().entry(s)
        out["latency_s"] *= self.first.pop(s, 1.0)
        return out


def time_shared(profile: Profile) -> Plan:
    return plan(profile, "greedy", "throughput")


def test_a_close_call_decided_by_one_lucky_measurement_is_measured_again() -> None:
    """Batch 8 is truly 4% faster per sample than batch 1, but batch 1's first measurement
    came out 6% fast: batch 1 wins the first plan. The close call (within 10%) is measured
    again, the mean flips it, and the plan matches the full profile's; with one measurement
    per setting (close_repeats=1) the lucky one stays."""
    def truth(member: str, variant: str, batch: int, share: float) -> float:
        per_sample = 0.010 if batch == 1 else 0.010 / 1.04
        return per_sample * batch * (1.0 if share == 1 else 0.55)

    lucky: Setting = ("a", "eager", "cpu", 1.0, 1)
    variants = {"a": ("eager",)}
    grid = Grid((1, 8), {"cpu": SHARES}, variants, {"cpu": "cpu"})
    skeleton = {"devices": [CPU], "members": [{"name": "a"}]}
    outcomes = {}
    for repeats in (1, 2):
        machine = NoisyMachine(truth, {lucky: 0.94})
        again: list[Setting] = []

        def remeasure(settings: Sequence[Setting], machine: NoisyMachine = machine,
                      again: list[Setting] = again) -> list[dict[str, Any]]:
            again.extend(settings)
            return machine.measure(settings)

        result = AdaptiveProfiler(skeleton, grid, machine.measure, time_shared,
                                  close_repeats=repeats, remeasure=remeasure).run()
        assert result.plan is not None
        outcomes[repeats] = ({s[4] for s in settings_of(result.plan)}, again, result)
    assert outcomes[1][0] == {1} and not outcomes[1][1]
    batches, again, result = outcomes[2]
    assert batches == {8}
    assert lucky in again and ("a", "eager", "cpu", 1.0, 8) in again
    assert "close calls" in [r.reason for r in result.rounds]
    entry = next(e for e in result.profile.entries if e.batch_size == 1 and e.share == 1)
    assert entry.latency_s == pytest.approx(0.010 * 0.97)  # the mean of 0.94 and 1.0
    full = FakeMachine(truth)
    full_profile = profile_from_dict({
        "devices": [CPU], "members": [{"name": "a"}],
        "entries": [full.entry(("a", "eager", "cpu", s, b)) for s in SHARES for b in (1, 8)]})
    assert evaluate(full_profile, result.plan).throughput == pytest.approx(
        time_shared(full_profile).predicted.throughput, rel=1e-6)


def test_a_lucky_two_core_measurement_does_not_win_on_time_shared_cores() -> None:
    """Three members time-share 2 cores (imagenet6's case). Member c scales almost
    perfectly to 2 cores (97% per core); its first 2-core batch-8 measurement came out 20%
    fast, which would make 2 cores the better use of the cores for c. The planning view
    caps a 2-core setting at twice the 1-core samples/s (then c ties, and the shorter
    batch time on 2 cores wins the tie) and adds the multi-core penalty, so the plan keeps
    c on one core, as the full profile's plan does."""
    def truth(member: str, variant: str, batch: int, share: float) -> float:
        cost = {"a": 0.020, "b": 0.012, "c": 0.002}[member]
        latency = cost * (0.5 + batch)
        return latency if share == 1 else latency / (2 * 0.97)

    lucky: Setting = ("c", "eager", "cpu", 2.0, 8)
    variants = {"a": ("eager",), "b": ("eager",), "c": ("eager",)}
    grid = Grid((1, 8), {"cpu": SHARES}, variants, {"cpu": "cpu"})
    skeleton = {"devices": [CPU], "members": [{"name": m} for m in variants]}
    full = FakeMachine(truth)
    full_profile = profile_from_dict({
        "devices": [CPU], "members": [{"name": m} for m in variants],
        "entries": [full.entry((m, "eager", "cpu", s, b)) for m in variants for s in SHARES
                    for b in (1, 8)]})
    best = time_shared(full_profile)
    assert all(i.share == 1 for i in best.instances)
    for penalty in (0.0, 0.1):
        machine = NoisyMachine(truth, {lucky: 0.8})
        profiler = AdaptiveProfiler(skeleton, grid, machine.measure, time_shared,
                                    close_repeats=1, multicore_penalty=penalty)
        result = profiler.run()
        assert result.plan is not None
        shares = {i.share for i in result.plan.instances if i.member == "c"}
        if penalty == 0.0:  # capped, c ties on its samples/s per core; 2 cores are faster
            assert shares == {2}
            continue
        assert shares == {1}
        assert evaluate(full_profile, result.plan).throughput >= 0.999 * (
            best.predicted.throughput)
    # the profile keeps the lucky measurement; only the planner's view is capped
    entry = next(e for e in result.profile.entries if e.member == "c" and e.share == 2
                 and e.batch_size == 8)
    assert entry.latency_s == pytest.approx(truth("c", "", 8, 2.0) * 0.8)


def test_the_planning_view_caps_and_penalises_multi_core_cpu_settings_only() -> None:
    variants = {"a": ("eager",)}
    grid = Grid((1, 8), {"cpu": (1.0, 2.0), "cuda:0": (50.0, 100.0)}, variants,
                {"cpu": "cpu", "cuda:0": "cuda"})
    profiler = AdaptiveProfiler({"devices": [CPU], "members": [{"name": "a"}]}, grid,
                                lambda s: [], greedy, multicore_penalty=0.1)

    def entry(device: str, share: float, batch: int, latency: float) -> dict[str, Any]:
        return {"member": "a", "variant": "eager", "device": device, "share": share,
                "batch_size": batch, "latency_s": latency, "memory_bytes": 1}

    view = profiler.planning_entries([
        entry("cpu", 1.0, 8, 0.100), entry("cpu", 2.0, 8, 0.040),  # "2.5x" on 2 cores
        entry("cpu", 1.0, 1, 0.020), entry("cpu", 2.0, 1, 0.015),  # 1.3x: kept
        entry("cuda:0", 50.0, 8, 0.010), entry("cuda:0", 100.0, 8, 0.002)])
    latency = {(e["device"], e["share"], e["batch_size"]): e["latency_s"] for e in view}
    assert latency[("cpu", 1.0, 8)] == pytest.approx(0.100)
    assert latency[("cpu", 2.0, 8)] == pytest.approx(0.050 * 1.1)
    assert latency[("cpu", 1.0, 1)] == pytest.approx(0.020)
    assert latency[("cpu", 2.0, 1)] == pytest.approx(0.015 * 1.1)
    assert latency[("cuda:0", 100.0, 8)] == pytest.approx(0.002)  # GPUs: as measured


def test_the_start_up_time_per_measuring_child_is_learnt_for_the_budget() -> None:
    """Each measuring child (member, variant, device, share) costs 3 s of start-up here (a
    loaded machine), not the assumed 1 s: the profiler learns it from its measurements,
    and a round with 5 s left then measures one child's settings, not four."""
    now = [0.0]
    machine = FakeMachine(lambda m, v, b, s: amdahl(4.0, 2.0, 0.2)(b, s))
    real = machine.measure

    def slow_start(settings: Sequence[Setting]) -> list[dict[str, Any]]:
        out = real(settings)
        now[0] += 3.0 * len({s[:4] for s in settings}) + sum(4 * e["latency_s"] for e in out)
        return out

    machine.measure = slow_start  # type: ignore[method-assign]
    profiler = adaptive(machine, {"a": ("eager",)}, clock=lambda: now[0])
    profiler.measure(profiler.screen_settings(), "screening")
    assert profiler.overhead_s == pytest.approx(3.0)
    profiler.budget_s, profiler._start = 5.0, now[0]
    todo = [("a", "eager", "cpu", s, b) for s in SHARES for b in (2, 4)]
    assert profiler._affordable(todo) == todo[:2]  # one child (share 1), 3 s + runs


def test_the_session_stops_measuring_before_the_budget_ends(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`enserve plan SPEC` measures until `BUDGET_RESERVE` of the budget is left (the final
    plan and writing the profile come after the last measurement)."""
    from types import SimpleNamespace

    from enserve.profiler import adaptive_run
    from enserve.profiler.adaptive_run import BUDGET_RESERVE, AdaptiveSession

    monkeypatch.setattr(adaptive_run.time, "monotonic", lambda: 1000.0)  # a clock standing still
    ten_s_in = SimpleNamespace(budget_s=60.0, started=1000.0 - 10.0)
    left = AdaptiveSession.remaining_s(ten_s_in)  # type: ignore[arg-type]
    assert left is not None and 0 < left <= 60.0 * (1 - BUDGET_RESERVE) - 10.0 < 50.0 - 2
    spent = SimpleNamespace(budget_s=11.0, started=1000.0 - 10.0)
    assert AdaptiveSession.remaining_s(spent) == 0.0  # type: ignore[arg-type]
    unbounded = SimpleNamespace(budget_s=None, started=0.0)
    assert AdaptiveSession.remaining_s(unbounded) is None  # type: ignore[arg-type]
