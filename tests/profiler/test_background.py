"""Background refinement on hand-made "true" latencies: variants admitted after the first
plan, settings the model got wrong, the switch threshold, failures, stopping."""

from __future__ import annotations

from typing import Any

import pytest

from enserve.formats.plan import Plan
from enserve.formats.profile import Profile
from enserve.plan import evaluate
from enserve.profiler.background import BackgroundRefiner
from tests.profiler.test_adaptive import FakeMachine, adaptive, amdahl, greedy, settings_of

SMOOTH = amdahl(6.0, 2.0, 0.2)


def first_plan(machine: FakeMachine, variants: dict[str, tuple[str, ...]]) -> tuple[Any, Plan]:
    """What the server starts from: screen + seed only, no refinement round."""
    profiler = adaptive(machine, variants, max_rounds=0)
    result = profiler.run()
    assert result.plan is not None
    return profiler, result.plan


def test_a_variant_admitted_after_the_first_plan_is_switched_to() -> None:
    """'fast' (3x faster) is not in the first plan's grid; the refinement adds it, measures
    it, and switches the served plan to the full profile's optimum."""
    machine = FakeMachine(lambda m, v, b, s: SMOOTH(b, s) / (3.0 if v == "fast" else 1.0))
    profiler, first = first_plan(machine, {"a": ("eager",), "b": ("eager",)})
    switched: list[Plan] = []
    saved: list[Profile] = []
    lines: list[str] = []
    refiner = BackgroundRefiner(
        profiler, first, switch=switched.append, save=saved.append, say=lines.append,
        extend=lambda: profiler.add_variants({"a": ("fast",), "b": ("fast",)}))
    status = refiner.run()
    assert status.state == "converged"
    assert status.switches == len(switched) >= 1
    assert {s[1] for s in settings_of(switched[-1])} == {"fast"}
    full = machine.full_profile({"a": ("eager", "fast"), "b": ("eager", "fast")})
    served = evaluate(full, refiner.serving).throughput
    assert served > 2.5 * evaluate(full, first).throughput
    assert served == pytest.approx(greedy(full).predicted.throughput, rel=0.05)
    assert saved and any(e.variant == "fast" for e in saved[-1].entries)
    assert status.measured > 0 and status.rounds == len(saved)
    assert any("now serving the refined plan" in line for line in lines)


def test_a_cliff_the_model_missed_is_measured_and_the_plan_switches() -> None:
    """Batch 16 is four times slower than the affine model says: the first plan (made
    before any round) relies on it; the background rounds measure it and switch away."""
    def truth(member: str, variant: str, batch: int, share: float) -> float:
        return SMOOTH(batch, share) * (4.0 if batch == 16 else 1.0)

    machine = FakeMachine(truth)
    variants = {"a": ("eager",), "b": ("eager",)}
    profiler, first = first_plan(machine, variants)
    assert any(s[4] == 16 for s in settings_of(first))
    switched: list[Plan] = []
    status = BackgroundRefiner(profiler, first, switch=switched.append, say=lambda _: None).run()
    assert status.switches >= 1
    assert all(s[4] != 16 for s in settings_of(switched[-1]))
    full = machine.full_profile(variants)
    assert evaluate(full, switched[-1]).throughput > 1.5 * evaluate(full, first).throughput


def test_no_switch_below_the_gain_threshold() -> None:
    """The truth follows the model: refinement confirms the first plan, nothing switches."""
    machine = FakeMachine(lambda m, v, b, s: SMOOTH(b, s))
    profiler, first = first_plan(machine, {"a": ("eager",), "b": ("eager",)})
    switched: list[Plan] = []
    status = BackgroundRefiner(profiler, first, switch=switched.append, min_gain=0.05,
                               say=lambda _: None).run()
    assert switched == [] and status.switches == 0
    assert status.state in ("converged", "done")
    assert status.best_predicted <= status.serving_predicted * 1.05


def test_a_failing_switch_keeps_the_old_plan() -> None:
    machine = FakeMachine(lambda m, v, b, s: SMOOTH(b, s) / (3.0 if v == "fast" else 1.0))
    profiler, first = first_plan(machine, {"a": ("eager",)})

    def broken(plan: Plan) -> None:
        raise RuntimeError("no memory for a second engine")

    lines: list[str] = []
    refiner = BackgroundRefiner(profiler, first, switch=broken, say=lines.append,
                                extend=lambda: profiler.add_variants({"a": ("fast",)}))
    status = refiner.run()
    assert status.switches == 0 and refiner.serving is first
    assert status.state in ("converged", "done")
    assert any("keeping the old one" in line for line in lines)


def test_a_failing_measurement_ends_in_failed_not_an_exception() -> None:
    machine = FakeMachine(lambda m, v, b, s: SMOOTH(b, s))
    profiler, first = first_plan(machine, {"a": ("eager",)})

    def boom(settings: Any) -> Any:
        raise OSError("fork failed")

    profiler._measure = boom
    status = BackgroundRefiner(profiler, first, say=lambda _: None,
                               extend=lambda: profiler.add_variants({"a": ("fast",)})).run()
    assert status.state == "failed" and "fork failed" in (status.error or "")


def test_stop_before_the_first_round() -> None:
    machine = FakeMachine(lambda m, v, b, s: SMOOTH(b, s))
    profiler, first = first_plan(machine, {"a": ("eager",)})
    refiner = BackgroundRefiner(profiler, first, say=lambda _: None)
    refiner.stop()  # before it starts: nothing is measured
    calls = len(machine.calls)
    refiner.start()
    refiner.stop()
    assert refiner.status().state == "stopped"
    assert len(machine.calls) == calls
