"""Fit the analytical model's CPU profile to measured group latencies.

``collect_samples`` draws a seeded set of legal groups (singletons and small connected
convex groups) and times each with a real backend (``get_backend("tvm")``);
``fit_cpu_profile`` then fits peak FLOP/s, bandwidth, the two overheads, one time scale per
schedule (and, asked, one per op class under each schedule) on log latency, so that small
and large kernels weigh alike: the posterior mode under a wide Gaussian prior around the base profile
(``PRIOR_LOG_STD``), with each parameter's standard error in the report.

The fit is exact in structure: with the base profile's terms ``c[k]`` (compute µs of the
group's ops of class k), ``m[k]`` (their memory µs; wave factor folded in) the analytical
model predicts

    t = max(sum_k c[k] / f[s, k] / alpha, sum_k m[k] / f[s, k] / beta) / e[s]
        + launch_us + parallel * parallel_launch_us

for a profile whose peak is ``alpha`` times and bandwidth ``beta`` times the base's, with
schedule ``s``'s efficiency ``e[s]`` and its class factors ``f[s, k]`` (1 for "other"), so
Levenberg-Marquardt on the log-parameters recovers a profile the backend then reproduces
(exactly without the prior, ``prior_log_std=None``, from samples that profile generated).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Sequence

import numpy as np

from fusiongym.graphs import ComputeGraph

from .analytical import AnalyticalBackend, schedule_models
from .backend import LatencyBackend
from .devices import OP_CLASSES, DeviceProfile, get_profile

LM_MAX_ITERATIONS = 300
LM_TOLERANCE = 1e-14
# Starting points of alpha and beta (multiples of the base profile): the roofline's max()
# makes the loss piecewise, so one start can settle with every group on the wrong side.
START_SCALES = (0.25, 1.0, 4.0)
KENDALL_CHUNK_ROWS = 512
# Log-parameters stay within e^±30 of the base profile: a wild trial step then only fails.
LOG_PARAMETER_BOUND = 30.0
# The prior on each log-parameter around the base profile: a factor of 10 is one standard
# deviation. Why: with no prior, a parameter that no sample pins down drifts wherever the
# solver stops. On 40 draws of 105 EPYC groups (leaderboard/costmodel/calibration-fit) the
# fitted bandwidth spanned x6e11 (up to 9e13 B/s) and the launch overhead x7e12; with this
# prior x19 and x55, at the same held-out Kendall tau (0.663) and rms log error (1.03).
PRIOR_LOG_STD = math.log(10.0)
# An eigenvalue of the data's curvature below this share of the largest counts as zero: the
# samples say nothing along its direction (an infinite standard error, without a prior).
SINGULAR_SHARE = 1e-12


@dataclass(frozen=True)
class Sample:
    """One measured group: the kernel ``nodes`` of ``graph`` with ``schedule`` took ``measured_us``."""

    graph: ComputeGraph
    nodes: tuple[int, ...]
    schedule: str
    measured_us: float


@dataclass(frozen=True)
class CalibrationReport:
    """How well the base and the fitted profile rank and predict the measurements."""

    num_samples: int
    kendall_tau_before: float
    kendall_tau_after: float
    mape_before: float
    mape_after: float
    rms_log_error_before: float
    rms_log_error_after: float
    parameters: dict
    log_std_error: dict   # parameter -> standard error of its natural log (Laplace approximation)
    prior_log_std: float | None   # the prior's std of ln around the base profile; None: least squares

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# ------------------------------------------------------------------------- sampling
def collect_samples(graphs: Sequence[ComputeGraph], backend: LatencyBackend, max_groups: int, seed: int,
                    max_group_nodes: int = 4, singleton_share: float = 0.5,
                    on_sample: Callable[[Sample], None] | None = None) -> list[Sample]:
    """Measure up to ``max_groups`` distinct (group, schedule) pairs drawn with ``seed``.

    A draw picks a graph, then either a single node (``singleton_share`` of draws) or a
    connected convex group grown from a random node to 2..``max_group_nodes`` nodes that
    the backend accepts (``group_constraint``), and a schedule from the backend's menu.
    Stops early when draws keep repeating (small graphs have few distinct groups).
    ``on_sample`` is called with each sample once measured (a progress bar).
    """
    if not graphs:
        raise ValueError("collect_samples needs at least one graph")
    rng = np.random.default_rng(seed)
    adjacency = [_Adjacency.of(graph) for graph in graphs]
    seen: set[tuple[str, tuple[int, ...], str]] = set()
    samples: list[Sample] = []
    for _ in range(20 * max_groups):
        if len(samples) >= max_groups:
            break
        index = int(rng.integers(len(graphs)))
        graph = graphs[index]
        if rng.random() < singleton_share:
            nodes = (int(rng.integers(graph.num_nodes)),)
        else:
            size = int(rng.integers(2, max_group_nodes + 1))
            nodes = _grow_group(adjacency[index], graph, backend, rng, size)
        schedule = backend.schedules[int(rng.integers(len(backend.schedules)))]
        key = (graph.hash, nodes, schedule)
        if key in seen:
            continue
        seen.add(key)
        samples.append(Sample(graph, nodes, schedule, backend.group_latency(graph, list(nodes), schedule).us))
        if on_sample is not None:
            on_sample(samples[-1])
    return samples


@dataclass(frozen=True)
class _Adjacency:
    predecessors: list[list[int]]   # [N] producers of each node
    neighbors: list[list[int]]      # [N] producers and consumers

    @staticmethod
    def of(graph: ComputeGraph) -> "_Adjacency":
        predecessors: list[list[int]] = [[] for _ in range(graph.num_nodes)]
        neighbors: list[list[int]] = [[] for _ in range(graph.num_nodes)]
        for edge in graph.edges:
            predecessors[edge.dst].append(edge.src)
            neighbors[edge.src].append(edge.dst)
            neighbors[edge.dst].append(edge.src)
        return _Adjacency(predecessors, neighbors)


def _grow_group(adjacency: _Adjacency, graph: ComputeGraph, backend: LatencyBackend,
                rng: np.random.Generator, size: int) -> tuple[int, ...]:
    """Grow a convex, backend-legal group from a random node by adding random neighbors."""
    group = {int(rng.integers(graph.num_nodes))}
    for _ in range(4 * size):
        if len(group) >= size:
            break
        frontier = sorted({n for member in group for n in adjacency.neighbors[member]} - group)
        if not frontier:
            break
        candidate = group | {frontier[int(rng.integers(len(frontier)))]}
        if _is_convex(adjacency, candidate) and backend.group_constraint(graph, sorted(candidate)) is None:
            group = candidate
    return tuple(sorted(group))


def _is_convex(adjacency: _Adjacency, group: set[int]) -> bool:
    """No path leaves ``group`` and re-enters it. Nodes are topologically numbered, so such
    a path only runs through ids between the group's smallest and largest."""
    reached_outside: set[int] = set()
    for node in range(min(group) + 1, max(group) + 1):
        from_group = any(p in group or p in reached_outside for p in adjacency.predecessors[node])
        if node in group:
            if any(p in reached_outside for p in adjacency.predecessors[node]):
                return False
        elif from_group:
            reached_outside.add(node)
    return True


