"""Cost model: what a plan is predicted to sustain and how long a batch takes.

Notation: instance k runs member m(k) on device d(k) with batch size b_k, share s_k (in the
device's compute units), profiled latency l_k and memory w_k. Its capacity is c_k = b_k / l_k
samples/s while it has its share to itself. Device d has C_d compute units.

Throughput (samples/s). Every request needs every member, so the ensemble sustains X only if
every member processes X samples/s. A device is a pool of C_d compute units that its
instances time-share without losing work (work-conserving): while busy, instance k uses s_k
units and processes c_k samples/s. Let y_k (0 <= y_k <= 1 per instance) be how busy each
instance is on average. X is the largest value with

    sum over member i's instances of c_k y_k >= X      for every member i
    sum over device d's instances of s_k y_k <= C_d    for every device d

a small linear program (solved with HiGHS). The y_k are the load the runtime should send to
each instance; a dispatcher where idle instances pull the next batch of their member tends
toward them. Reported as `CostReport.instance_load`.

Time-sharing rule. Instances whose shares on a device sum to at most C_d are partitions and
never slow each other: then y_k = 1 and X = min_i Cap_i, Cap_i = sum of c_k over member i's
instances. When the shares sum above C_d, the instances time-share the device and only C_d
units of work get done per second in total: if all of them are busy at once each slows by
the oversubscription factor sum(s_k) / C_d (processor sharing); the LP above is that rule
applied to average busy time, so an instance of a member that is not the bottleneck may idle
and leave its units to others.

Completion time (seconds) of one batch, counted when every instance in the plan is working on
a batch at the same moment (full load). On device d, the batches together need
W_d = sum_k l_k s_k unit-seconds and none can finish before its own l_k, so

    T_d = max( max_k l_k ,  W_d / C_d )          latency_s = max_d T_d + combine_s.

With partitions (sum of shares <= C_d) this is just the slowest instance; when members time-
share a device at full share it is the sum of their latencies (running them one after the
other). Queueing and the time to fill a batch are not modelled.

Memory per device is the sum of w_k; compute used per device is sum_k s_k y_k (never above C_d).

`proportional_terms` gives a closed-form lower bound on X (load routed to a member's
instances in proportion to their capacities); the local search ranks moves with it.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import highspy
import numpy as np

from enserve.devices import Device
from enserve.errors import PlanError
from enserve.formats.plan import Instance, Plan, Predicted
from enserve.formats.profile import Profile
from enserve.plan.highs import quiet_highs
from enserve.plan.problem import (
    FloatArray,
    IntArray,
    Problem,
    build_problem,
    counts_from_instances,
    group_sum,
)

OVERSUBSCRIBED_TOL = 1e-9


@dataclass(frozen=True)
class CostReport:
    """Predictions for one plan, overall and per member / device."""

    throughput: float
    latency_s: float
    bottleneck: str  # the member, or device, that limits the throughput
    member_capacity: dict[str, float]  # Cap_i: samples/s if its instances had their shares
    device_memory_bytes: dict[str, int]
    device_share: dict[str, float]  # sum of instance shares (time-shared if above units)
    device_compute_used: dict[str, float]  # average units busy at the predicted throughput
    device_completion_s: dict[str, float]  # T_d
    time_shared: tuple[str, ...]
    # (member, variant, device, batch_size, share) -> how busy each such instance is, 0..1
    instance_load: dict[tuple[str, str | None, str, int, float], float]

    def predicted(self) -> Predicted:
        return Predicted(self.throughput, self.latency_s)


def member_capacities(problem: Problem, counts: IntArray) -> FloatArray:
    return group_sum(problem.opt_member, counts * problem.cap, problem.n_members)


def share_matrix(problem: Problem, counts: IntArray) -> FloatArray:
    """S[i, d] = sum of shares of member i's instances on device d."""
    flat = problem.opt_member * problem.n_devices + problem.opt_device
    sums = group_sum(flat, counts * problem.share, problem.n_members * problem.n_devices)
    return sums.reshape(problem.n_members, problem.n_devices)


