"""The exact planner's mixed-integer program, solved by HiGHS (the optimality reference).

Decision: n_k, the number of instances of each option k (integer, 0..N_k). Constraints:
memory and instance count per device, at least one instance per member, shares summing to
at most C_d when time-sharing is off, latency bound, minimum throughput.

Throughput, exactly as in `enserve.plan.cost`: continuous y_k (busy instances of option k,
0 <= y_k <= n_k), sum_k c_k y_k >= X for every member, sum_k s_k y_k <= C_d for every device
that could be oversubscribed (elsewhere y_k = n_k is always possible). Maximise X.

Completion time: T >= l_k y_k (y_k = 1 if option k is used, n_k <= N_k y_k) and
C_d T >= sum_k l_k s_k n_k over device d, matching T_d = max(max l_k, W_d / C_d).

`enserve.plan.exact` polishes the solution; `enserve.plan.packing` uses `feasible_counts`
when its heuristic leaves a member out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import highspy
import numpy as np

from enserve.plan.highs import quiet_highs
from enserve.plan.problem import EPS, IntArray, Problem

TIME_LIMIT_S = 60.0
MIP_REL_GAP = 1e-5  # optimality is proven to within this relative gap
_GIB = float(2**30)  # memory rows in GiB keep the coefficients well scaled
_MEMORY_MARGIN_GIB = 2e-7  # ~200 bytes: covers the solver's feasibility tolerance


@dataclass
class _Model:
    """Columns and rows collected before one `passModel` call."""

    lower: list[float] = field(default_factory=list)
    upper: list[float] = field(default_factory=list)
    cost: list[float] = field(default_factory=list)
    integer: list[bool] = field(default_factory=list)
    row_lower: list[float] = field(default_factory=list)
    row_upper: list[float] = field(default_factory=list)
    starts: list[int] = field(default_factory=lambda: [0])
    index: list[int] = field(default_factory=list)
    value: list[float] = field(default_factory=list)

    def var(self, lower: float, upper: float, cost: float = 0.0, integer: bool = False) -> int:
        self.lower.append(lower)
        self.upper.append(upper)
        self.cost.append(cost)
        self.integer.append(integer)
        return len(self.lower) - 1

    def row(self, terms: list[tuple[int, float]], lower: float = -highspy.kHighsInf,
            upper: float = highspy.kHighsInf) -> None:
        for col, coef in terms:
            if coef != 0.0:
                self.index.append(col)
                self.value.append(coef)
        self.starts.append(len(self.index))
        self.row_lower.append(lower)
        self.row_upper.append(upper)

    def solve(self, maximize: bool, time_limit: float,
              start: dict[int, float] | None = None) -> tuple[str, np.ndarray | None, float]:
        lp = highspy.HighsLp()
        lp.num_col_ = len(self.lower)
        lp.num_row_ = len(self.row_lower)
        lp.col_cost_ = np.array(self.cost)
        lp.col_lower_ = np.array(self.lower)
        lp.col_upper_ = np.array(self.upper)
        lp.row_lower_ = np.array(self.row_lower)
        lp.row_upper_ = np.array(self.row_upper)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
        lp.a_matrix_.num_col_ = lp.num_col_
        lp.a_matrix_.num_row_ = lp.num_row_
        lp.a_matrix_.start_ = np.array(self.starts, dtype=np.int32)
        lp.a_matrix_.index_ = np.array(self.index, dtype=np.int32)
        lp.a_matrix_.value_ = np.array(self.value)
        lp.integrality_ = [highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous
                           for i in self.integer]
        lp.sense_ = highspy.ObjSense.kMaximize if maximize else highspy.ObjSense.kMinimize
        h = quiet_highs()
        h.setOptionValue("time_limit", float(time_limit))
        h.setOptionValue("mip_rel_gap", MIP_REL_GAP)
        h.setOptionValue("threads", 1)
        h.passModel(lp)
        if start:
            cols = np.array(list(start), dtype=np.int32)
            h.setSolution(len(cols), cols, np.array(list(start.values()), dtype=np.float64))
        h.run()
        status = h.modelStatusToString(h.getModelStatus())
        info = h.getInfo()
        if info.primal_solution_status != highspy.SolutionStatus.kSolutionStatusFeasible:
            return status, None, float("nan")
        return status, np.array(h.getSolution().col_value), float(info.mip_gap)


@dataclass(frozen=True)
class ExactResult:
    counts: IntArray | None
    status: str  # HiGHS model status, e.g. "Optimal", "Infeasible", "Time limit reached"
    mip_gap: float  # relative gap between solution and bound (0 when proven optimal)

    @property
    def optimal(self) -> bool:
        return self.status == "Optimal"


def _build(problem: Problem, objective: str | None) -> tuple[_Model, list[int]]:
    """The program; `objective` None = feasibility only (memory/count/shares)."""
    model = _Model()
    c = problem.constraints
    opts = range(len(problem.options))
    needs_latency = objective == "latency"
    needs_throughput = objective == "throughput" or (
        objective == "latency" and c.min_throughput is not None)
    n = [model.var(0, float(problem.max_count[k]), integer=True) for k in opts]

    for d in range(problem.n_devices):
        on = problem.options_on(d)
        model.row([(n[k], problem.mem[k] / _GIB) for k in on],
                  upper=float(problem.usable_mem[d]) / _GIB - _MEMORY_MARGIN_GIB)
        model.row([(n[k], 1.0) for k in on], upper=float(c.max_instances_per_device))
        if not c.time_sharing:
            model.row([(n[k], problem.share[k]) for k in on], upper=float(problem.units[d]))
        if c.max_latency_s is not None:
            budget = c.max_latency_s - problem.combine_s
            model.row([(n[k], problem.work[k]) for k in on], upper=float(problem.units[d]) * budget)
    for i in range(problem.n_members):
        model.row([(n[k], 1.0) for k in problem.options_of(i)], lower=1.0)

    if needs_latency:
        horizon = float(problem.lat.max() + problem.work.sum() * problem.max_count.max())
        t = model.var(0.0, horizon, cost=1.0)
        for k in opts:
            y = model.var(0.0, 1.0, integer=True)
            model.row([(n[k], 1.0), (y, -float(problem.max_count[k]))], upper=0.0)
            model.row([(t, 1.0), (y, -float(problem.lat[k]))], lower=0.0)
        for d in range(problem.n_devices):
            model.row([(t, float(problem.units[d]))]
                      + [(n[k], -float(problem.work[k])) for k in problem.options_on(d)], lower=0.0)
    if needs_throughput:
        _add_throughput(model, problem, n, maximize=objective == "throughput")
    return model, n


def _add_throughput(model: _Model, problem: Problem, n: list[int], maximize: bool) -> None:
    c = problem.constraints
    x_upper = float(problem.cap.max() * problem.max_count.max() * problem.n_devices)
    x = model.var(c.min_throughput or 0.0, x_upper, cost=1.0 if maximize else 0.0)
    max_share = np.bincount(problem.opt_device, weights=problem.max_count * problem.share,
                            minlength=problem.n_devices)
    crowded = c.time_sharing & (max_share > problem.units * (1 + EPS))
    busy: dict[int, int] = {}
    for k in range(len(problem.options)):
        if crowded[problem.opt_device[k]]:
            busy[k] = model.var(0.0, float(problem.max_count[k]))
            model.row([(busy[k], 1.0), (n[k], -1.0)], upper=0.0)
    for i in range(problem.n_members):
        model.row([(busy.get(int(k), n[k]), float(problem.cap[k])) for k in problem.options_of(i)]
                  + [(x, -1.0)], lower=0.0)
    for d in np.flatnonzero(crowded):
        model.row([(busy[int(k)], float(problem.share[k])) for k in problem.options_on(int(d))],
                  upper=float(problem.units[d]))


def solve_exact(problem: Problem, time_limit: float = TIME_LIMIT_S,
                start: IntArray | None = None) -> ExactResult:
    """Solve the program for the problem's objective; counts None if no feasible plan.

    `start` (instance counts of a known plan, e.g. the greedy's) is handed to HiGHS as a
    first incumbent: it only speeds up the search, the optimum is the same."""
    model, n = _build(problem, problem.objective)
    hint = None if start is None else {n[k]: float(start[k]) for k in range(len(n))}
    status, values, gap = model.solve(problem.objective == "throughput", time_limit, hint)
    if values is None:
        return ExactResult(None, status, gap)
    counts = np.rint(values[n]).astype(np.int64)
    return ExactResult(counts, status, gap)


def feasible_counts(problem: Problem, time_limit: float = 10.0) -> IntArray | None:
    """Any placement meeting memory, count and share limits (for the packing fallback)."""
    model, n = _build(problem, None)
    _, values, _ = model.solve(False, time_limit)
    return None if values is None else np.rint(values[n]).astype(np.int64)