# -------------------------------------------------------------------------- fitting
@dataclass(frozen=True)
class _Design:
    """The samples as arrays under the base profile (n samples, K = len(OP_CLASSES))."""

    class_compute_us: np.ndarray   # [n, K] compute term x wave factor of each op class's nodes
    class_memory_us: np.ndarray    # [n, K] memory term x wave factor of each op class's nodes
    schedule: np.ndarray           # [n] index into the base profile's schedule menu
    parallel: np.ndarray           # [n] 1.0 where the schedule pays the thread-pool fork/join
    measured_us: np.ndarray        # [n]

    @property
    def compute_us(self) -> np.ndarray:
        return self.class_compute_us.sum(axis=1)

    @property
    def memory_us(self) -> np.ndarray:
        return self.class_memory_us.sum(axis=1)


def _design(samples: Sequence[Sample], base: DeviceProfile, op_classes: bool) -> _Design:
    """``op_classes``: split each sample's terms by op class; otherwise all count as "other"."""
    models = schedule_models(base)
    ids = {s: i for i, s in enumerate(base.schedules)}
    measured = np.array([s.measured_us for s in samples], dtype=np.float64)
    if not (measured > 0).all():
        raise ValueError("every measured latency must be > 0 µs")
    if op_classes:
        terms = _class_terms(samples, base)
    else:
        terms = np.zeros((len(samples), len(OP_CLASSES), 2))
        terms[:, 0] = _terms(samples, base)
    return _Design(
        class_compute_us=terms[..., 0], class_memory_us=terms[..., 1],
        schedule=np.array([ids[s.schedule] for s in samples], dtype=np.intp),
        parallel=np.array([float(models[s.schedule].all_units) for s in samples]),
        measured_us=measured,
    )


