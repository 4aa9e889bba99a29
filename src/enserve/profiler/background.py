"""Refine an adaptive profile in the background while the first plan is served.

The first plan comes from a partial profile (`enserve.profiler.adaptive`): a few settings
measured, the rest modelled, some variants not even admitted yet. `BackgroundRefiner`
goes on from there in a thread: it admits and screens the variants put off
(`extend`), then runs refinement rounds with a wider margin than the first plan's (each:
plan, measure the modelled settings the plan uses or its close competitors, plan
again). After every round the new plan and the one being served are both evaluated on the
refined profile; when the new one predicts at least `min_gain` more (throughput, or less
completion time under the latency objective), `switch(plan)` is called (the engine
backend starts an engine on it and retires the old one). `save(profile)` gets the refined
profile after every round; every measurement also lands in the profiler's cache, so the
next start plans from it without measuring again.

Low priority is the caller's part of `measure` (the adaptive session runs its children
with `nice` 10). Progress: one log line per round (logger `enserve.refine`, or `say`) and
`status()` (settings measured and modelled, rounds, switches, predicted throughput of the
plan served), which the engine backend exports as metrics.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from enserve.formats.plan import Plan
from enserve.formats.profile import Profile
from enserve.plan import evaluate
from enserve.profiler.adaptive import AdaptiveProfiler, Setting

log = logging.getLogger("enserve.refine")


@dataclass
class RefineStatus:
    """Where the background refinement stands (`BackgroundRefiner.status()`)."""

    state: str = "pending"  # pending | running | converged | done | stopped | failed
    measured: int = 0
    modelled: int = 0
    rounds: int = 0
    switches: int = 0
    serving_predicted: float = 0.0  # the served plan's objective on the latest profile
    best_predicted: float = 0.0  # the latest plan's
    elapsed_s: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class BackgroundRefiner:
    """Refines `profiler` after `plan` was served from it (see the module docstring)."""

    def __init__(self, profiler: AdaptiveProfiler, plan: Plan, *,
                 switch: Callable[[Plan], None] | None = None,
                 extend: Callable[[], list[Setting]] | None = None,
                 save: Callable[[Profile], None] | None = None,
                 min_gain: float = 0.05, margin: float = 0.25, max_rounds: int = 12,
                 say: Callable[[str], None] | None = None) -> None:
        self.profiler = profiler
        self.serving = plan
        self.switch = switch
        self.extend = extend
        self.save = save
        self.min_gain = min_gain
        self.margin = margin
        self.max_rounds = max_rounds
        self.say = say or log.info
        self._status = RefineStatus()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- control -----------------------------------------------------------------------

    def start(self) -> BackgroundRefiner:
        """Run `run()` in a daemon thread."""
        self._thread = threading.Thread(target=self.run, name="enserve-refine", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 60.0) -> None:
        """Ask the refinement to stop after the measurement in progress; wait for it."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout_s)

    def stopping(self) -> bool:
        """Has `stop()` been called? (Long steps check it between measurements.)"""
        return self._stop.is_set()

    def status(self) -> RefineStatus:
        with self._lock:
            out = RefineStatus(**asdict(self._status))
        out.measured = len(self.profiler.measured)  # live, also while variants are added
        return out

    # -- the work ----------------------------------------------------------------------

    def run(self) -> RefineStatus:
        """Extend, then refine round by round until converged, stopped or `max_rounds`."""
        started = time.monotonic()
        self._set(state="running")
        try:
            if self.extend is not None and not self._stop.is_set():
                added = self.extend()
                self.say(f"refining the profile: {len(added)} settings of variants "
                         "admitted after the first plan measured")
                self._after(self.profiler.plan(), self.profiler.profile(), started,
                            "added variants")
            self.profiler.margin = max(self.profiler.margin, self.margin)
            self.profiler.budget_s = None
            state = "done"
            for _ in range(self.max_rounds):
                if self._stop.is_set():
                    state = "stopped"
                    break
                result = self.profiler.refine(max_rounds=1)
                assert result.plan is not None
                reason = result.rounds[-1].reason if result.rounds else "no round"
                self._after(result.plan, result.profile, started, reason)
                if result.converged:
                    state = "converged"
                    break
            self._set(state=state, elapsed_s=time.monotonic() - started)
            self.say(f"refining the profile: {state} after {self._status.rounds} rounds, "
                     f"{self._status.measured} settings measured, {self._status.switches} "
                     f"plan switches")
        except Exception as exc:  # never take the server down
            self._set(state="failed", error=f"{type(exc).__name__}: {exc}",
                      elapsed_s=time.monotonic() - started)
            self.say(f"refining the profile failed: {type(exc).__name__}: {exc}")
        return self.status()

    def _after(self, candidate: Plan, profile: Profile, started: float, reason: str) -> None:
        """Save the refined profile; switch to `candidate` if it predicts enough gain."""
        if self.save is not None:
            self.save(profile)
        view = self.profiler.planning_profile()  # what the planner compared
        served = _objective(evaluate(view, self.serving), self.profiler.objective)
        best = _objective(evaluate(view, candidate), self.profiler.objective)
        gain = _gain(best, served, self.profiler.objective)
        measured = len(self.profiler.measured)
        with self._lock:
            self._status.rounds += 1
            self._status.measured = measured
            self._status.modelled = len(profile.entries) - measured
            self._status.serving_predicted = served
            self._status.best_predicted = best
            self._status.elapsed_s = time.monotonic() - started
        self.say(f"refining the profile, round {self._status.rounds} ({reason}): "
                 f"{measured} settings measured, {len(profile.entries) - measured} modelled; "
                 f"plan served {served:.4g}, best plan {best:.4g} "
                 f"({gain:+.1%}, switch at {self.min_gain:+.0%})")
        if gain < self.min_gain or self.switch is None or self._stop.is_set():
            return
        try:
            self.switch(candidate)
        except Exception as exc:  # keep serving the old plan
            self.say(f"refining the profile: switching plans failed, keeping the old one: "
                     f"{type(exc).__name__}: {exc}")
            return
        self.serving = candidate
        with self._lock:
            self._status.switches += 1
            self._status.serving_predicted = best
        self.say(f"refining the profile: now serving the refined plan ({gain:+.1%} predicted)")

    def _set(self, **fields: Any) -> None:
        with self._lock:
            for key, value in fields.items():
                setattr(self._status, key, value)