def device_shares(problem: Problem, counts: IntArray) -> FloatArray:
    return group_sum(problem.opt_device, counts * problem.share, problem.n_devices)


def oversubscribed(problem: Problem, counts: IntArray) -> bool:
    return bool((device_shares(problem, counts) > problem.units * (1 + OVERSUBSCRIBED_TOL)).any())


def device_demand(share: FloatArray, capacity: FloatArray) -> FloatArray:
    """D_d = sum_i S[i, d] / Cap_i (units per sample/s under proportional routing)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(share > 0, share / capacity[..., :, None], 0.0)
    return np.asarray(ratio.sum(axis=-2))


def proportional_terms(problem: Problem, counts: IntArray) -> tuple[FloatArray, FloatArray]:
    """(Cap_i per member, C_d / D_d per device). The smallest of all is the throughput when
    load is routed to a member's instances in proportion to their capacities: a lower bound
    on `throughput`, equal to it when no device is oversubscribed."""
    capacity = member_capacities(problem, counts)
    demand = device_demand(share_matrix(problem, counts), capacity)
    with np.errstate(divide="ignore"):
        device_bound = np.where(demand > 0, problem.units / demand, np.inf)
    return capacity, device_bound


class _ThroughputLP:
    """The throughput LP of one problem (a column per option), kept warm between solves."""

    def __init__(self, problem: Problem) -> None:
        k, m, d = len(problem.options), problem.n_members, problem.n_devices
        starts = np.arange(0, 2 * k + 1, 2, dtype=np.int32)
        index = np.empty(2 * k, dtype=np.int32)
        index[0::2] = problem.opt_member
        index[1::2] = m + problem.opt_device
        value = np.empty(2 * k)
        value[0::2] = problem.cap
        value[1::2] = problem.share
        lp = highspy.HighsLp()
        lp.num_col_ = k + 1
        lp.num_row_ = m + d
        lp.col_cost_ = np.r_[np.zeros(k), 1.0]
        lp.col_lower_ = np.zeros(k + 1)
        lp.col_upper_ = np.r_[np.zeros(k), highspy.kHighsInf]
        lp.row_lower_ = np.r_[np.zeros(m), np.full(d, -highspy.kHighsInf)]
        lp.row_upper_ = np.r_[np.full(m, highspy.kHighsInf), problem.units]
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.num_col_ = k + 1
        lp.a_matrix_.num_row_ = m + d
        lp.a_matrix_.start_ = np.r_[starts, 2 * k + m].astype(np.int32)
        lp.a_matrix_.index_ = np.r_[index, np.arange(m)].astype(np.int32)
        lp.a_matrix_.value_ = np.r_[value, -np.ones(m)]
        lp.sense_ = highspy.ObjSense.kMaximize
        self._highs = quiet_highs()
        self._highs.setOptionValue("threads", 1)
        self._highs.passModel(lp)
        self._upper = np.zeros(k)  # the columns' upper bounds as last set

    def solve(self, counts: IntArray) -> tuple[float, FloatArray]:
        h = self._highs
        upper = counts.astype(np.float64)
        changed = np.flatnonzero(upper != self._upper).astype(np.int32)
        if len(changed):  # only the bounds that differ from the last solve's
            h.changeColsBounds(len(changed), changed, np.zeros(len(changed)), upper[changed])
            self._upper = upper
        h.run()
        if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            raise RuntimeError(f"throughput LP: {h.modelStatusToString(h.getModelStatus())}")
        values = np.array(h.getSolution().col_value)
        return float(values[-1]), np.clip(values[:-1], 0.0, counts)


_LPS: weakref.WeakKeyDictionary[Problem, _ThroughputLP] = weakref.WeakKeyDictionary()


def throughput_and_load(problem: Problem, counts: IntArray) -> tuple[float, FloatArray]:
    """(X, y): ensemble throughput and busy instances per option (y_k <= n_k)."""
    capacity = member_capacities(problem, counts)
    if capacity.min() <= 0:
        return 0.0, np.zeros(len(counts))
    if not oversubscribed(problem, counts):
        return float(capacity.min()), counts.astype(np.float64)
    lp = _LPS.get(problem)
    if lp is None:
        lp = _LPS[problem] = _ThroughputLP(problem)
    return lp.solve(counts)


def throughput(problem: Problem, counts: IntArray) -> float:
    return throughput_and_load(problem, counts)[0]


def completion_times(problem: Problem, counts: IntArray) -> FloatArray:
    """T_d per device (0 for an empty device)."""
    used = counts > 0
    work = group_sum(problem.opt_device, counts * problem.work, problem.n_devices)
    slowest = np.zeros(problem.n_devices)
    np.maximum.at(slowest, problem.opt_device[used], problem.lat[used])
    return np.asarray(np.maximum(slowest, work / problem.units))


def latency(problem: Problem, counts: IntArray) -> float:
    return float(completion_times(problem, counts).max() + problem.combine_s)


def evaluate_counts(problem: Problem, counts: IntArray) -> CostReport:
    x, load = throughput_and_load(problem, counts)
    capacity = member_capacities(problem, counts)
    used = group_sum(problem.opt_device, load * problem.share, problem.n_devices)
    shares = device_shares(problem, counts)
    if x >= capacity.min() * (1 - 1e-7):
        bottleneck = problem.members[int(np.argmin(capacity))]
    else:
        bottleneck = problem.devices[int(np.argmax(used / problem.units))].id
    times = completion_times(problem, counts)
    memory = group_sum(problem.opt_device, counts * problem.mem, problem.n_devices)
    ids = [d.id for d in problem.devices]
    loads = {}
    for k in np.flatnonzero(counts):
        o = problem.options[k]
        loads[(o.member, o.variant, o.device, o.batch_size, o.share)] = float(load[k] / counts[k])
    return CostReport(
        throughput=x,
        latency_s=float(times.max() + problem.combine_s),
        bottleneck=bottleneck,
        member_capacity={m: float(c) for m, c in zip(problem.members, capacity, strict=True)},
        device_memory_bytes={i: round(float(v)) for i, v in zip(ids, memory, strict=True)},
        device_share={i: float(v) for i, v in zip(ids, shares, strict=True)},
        device_compute_used={i: float(v) for i, v in zip(ids, used, strict=True)},
        device_completion_s={i: float(v) for i, v in zip(ids, times, strict=True)},
        time_shared=tuple(i for i, s, d in zip(ids, shares, problem.devices, strict=True)
                          if s > d.compute_units * (1 + OVERSUBSCRIBED_TOL)),
        instance_load=loads,
    )


def require_feasible(problem: Problem, counts: IntArray) -> None:
    """PlanError if the plan found still breaks the latency bound or throughput floor."""
    report = evaluate_counts(problem, counts)
    c = problem.constraints
    if c.max_latency_s is not None and report.latency_s > c.max_latency_s * (1 + 1e-9):
        raise PlanError(f"no plan found meeting the latency bound {c.max_latency_s:g} s: the best "
                        f"found completes a batch in {report.latency_s:.4g} s")
    if c.min_throughput is not None and report.throughput < c.min_throughput * (1 - 1e-9):
        raise PlanError(f"no plan found sustaining {c.min_throughput:g} samples/s: the best found "
                        f"sustains {report.throughput:.4g}")


def evaluate(
    profile: Profile,
    plan: Plan | Sequence[Instance],
    devices: Sequence[Device] | None = None,
) -> CostReport:
    """Predict a plan's throughput, completion time and per-device use from a profile.

    Devices default to the plan's own (or the profile's, for a bare instance list). Raises
    ProfileError if an instance has no matching profile entry, PlanError if a member of the
    profile has no instance.
    """
    if isinstance(plan, Plan):
        instances: Sequence[Instance] = plan.instances
        devices = devices if devices is not None else plan.devices
    else:
        instances = plan
    problem = build_problem(profile, devices, prune=False, require_all_members=False,
                            filter_options=False)
    counts = counts_from_instances(problem, instances)
    missing = [m for m, c in zip(problem.members, member_capacities(problem, counts), strict=True)
               if c <= 0]
    if missing:
        raise PlanError(f"the plan has no instance of member(s) {', '.join(missing)}")
    return evaluate_counts(problem, counts)