def _class_terms(samples: Sequence[Sample], base: DeviceProfile) -> np.ndarray:
    """[n, K, 2] (compute, memory) µs x wave factor of each sample's nodes of each op class.

    Both terms are sums over the group's nodes of a node's µs divided by its class factor, so
    halving class k's factor adds exactly its share once more: that share is the difference.
    """
    total = _terms(samples, base)
    shares = [_terms(samples, _with_class_factors(base, name, 0.5)) - total for name in OP_CLASSES[1:]]
    return np.stack([total - sum(shares), *shares], axis=1)


def _terms(samples: Sequence[Sample], profile: DeviceProfile) -> np.ndarray:
    """[n, 2] (compute, memory) µs x wave factor of each sample on ``profile``."""
    backend = AnalyticalBackend(profile)
    return np.array([(t.compute_us * t.wave_factor, t.memory_us * t.wave_factor)
                     for t in (backend.group_terms(s.graph, s.nodes, s.schedule) for s in samples)]).reshape(-1, 2)


def _with_class_factors(base: DeviceProfile, op_class_name: str, scale: float) -> DeviceProfile:
    """``base`` with ``op_class_name``'s factor under every schedule multiplied by ``scale``."""
    factors = {(s, c): f for s, c, f in base.class_efficiency}
    for schedule in base.schedules:
        factors[schedule, op_class_name] = base.class_factor(schedule, op_class_name) * scale
    return replace(base, class_efficiency=tuple((s, c, f) for (s, c), f in factors.items()))


@dataclass(frozen=True)
class _Parameters:
    """The fit's parameters in log space; alpha and beta scale the base peak and bandwidth."""

    log_alpha: float
    log_beta: float
    log_launch_us: float
    log_parallel_launch_us: float | None  # None: no sample ran a parallel schedule
    log_efficiency: np.ndarray  # [S] relative to the base profile; fixed entries stay 0
    log_class: np.ndarray       # [S, K] class factors relative to the base's; fixed entries stay 0


@dataclass(frozen=True)
class _FreeParameters:
    """Which parameters the samples let the fit move, and their order in the vector theta."""

    schedules: np.ndarray   # [free] schedule ids with a free efficiency
    classes: np.ndarray     # [free, 2] (schedule id, class id) pairs with a free class factor
    parallel: bool          # the fork/join overhead is fitted

    def vector(self, p: _Parameters) -> np.ndarray:
        head = [p.log_alpha, p.log_beta, p.log_launch_us]
        if self.parallel and p.log_parallel_launch_us is not None:
            head.append(p.log_parallel_launch_us)
        return np.concatenate([head, p.log_efficiency[self.schedules], p.log_class[tuple(self.classes.T)]])

    def unpack(self, theta: np.ndarray, num_schedules: int) -> _Parameters:
        head = 4 if self.parallel else 3
        efficiency = np.zeros(num_schedules)
        efficiency[self.schedules] = theta[head:head + len(self.schedules)]
        log_class = np.zeros((num_schedules, len(OP_CLASSES)))
        log_class[tuple(self.classes.T)] = theta[head + len(self.schedules):]
        return _Parameters(theta[0], theta[1], theta[2], theta[3] if self.parallel else None, efficiency, log_class)

    def names(self, schedules: Sequence[str]) -> list[str]:
        """What each entry of ``vector`` is the log of, as the profile's field names."""
        head = ["fp32_flops_per_s", "memory_bandwidth_bytes_per_s", "launch_overhead_us"]
        if self.parallel:
            head.append("parallel_launch_us")
        return (head + [f"schedule_efficiency.{schedules[i]}" for i in self.schedules]
                + [f"class_efficiency.{schedules[s]}.{OP_CLASSES[k]}" for s, k in self.classes])