def _objective(report: Any, objective: str) -> float:
    return float(report.latency_s if objective == "latency" else report.throughput)


def _gain(new: float, old: float, objective: str) -> float:
    """How much better `new` is than `old` (a fraction; negative: worse)."""
    if objective == "latency":
        return old / new - 1.0 if new > 0 else 0.0
    return new / old - 1.0 if old > 0 else (1.0 if new > 0 else 0.0)





def refined_first_plan(spec_path: Any, *, budget_s: float = 60.0, cache_dir: Any = None,
                       algorithm: str = "greedy", objective: str = "throughput",
                       progress: bool = True, min_gain: float = 0.05,
                       say: Callable[[str], None] | None = None, precision: str = "auto"
                       ) -> tuple[Plan, BackgroundRefiner]:
    """A first plan from an adaptive profile of `spec_path` (within `budget_s`), and a
    refiner (not started) that goes on measuring at low priority, saving the refined
    profile under the cache (`profile/refined/<ensemble>-<hardware>.json`). `precision`
    "auto" lets the refiner admit reduced-precision variants (deferred ones included)."""
    from pathlib import Path

    from enserve.formats.profile import save_profile
    from enserve.profiler.adaptive_run import BACKGROUND_NICE, AdaptiveSession

    session = AdaptiveSession(spec_path, cache_dir=cache_dir, algorithm=algorithm,
                              objective=objective, budget_s=budget_s, precision=precision)
    result = session.first_plan(progress=progress)
    assert result.plan is not None and session.profiler is not None
    session.runner.nice = BACKGROUND_NICE
    out = Path(session.cache.root) / "refined" / f"{session.spec.name}-{session.hardware.id}.json"

    def save(profile: Profile) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_profile(profile, out)

    refiner = BackgroundRefiner(session.profiler, result.plan, save=save, min_gain=min_gain,
                                say=say)
    refiner.extend = lambda: session.extend(stop=refiner.stopping)
    return result.plan, refiner
__all__ = ["BackgroundRefiner", "RefineStatus", "refined_first_plan"]
