"""Adaptive profiling: measure a few settings, model the rest, refine where the plan is close.

A full profile measures every member x variant x device x share x batch size: minutes on a
new machine. The planner needs far fewer points to choose well, if the rest are modelled
(`enserve.profiler.latency_model`) and the points it actually relies on are measured:

1. **Screen.** Every (member, variant, device) is measured at one setting: the smallest
   batch size at the largest share.
2. **Seed the model.** Variants within `screen_ratio` of the member's fastest there get two
   more points: a larger batch (`seed_batch`) at the largest share, and the same batch at
   the smallest share. The others keep a one-point model (a rough guess; it is measured if
   the planner ever picks it). With one variant per member (the first plan) screening
   and seeding are one step, which also measures the smallest batch at the smallest
   share: the four corners of the batch x share grid, one measuring child per share.
3. **Refine.** Plan on measured + modelled entries. Measure every modelled setting the plan
   uses; once all are measured, measure the close competitors: modelled settings of a
   planned member on a device it uses whose samples/s per unit of share (throughput
   objective) or latency (latency objective) is within `margin` of the member's planned
   setting there, the closest one per (member, variant, device), skipping those whose
   model was last confirmed by a measurement within `tolerance`. Refit, re-plan, repeat
   until a round finds nothing modelled worth measuring, `max_rounds` rounds ran, or
   `budget_s` is spent.
4. **Close calls.** Once nothing the plan relies on is modelled, each planned instance's
   setting and its closest measured alternative (same member and device, within
   `close_margin` of it by the same measure) are measured again, until each has
   `close_repeats` measurements; an entry's latency is the mean of its measurements.
   One noisy measurement then no longer decides between two near-equal settings.

The planner sees the *planning view* of the profile (`planning_profile`): on a CPU a
setting using k > 1 cores is never credited with more than k / k0 times the samples/s of
the same batch on the fewest cores k0 (parallel efficiency <= 1: a measurement that says
more is noise), and its latency carries `multicore_penalty` (default 10%): measured alone, a
multi-core setting over-states what it gets when the cores are time-shared with other
members' instances (its threads wait for each other whenever one is descheduled). A
multi-core setting must therefore win clearly to be chosen. The profile returned keeps
the measured and modelled latencies as they are.

Measured entries are never overwritten by the model; modelled ones carry `"modelled": true`.
`on_plan` is called with the first plan and with every plan that differs from the one
before. `add_variants` screens variants admitted later and `refine` continues the rounds:
`enserve.profiler.background` runs both in a thread while the first plan is served.
Everything hardware-specific sits behind `measure` (a callable from settings to measured
entries) and `planner` (profile -> plan), so the loop is tested on hand-made profiles.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from enserve.formats.plan import Plan
from enserve.formats.profile import Profile, profile_from_dict
from enserve.profiler.latency_model import LatencyModel, Measured, fit, scaled_like

# (member, variant, device id, share, batch size)
Setting = tuple[str, str | None, str, float, int]
Measure = Callable[[Sequence[Setting]], list[dict[str, Any]]]
Planner = Callable[[Profile], Plan]
Progress = Callable[[str, int], None]  # (what is being measured, how many settings)


@dataclass(frozen=True)
class Grid:
    """The settings a full profile would measure."""

    batch_sizes: tuple[int, ...]
    shares: Mapping[str, tuple[float, ...]]  # per device id, ascending
    variants: Mapping[str, tuple[str | None, ...]]  # per member
    kinds: Mapping[str, str]  # device id -> "cpu" | "cuda"

    def size(self) -> int:
        return sum(len(self.batch_sizes) * len(s) * len(v)
                   for s in self.shares.values() for v in self.variants.values())


@dataclass
class Round:
    """One plan of the refinement and what was measured after it."""

    predicted_throughput: float
    predicted_latency_s: float
    plan_changed: bool
    measured: list[Setting]
    reason: str  # "plan uses modelled settings" | "close competitors" | "converged" | ...


@dataclass
class AdaptiveResult:
    profile: Profile
    plan: Plan | None
    rounds: list[Round] = field(default_factory=list)
    measured: int = 0
    modelled: int = 0
    converged: bool = False
    elapsed_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "measured_settings": self.measured,
            "modelled_settings": self.modelled,
            "rounds": len(self.rounds),
            "converged": self.converged,
            "elapsed_s": round(self.elapsed_s, 3),
            "history": [{"predicted_throughput": r.predicted_throughput,
                         "predicted_latency_s": r.predicted_latency_s,
                         "plan_changed": r.plan_changed, "reason": r.reason,
                         "measured": [list(s) for s in r.measured]} for r in self.rounds],
        }


def instance_setting(instance: Any) -> Setting:
    return (instance.member, instance.variant, instance.device, float(instance.share),
            int(instance.batch_size))


class AdaptiveProfiler:
    """The screen / seed / refine loop of the module docstring."""

    def __init__(self, skeleton: Mapping[str, Any], grid: Grid, measure: Measure,
                 planner: Planner, *, objective: str = "throughput", margin: float = 0.1,
                 tolerance: float = 0.05,
                 screen_ratio: float = 1.5, seed_batch: int = 8, max_rounds: int = 8,
                 budget_s: float | None = None, competitors_per_round: int = 12,
                 close_margin: float = 0.1, close_repeats: int = 2,
                 multicore_penalty: float = 0.1, remeasure: Measure | None = None,
                 progress: Progress | None = None,
                 on_plan: Callable[[Plan], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.skeleton = dict(skeleton)
        self.grid = grid
        self._measure = measure
        self._remeasure = remeasure  # measures again, past any cache (default: `measure`)
        self.planner = planner
        self.objective = objective
        self.margin = margin
        self.tolerance = tolerance
        self.screen_ratio = screen_ratio
        self.seed_batch = seed_batch
        self.max_rounds = max_rounds
        self.budget_s = budget_s
        self.competitors_per_round = competitors_per_round
        self.close_margin = close_margin
        self.close_repeats = close_repeats
        self.multicore_penalty = multicore_penalty
        self.progress = progress
        self.on_plan = on_plan  # called with the first plan and with every changed one
        self.clock = clock
        # Measuring-time estimate for the budget: per setting, a child's start-up and
        # model load, and the warm-up + timed runs (the profiler stops after 2 s, >= 3 runs).
        self.overhead_s = 1.0
        self.runs_per_setting = 4
        self.plan_s = 0.0  # how long the last planning took (planning again after measuring)
        self.measured: dict[Setting, dict[str, Any]] = {}
        self.failed: set[Setting] = set()
        self.samples: dict[Setting, list[float]] = {}  # latency of each measurement
        # relative error of the model at the last setting measured after it was fitted
        self.model_error: dict[tuple[str, str | None, str], float] = {}
        self._start = clock()

    # -- measuring ------------------------------------------------------------------------

    def measure(self, settings: Iterable[Setting], what: str,
                again: bool = False) -> list[Setting]:
        """Measure `settings` not measured yet (with `again`: those measured fewer than
        `close_repeats` times, through `remeasure`); returns those measured."""
        if again:
            todo = [s for s in dict.fromkeys(settings) if s in self.measured
                    and len(self.samples.get(s, ())) < self.close_repeats]
        else:
            todo = [s for s in dict.fromkeys(settings) if s not in self.measured
                    and s not in self.failed]
        if not todo:
            return []
        if self.progress is not None:
            self.progress(what, len(todo))
        models = self.models()
        measure = self._remeasure if again and self._remeasure is not None else self._measure
        done: list[Setting] = []
        started = self.clock()
        entries = measure(todo)
        self._calibrate(self.clock() - started, todo, entries)
        for entry in entries:
            key: Setting = (entry["member"], entry.get("variant"), entry["device"],
                            float(entry["share"]), int(entry["batch_size"]))
            if key not in todo:
                continue
            done.append(key)
            if again:  # the mean of every measurement of the setting
                samples = self.samples.setdefault(key, [])
                samples.append(float(entry["latency_s"]))
                self.measured[key] = {**self.measured[key],
                                      "latency_s": sum(samples) / len(samples)}
                continue
            self.measured[key] = dict(entry)
            self.samples[key] = [float(entry["latency_s"])]
            model = models.get(key[:3])
            if model is not None:  # how far off was the model here?
                predicted = model.latency(key[4], key[3])
                self.model_error[key[:3]] = abs(predicted / float(entry["latency_s"]) - 1.0)
        if not again:
            self.failed.update(s for s in todo if s not in self.measured)
        return [s for s in todo if s in set(done)]

    def _calibrate(self, wall_s: float, todo: Sequence[Setting],
                   entries: Sequence[Mapping[str, Any]]) -> None:
        """Learn `overhead_s` (per measuring child: start-up, model load; it grows with the
        machine's load) from the last measuring call, at least the initial 1 s."""
        children = len({s[:4] for s in todo})
        runs = sum(self.runs_per_setting * float(e["latency_s"]) for e in entries)
        if entries and children:
            self.overhead_s = max(1.0, (wall_s - runs) / children)

    def _affordable(self, todo: list[Setting]) -> list[Setting]:
        """The first settings of `todo` whose estimated measuring time (the model's latency
        x `runs_per_setting`, plus `overhead_s` per measuring child: one per member,
        variant, device and share) fits in the budget left, less the time to plan again."""
        if self.budget_s is None:
            return todo
        left = self.budget_s - (self.clock() - self._start) - self.plan_s  # and plan again
        models = self.models()
        out: list[Setting] = []
        children: set[tuple[str, str | None, str, float]] = set()
        for s in todo:
            model = models.get(s[:3])
            cost = (0.0 if s[:4] in children else self.overhead_s) + (
                self.runs_per_setting * model.latency(s[4], s[3]) if model is not None else 0.0)
            if cost > left:
                break
            left -= cost
            children.add(s[:4])
            out.append(s)
        return out

    def over_budget(self) -> bool:
        return self.budget_s is not None and self.clock() - self._start >= self.budget_s

    # -- the grid and the model -----------------------------------------------------------

    def _keys(self) -> list[tuple[str, str | None, str]]:
        return [(m, v, d) for m, variants in self.grid.variants.items() for v in variants
                for d in self.grid.shares]

    def screen_settings(self) -> list[Setting]:
        b = min(self.grid.batch_sizes)
        return [(m, v, d, max(self.grid.shares[d]), b) for m, v, d in self._keys()]

    def seed_settings(self) -> list[Setting]:
        """Two more points for each variant within `screen_ratio` of its member's fastest."""
        small = min(self.grid.batch_sizes)
        batch = self._seed_batch()
        out: list[Setting] = []
        for m, variants in self.grid.variants.items():
            for d, shares in self.grid.shares.items():
                top = max(shares)
                screened = {v: self.measured[(m, v, d, top, small)]["latency_s"]
                            for v in variants if (m, v, d, top, small) in self.measured}
                if not screened:
                    continue
                fastest = min(screened.values())
                for v, lat in screened.items():
                    if lat <= fastest * self.screen_ratio:
                        out.append((m, v, d, top, batch))
                        out.append((m, v, d, min(shares), batch))
        return out

    def _seed_batch(self) -> int:
        small = min(self.grid.batch_sizes)
        larger = [b for b in self.grid.batch_sizes if b > small]
        return max([b for b in larger if b <= self.seed_batch] or larger[:1] or [small])

    def models(self) -> dict[tuple[str, str | None, str], LatencyModel]:
        """A fitted model per (member, variant, device) with measurements. A variant
        measured at one setting only borrows the batch and share shape of a better-known
        variant of the same member on the same device (variants batch alike), scaled to
        its own point."""
        points: dict[tuple[str, str | None, str], list[Measured]] = {}
        for (m, v, d, s, b), e in self.measured.items():
            points.setdefault((m, v, d), []).append(
                Measured(b, s, float(e["latency_s"]), int(e["memory_bytes"])))
        models = {key: fit(p, self.grid.kinds.get(key[2], "cpu")) for key, p in points.items()}
        for key, pts in points.items():
            if len(pts) > 1:
                continue
            donors = [k for k in points if k[0] == key[0] and k[2] == key[2]
                      and len(points[k]) > 1]
            if donors:
                donor = models[max(donors, key=lambda k: len(points[k]))]
                models[key] = scaled_like(donor, pts[0], models[key])
        return models

    def entries(self) -> list[dict[str, Any]]:
        """Measured entries, then modelled ones for every other setting of the grid."""
        out = [dict(e) for e in self.measured.values()]
        for (m, v, d), model in self.models().items():
            for s in self.grid.shares[d]:
                for b in self.grid.batch_sizes:
                    if (m, v, d, s, b) in self.measured:
                        continue
                    out.append({"member": m, "variant": v, "device": d, "batch_size": b,
                                "share": _number(s), "latency_s": model.latency(b, s),
                                "memory_bytes": model.memory(b), "modelled": True})
        return sorted(out, key=lambda e: (e["member"], e.get("variant") or "", e["device"],
                                          e["share"], e["batch_size"]))

    def profile(self) -> Profile:
        return profile_from_dict({**self.skeleton, "entries": self.entries()})

    def planning_entries(self, entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """What the planner sees (module docstring): on CPU devices, a setting on k > 1
        cores is at most k / k0 times faster than the same batch on the fewest cores k0,
        and its latency carries `multicore_penalty`."""
        fewest = {d: min(shares) for d, shares in self.grid.shares.items()}
        base = {(e["member"], e.get("variant"), e["device"], int(e["batch_size"])):
                float(e["latency_s"]) for e in entries
                if float(e["share"]) == fewest.get(e["device"])}
        out = []
        for e in entries:
            share = float(e["share"])
            if self.grid.kinds.get(e["device"], "cpu") != "cpu" or share <= 1.0:
                out.append(dict(e))
                continue
            latency = float(e["latency_s"])
            low = base.get((e["member"], e.get("variant"), e["device"], int(e["batch_size"])))
            if low is not None and share > fewest[e["device"]]:
                latency = max(latency, low * fewest[e["device"]] / share)
            out.append({**e, "latency_s": latency * (1.0 + self.multicore_penalty)})
        return out

    def planning_profile(self) -> Profile:
        """The profile in the planner's view (`planning_entries`)."""
        return profile_from_dict({**self.skeleton,
                                  "entries": self.planning_entries(self.entries())})

    def plan(self) -> Plan:
        return self.planner(self.planning_profile())

    # -- refinement -----------------------------------------------------------------------

    def competitors(self, plan: Plan, entries: Sequence[Mapping[str, Any]]) -> list[Setting]:
        """Modelled settings close to what the plan chose (see the module docstring)."""
        modelled = [e for e in entries if e.get("modelled")
                    and self.model_error.get((e["member"], e.get("variant"), e["device"]),
                                             1.0) > self.tolerance]
        out: list[tuple[float, Setting]] = []
        view = {_key(e): e for e in entries}
        for inst in plan.instances:
            chosen = view.get(instance_setting(inst)) \
                if instance_setting(inst) in self.measured else None
            if chosen is None:
                continue
            for e in modelled:
                if e["member"] != inst.member or e["device"] != inst.device:
                    continue
                closeness = self._closeness(chosen, e)
                if closeness >= -self.margin:
                    out.append((-closeness, (e["member"], e.get("variant"), e["device"],
                                             float(e["share"]), int(e["batch_size"]))))
        out.sort()
        one_each: dict[tuple[str, str | None, str], Setting] = {}
        for _, setting in out:  # the closest per (member, variant, device)
            one_each.setdefault(setting[:3], setting)
        return list(one_each.values())[: self.competitors_per_round]

    def close_calls(self, plan: Plan, entries: Sequence[Mapping[str, Any]]) -> list[Setting]:
        """Planned settings and their closest measured alternative (same member and device,
        within `close_margin` either way) while either has fewer than `close_repeats`
        measurements, the closest calls first."""
        view = {_key(e): e for e in entries}
        calls: list[tuple[float, Setting, Setting]] = []
        for inst in plan.instances:
            mine = instance_setting(inst)
            if mine not in self.measured or mine not in view:
                continue
            rivals = [(self._closeness(view[mine], view[k]), k) for k in self.measured
                      if k != mine and k[0] == mine[0] and k[2] == mine[2] and k in view]
            rivals = [(abs(c), k) for c, k in rivals if abs(c) <= self.close_margin]
            if rivals:
                closeness, rival = min(rivals, key=lambda r: (r[0], _sort_key(r[1])))
                calls.append((closeness, mine, rival))
        calls.sort(key=lambda c: (c[0], _sort_key(c[1])))
        out = [s for _, mine, rival in calls for s in (mine, rival)
               if len(self.samples.get(s, ())) < self.close_repeats]
        return list(dict.fromkeys(out))[: self.competitors_per_round]

    def _closeness(self, chosen: Mapping[str, Any], other: Mapping[str, Any]) -> float:
        """Relative advantage of `other` over `chosen` (>= -margin: worth measuring)."""
        if self.objective == "latency":
            return float(chosen["latency_s"]) / float(other["latency_s"]) - 1.0
        def rate(e: Mapping[str, Any]) -> float:
            return float(e["batch_size"]) / float(e["latency_s"]) / float(e["share"])
        return rate(other) / rate(chosen) - 1.0

    def run(self) -> AdaptiveResult:
        """Screen, seed, then refine (see the module docstring)."""
        self._start = self.clock()
        if all(len(vs) == 1 for vs in self.grid.variants.values()):
            # one variant each: every one is seeded, so screen and seed at once, at the
            # four corners of the batch x share grid (the points at one share share a
            # measuring child: the extra corner costs one batch, no child start)
            self.measure([*self.screen_settings(), *self._corners()],
                         "screening and seeding")
        else:
            self.measure(self.screen_settings(), "screening variants")
        self.measure(self.seed_settings(), "seeding the latency model")
        return self.refine()

    def _corners(self) -> list[Setting]:
        """The seed settings of every variant, and the smallest batch at the smallest share."""
        small, seed = min(self.grid.batch_sizes), self._seed_batch()
        out: list[Setting] = []
        for m, v, d in self._keys():
            top, low = max(self.grid.shares[d]), min(self.grid.shares[d])
            out += [(m, v, d, top, seed), (m, v, d, low, seed), (m, v, d, low, small)]
        return out

    def add_variants(self, variants: Mapping[str, Sequence[str | None]]) -> list[Setting]:
        """Add variants to the grid (admitted later, e.g. in the background) and screen and
        seed them; returns the settings measured."""
        merged = {m: tuple(dict.fromkeys([*vs, *variants.get(m, ())]))
                  for m, vs in self.grid.variants.items()}
        self.grid = Grid(self.grid.batch_sizes, self.grid.shares, merged, self.grid.kinds)
        new = {(m, v) for m, vs in variants.items() for v in vs}
        screen = [s for s in self.screen_settings() if (s[0], s[1]) in new]
        done = self.measure(screen, "screening added variants")
        seed = [s for s in self.seed_settings() if (s[0], s[1]) in new]
        return done + self.measure(seed, "seeding added variants")

    def refine(self, max_rounds: int | None = None) -> AdaptiveResult:
        """Plan, measure what the plan relies on, repeat (step 3 of the module docstring)."""
        rounds: list[Round] = []
        previous: set[Setting] | None = None
        plan: Plan | None = None
        converged = stale = False
        for _ in range(self.max_rounds if max_rounds is None else max_rounds):
            entries = self.planning_entries(self.entries())
            profile = profile_from_dict({**self.skeleton, "entries": entries})
            started = self.clock()
            plan = self.planner(profile)
            self.plan_s = self.clock() - started
            stale = False
            used = {instance_setting(i) for i in plan.instances}
            changed = previous is not None and used != previous
            if self.on_plan is not None and (previous is None or changed):
                self.on_plan(plan)
            previous = used
            info = Round(plan.prediction.throughput, plan.prediction.latency_s, changed, [], "")
            rounds.append(info)
            todo = [s for s in sorted(used, key=_sort_key)
                    if s not in self.measured and s not in self.failed]
            info.reason = "plan uses modelled settings"
            if not todo:
                todo = self.competitors(plan, entries)
                info.reason = "close competitors"
            again = False
            if not todo:
                todo = self.close_calls(plan, entries)
                info.reason, again = "close calls", True
            if not todo:
                info.reason = "converged"
                converged = True
                break
            todo = self._affordable(todo)
            if self.over_budget() or not todo:
                info.reason = "budget spent"
                break
            info.measured = self.measure(todo, f"round {len(rounds)}: {info.reason}", again)
            stale = bool(info.measured)
            if not info.measured:
                info.reason += " (measurements failed)"
        final = self.profile()
        if plan is None or stale:  # the last plan is on what is known, or plan again
            plan = self.plan()
        n_measured = len(self.measured)
        return AdaptiveResult(final, plan, rounds, n_measured,
                              len(final.entries) - n_measured, converged,
                              self.clock() - self._start)


def _key(e: Mapping[str, Any]) -> Setting:
    return (e["member"], e.get("variant"), e["device"], float(e["share"]), int(e["batch_size"]))


def _sort_key(s: Setting) -> tuple[str, str, str, float, int]:
    return (s[0], s[1] or "", s[2], s[3], s[4])


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)