class _LogLatencyModel:
    """log t(theta) for the design, with its Jacobian; theta = [log alpha, log beta,
    log launch, (log parallel launch), log efficiency of each free schedule, log factor of
    each free (schedule, class) pair].

    With ``prior_log_std`` the residual also holds one row per parameter, (theta - base) /
    prior_log_std: a Gaussian prior on each log-parameter around the base profile, so the
    fit is the posterior mode.
    """

    def __init__(self, design: _Design, base: DeviceProfile, prior_log_std: float | None) -> None:
        self.design = design
        self.base = base
        present = np.unique(design.schedule)
        reference = 0 if 0 in present else int(present[0])  # "default" when measured
        # a class factor is free where the schedule's samples hold ops of that class and of
        # class "other", which fix the schedule's own time scale: without them the two trade off
        has_class = (design.class_compute_us + design.class_memory_us) > 0                  # [n, K]
        classes = [(s, k) for s in present for k in range(1, len(OP_CLASSES))
                   if has_class[design.schedule == s][:, [0, k]].any(axis=0).all()]
        self.free = _FreeParameters(present[present != reference], np.array(classes, dtype=np.intp).reshape(-1, 2),
                                    bool(design.parallel.any()))
        self.log_measured = np.log(design.measured_us)
        self.prior_log_std = prior_log_std
        num_schedules = len(base.schedules)
        self.at_base = _Parameters(0.0, 0.0, math.log(max(base.launch_overhead_us, 1e-3)),
                                   math.log(max(base.parallel_launch_us, 1e-3)), np.zeros(num_schedules),
                                   np.zeros((num_schedules, len(OP_CLASSES))))
        self.prior_center = self.free.vector(self.at_base)   # theta at the base profile

    def unpack(self, theta: np.ndarray) -> _Parameters:
        return self.free.unpack(theta, len(self.base.schedules))

    def predict(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(t [n], roofline part [n], compute-bound mask [n], the bound term's µs per class [n, K])."""
        p, d = self.unpack(theta), self.design
        class_scale = np.exp(-p.log_class[d.schedule])                                    # [n, K]
        class_compute = d.class_compute_us * class_scale * math.exp(-p.log_alpha)         # [n, K]
        class_memory = d.class_memory_us * class_scale * math.exp(-p.log_beta)            # [n, K]
        compute, memory = class_compute.sum(axis=1), class_memory.sum(axis=1)
        compute_bound = compute >= memory
        schedule_scale = np.exp(-p.log_efficiency[d.schedule])                            # [n]
        roofline = np.maximum(compute, memory) * schedule_scale
        overhead = math.exp(p.log_launch_us)
        if p.log_parallel_launch_us is not None:
            overhead = overhead + d.parallel * math.exp(p.log_parallel_launch_us)
        bound_by_class = np.where(compute_bound[:, None], class_compute, class_memory) * schedule_scale[:, None]
        return roofline + overhead, roofline, compute_bound, bound_by_class

    def residual_and_jacobian(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t, roofline, compute_bound, bound_by_class = self.predict(theta)
        p, d = self.unpack(theta), self.design
        share = roofline / t
        columns = [-share * compute_bound, -share * ~compute_bound, math.exp(p.log_launch_us) / t]
        if self.free.parallel:
            columns.append(d.parallel * math.exp(p.log_parallel_launch_us) / t)
        columns += [-share * (d.schedule == s) for s in self.free.schedules]
        columns += [-bound_by_class[:, k] * (d.schedule == s) / t for s, k in self.free.classes]
        residual, jacobian = np.log(t) - self.log_measured, np.stack(columns, axis=1)
        if self.prior_log_std is None:
            return residual, jacobian
        return (np.concatenate([residual, (theta - self.prior_center) / self.prior_log_std]),
                np.concatenate([jacobian, np.eye(len(theta)) / self.prior_log_std]))

    def starts(self) -> list[np.ndarray]:
        return [self.free.vector(replace(self.at_base, log_alpha=math.log(a), log_beta=math.log(b)))
                for a in START_SCALES for b in START_SCALES]


def _levenberg_marquardt(model: _LogLatencyModel, theta: np.ndarray) -> tuple[np.ndarray, float]:
    """Minimize the sum of squared log residuals from ``theta``; returns (theta, loss)."""
    residual, jacobian = model.residual_and_jacobian(theta)
    loss, damping = float(residual @ residual), 1e-3
    for _ in range(LM_MAX_ITERATIONS):
        normal = jacobian.T @ jacobian
        gradient = jacobian.T @ residual
        step = np.linalg.solve(normal + damping * (np.diag(np.diag(normal)) + 1e-12 * np.eye(len(theta))),
                               -gradient)
        candidate = np.clip(theta + step, -LOG_PARAMETER_BOUND, LOG_PARAMETER_BOUND)
        new_residual, new_jacobian = model.residual_and_jacobian(candidate)
        new_loss = float(new_residual @ new_residual)
        if new_loss < loss:
            converged = loss - new_loss <= LM_TOLERANCE * max(loss, 1e-300)
            theta, residual, jacobian, loss = candidate, new_residual, new_jacobian, new_loss
            damping = max(damping / 3.0, 1e-12)
            if converged:
                break
        else:
            damping *= 4.0
            if damping > 1e12:
                break
    return theta, loss


def fit_cpu_profile(samples: Iterable[Sample | tuple], base: DeviceProfile | None = None,
                    prior_log_std: float | None = PRIOR_LOG_STD,
                    op_classes: bool = False) -> tuple[DeviceProfile, CalibrationReport]:
    """Fit ``base`` (default: the generic, uncalibrated ``cpu`` profile) to measured samples.

    Samples are :class:`Sample` records or ``(graph, nodes, schedule, measured_us)`` tuples.
    Cores, vector width and cache size stay those of ``base`` (facts of the machine); peak
    FLOP/s, bandwidth, launch and fork/join overheads and per-schedule efficiencies are
    fitted (the efficiency of ``default``, or of the first measured schedule, is held fixed
    since it is interchangeable with peak and bandwidth). ``prior_log_std``: the standard
    deviation of the Gaussian prior on each log-parameter around ``base``'s; None fits by
    least squares alone, so a parameter the samples do not determine is left where the
    solver stops.

    ``op_classes``: also fit, under each schedule, a factor per op class the samples hold
    (``class_efficiency``; class "other" is the reference). Off by default. Why: on the EPYC
    it fits held-out groups better (Kendall tau 0.617 -> 0.695) but orders whole plans worse
    (mean plan tau over 12 graphs 0.178 -> 0.032): the extra factors follow the many small
    kernels, and a plan's total is the few large ones (README, "One efficiency per op class").
    """
    base = base or get_profile("cpu", use_calibrated=False)
    records = [s if isinstance(s, Sample) else Sample(s[0], tuple(s[1]), s[2], float(s[3])) for s in samples]
    if not records:
        raise ValueError("no measured groups to fit: measure some first (fusiongym profile --calibrate --groups N)")
    if prior_log_std is not None and not prior_log_std > 0:
        raise ValueError(f"prior_log_std must be positive (or None for no prior), got {prior_log_std}")
    design = _design(records, base, op_classes)
    model = _LogLatencyModel(design, base, prior_log_std)
    unknowns = len(model.starts()[0])
    if len(records) <= unknowns:
        raise ValueError(f"{len(records)} samples cannot determine {unknowns} parameters; "
                         f"measure more groups")
    theta, _ = min((_levenberg_marquardt(model, start) for start in model.starts()), key=lambda fit: fit[1])
    fitted = _fitted_profile(base, model.unpack(theta), len(records))
    before = _base_prediction(design, base)
    after = model.predict(theta)[0]
    report = CalibrationReport(
        num_samples=len(records),
        kendall_tau_before=kendall_tau(before, design.measured_us),
        kendall_tau_after=kendall_tau(after, design.measured_us),
        mape_before=mape(before, design.measured_us), mape_after=mape(after, design.measured_us),
        rms_log_error_before=_rms_log_error(before, design.measured_us),
        rms_log_error_after=_rms_log_error(after, design.measured_us),
        parameters={k: v for k, v in fitted.to_dict().items()
                    if k in ("fp32_flops_per_s", "memory_bandwidth_bytes_per_s", "launch_overhead_us",
                             "parallel_launch_us", "schedule_efficiency", "class_efficiency")},
        log_std_error=_log_std_errors(model, theta),
        prior_log_std=prior_log_std,
    )
    return replace(fitted, source=f"{fitted.source}; Kendall tau {report.kendall_tau_before:.3f} -> "
                                  f"{report.kendall_tau_after:.3f}"), report


def _log_std_errors(model: _LogLatencyModel, theta: np.ndarray) -> dict[str, float]:
    """{parameter: standard error of its log} at the fit: the Laplace approximation, with the
    residuals' own variance as the noise. Why: two fits of one machine can differ several-fold
    in a parameter the samples barely determine, and the report should say which ones.
    Infinite where neither the samples nor a prior determine the parameter.

    The prior's precision is the same in every direction, so the posterior's principal
    directions are the data's: each direction's variance is 1 / (data precision + prior
    precision), computed on the data's own scale (exact samples leave no residual at all)."""
    residual, jacobian = model.residual_and_jacobian(theta)
    count = len(model.log_measured)
    data_residual, data_jacobian = residual[:count], jacobian[:count]
    noise_variance = max(float(data_residual @ data_residual) / max(count - len(theta), 1), np.finfo(float).tiny)
    curvature, directions = np.linalg.eigh(data_jacobian.T @ data_jacobian)   # directions[:, k]: direction k
    curvature[curvature < SINGULAR_SHARE * curvature.max()] = 0.0             # flat: the samples say nothing
    prior_precision = 0.0 if model.prior_log_std is None else model.prior_log_std ** -2
    with np.errstate(divide="ignore", over="ignore"):
        direction_variance = 1.0 / (curvature / noise_variance + prior_precision)   # [direction], inf where flat
    loading = directions ** 2                                                 # [parameter, direction]
    variance = np.multiply(loading, direction_variance, out=np.zeros_like(loading),
                           where=loading >= SINGULAR_SHARE).sum(axis=1)      # a smaller share is rounding
    names = model.free.names(model.base.schedules)
    return dict(zip(names, np.sqrt(variance).tolist()))


def _base_prediction(design: _Design, base: DeviceProfile) -> np.ndarray:
    """[n] µs the base profile itself predicts (its efficiencies are inside the terms)."""
    return (np.maximum(design.compute_us, design.memory_us) + base.launch_overhead_us
            + design.parallel * base.parallel_launch_us)


def _fitted_profile(base: DeviceProfile, params: _Parameters, num_samples: int) -> DeviceProfile:
    efficiency = tuple((s, base.efficiency_of(s) * math.exp(params.log_efficiency[i]))
                       for i, s in enumerate(base.schedules))
    class_efficiency = tuple((s, c, base.class_factor(s, c) * math.exp(params.log_class[i, k]))
                             for i, s in enumerate(base.schedules) for k, c in enumerate(OP_CLASSES) if k > 0
                             and (params.log_class[i, k] != 0 or base.class_factor(s, c) != 1.0))
    return replace(
        base,
        fp32_flops_per_s=base.fp32_flops_per_s * math.exp(params.log_alpha),
        memory_bandwidth_bytes_per_s=base.memory_bandwidth_bytes_per_s * math.exp(params.log_beta),
        launch_overhead_us=math.exp(params.log_launch_us),
        parallel_launch_us=(base.parallel_launch_us if params.log_parallel_launch_us is None
                            else math.exp(params.log_parallel_launch_us)),
        schedule_efficiency=efficiency,
        class_efficiency=class_efficiency,
        source=f"fitted by fusiongym.reward.calibrate to {num_samples} measured groups (base: {base.source})",
    )


# -------------------------------------------------------------------------- metrics
def kendall_tau(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Kendall's tau-b (ties handled) of two equally long sequences; NaN when one is constant.

    O(n^2) in row chunks of the pair matrix: a few thousand points take well under a second.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(f"kendall_tau needs two 1-D sequences of equal length ≥ 2, "
                         f"got {x.shape} and {y.shape}")
    concordance = ties_free_x = ties_free_y = 0.0
    for start in range(0, len(x), KENDALL_CHUNK_ROWS):
        sign_x = np.sign(x[start:start + KENDALL_CHUNK_ROWS, None] - x[None, :])   # [rows, n]
        sign_y = np.sign(y[start:start + KENDALL_CHUNK_ROWS, None] - y[None, :])   # [rows, n]
        concordance += float((sign_x * sign_y).sum())
        ties_free_x += float(np.abs(sign_x).sum())
        ties_free_y += float(np.abs(sign_y).sum())
    if ties_free_x == 0 or ties_free_y == 0:
        return float("nan")
    return concordance / math.sqrt(ties_free_x * ties_free_y)


def mape(predicted: np.ndarray, measured: np.ndarray) -> float:
    """Mean absolute percentage error, as a fraction (0.1 = 10 %)."""
    predicted, measured = np.asarray(predicted, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    return float(np.mean(np.abs(predicted - measured) / measured))


def _rms_log_error(predicted: np.ndarray, measured: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.log(predicted) - np.log(measured)) ** 2)))
