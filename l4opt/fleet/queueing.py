"""A dynamic-batching inference server under Poisson load: p50/p99 latency at a QPS, and the
highest QPS per GPU that keeps p99 under a target.

The model
---------
* **Arrivals**: one sample per request, Poisson at rate ``qps`` (exponential inter-arrival
  times), as in MLPerf's Server scenario (LoadGen ``std::exponential_distribution<>(qps)``).
* **Batcher** (Triton's dynamic batcher with ``max_queue_delay``): a batch *opens* at the first
  request that arrives while no batch is open, and *closes* when it holds ``max_batch``
  requests or when its oldest request has waited ``queue_delay`` seconds, whichever is first.
  The batcher closes batches on its own clock, whether or not an engine instance is free
  (batches do not grow while they wait for an instance: that is pessimistic under heavy load
  compared with a batcher that keeps filling until an instance frees).
* **Engine instances**: ``instances`` = k copies of the engine on one GPU. Closed batches go to
  the instances in turn (round-robin); each instance runs its batches one at a time, first come
  first served.
* **Service time** of a batch of b requests: the latency curve ``L(b)`` (measured or estimated
  GPU latency at batch b, interpolated linearly between known batches and made monotone
  non-decreasing; below the smallest known batch it is ``L(b_min)``; above the largest it is not
  defined, so max_batch never exceeds the largest known batch). Instances share one GPU: with k
  instances a batch takes ``L(b) * k / (1 + overlap * (k - 1))``. ``overlap`` = 0 (default)
  says the GPU is the bottleneck and k concurrent instances each run at 1/k speed (true when
  all k are busy, i.e. near capacity, pessimistic when some are idle); ``overlap`` = 1 says
  instances overlap perfectly (k independent GPUs: optimistic). Host overhead, transfers and
  network time are not in the model unless they are in ``L(b)``.
* **Latency** of a request = batching delay (arrival to batch close) + queue wait (batch close
  to an instance taking it) + service time of its batch. This is the MLPerf definition
  (from LoadGen's scheduled issue time to the response), so queueing counts against the bound.

Two solutions of the same model
-------------------------------
``solve`` (numeric): batches open and close as a renewal process, so with
``Z_n`` = work ahead of batch n on its instance at its open time, ``F_n`` its fill time,
``W_n = max(0, Z_n - F_n)`` its queue wait and ``G_n`` the time from batch n's close to the
open of the next batch on the same instance (one exponential idle gap, plus k-1 further
(fill + idle) cycles), the Lindley recursion ``Z_{n+1} = max(0, W_n + S(b_n) - G_n)`` holds
with ``Z_n`` independent of batch n's own size and fill. ``solve`` puts the law of ``Z`` on a
time grid (probability vectors, shifts split between neighbouring grid points, convolutions by
FFT; the grid's last cell holds all mass beyond the horizon); one step of the recursion is
linear in that law, so ``solve`` builds its matrix and solves for the stationary law directly.
It then mixes the per-request latency ``max(F, Z) + S(b) - t`` over batch sizes, fill times and
the request's arrival offset ``t`` in its batch (the first at 0, a full batch's last at ``F``,
the others uniform on ``[0, F]``; the fill time of a full batch is the (b-1)-th arrival time,
an Erlang conditioned on being below ``queue_delay``, taken at ``FILL_BINS`` points). Errors
come from the grid: splitting a shift between two grid points adds variance, so near
saturation (utilization > ~0.97, where p99 turns steeply with load) the numeric p99 is too
high on a coarse grid. The QPS it implies is then on the conservative side: on the MLPerf
validation (benchmarks/bench_plan.py) the numeric capacity is within 0-1.5 % below the
simulated one at the same setting.

``simulate`` (direct discrete-event simulation): draws the arrivals (numpy, seeded), forms the
batches by the rule above, serves them on the instances and returns the empirical latency
percentiles after a warm-up. It is bounded by ``requests`` (at most ``MAX_SIM_REQUESTS``).
tests/unit/fleet/test_queueing.py checks that the two agree: p99 within 6 % (and p50 within
8 %) of each other on seven settings from 50 % to 94 % utilization, max batch 1 to 32, one and
two instances (measured: within 3 %).

``max_qps`` searches a grid of (max_batch, queue_delay[, instances]) and, for each, bisects on
the QPS for the largest one whose p99 (numeric, on a coarser grid spanning 3x the target) is
under the target; it returns the best setting with its p50/p99. Largest batches go first and a
setting that cannot beat the best QPS so far costs one solve. A stable queue needs ``qps * E[S] < k * E[batch cycle]``; past that
p99 is infinite.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from l4opt.errors import BadInput

FILL_BINS = 24          # points of a full batch's fill-time distribution
OFFSET_POINTS = 16      # points of a request's uniform arrival offset inside its batch
GRID = 1024             # time-grid points of the numeric solution
MAX_SIM_REQUESTS = 2_000_000


# ------------------------------------------------------------------ the latency curve

@dataclass
class Curve:
    """Service time in seconds of a batch of b requests on one engine instance running alone
    on its GPU: interpolated from (batch, ms) points, monotone non-decreasing."""

    batches: tuple
    ms: tuple
    source: str = ""

    def __post_init__(self):
        pts = sorted((int(b), float(m)) for b, m in zip(self.batches, self.ms))
        if not pts:
            raise BadInput("a latency curve needs at least one (batch, latency) point")
        for b, m in pts:
            if b < 1 or not (math.isfinite(m) and m > 0):
                raise BadInput(f"latency curve point (batch {b}, {m} ms): batch must be >= 1 and "
                               f"latency a finite number > 0")
        bs = np.array([p[0] for p in pts], float)
        ms = np.maximum.accumulate(np.array([p[1] for p in pts], float))
        self.batches, self.ms = tuple(int(b) for b in bs), tuple(float(m) for m in ms)

    @property
    def max_batch(self) -> int:
        return self.batches[-1]

    def seconds(self, b) -> np.ndarray:
        b = np.asarray(b, float)
        if np.any(b > self.max_batch):
            raise BadInput(f"batch {int(np.max(b))} is beyond the latency curve's largest batch "
                           f"{self.max_batch}")
        return np.interp(b, self.batches, self.ms) / 1e3

    def scaled(self, factor: float) -> "Curve":
        return Curve(self.batches, tuple(m * factor for m in self.ms), self.source)

    @classmethod
    def from_offline(cls, samples_per_s: float, batch: int, fixed_fraction: float = 0.0,
                     batches=None) -> "Curve":
        """The curve implied by one Offline throughput at one batch (stated rule): the batch
        takes ``batch / samples_per_s``; a smaller batch b takes
        ``L(batch) * (a + (1 - a) * b / batch)`` with a = ``fixed_fraction``, the share of the
        batch's time that does not shrink with the batch (0: throughput the same at every
        batch, optimistic at small batches)."""
        if not (samples_per_s > 0 and batch >= 1 and 0 <= fixed_fraction < 1):
            raise BadInput("from_offline needs samples_per_s > 0, batch >= 1, 0 <= fixed_fraction < 1")
        full = 1e3 * batch / samples_per_s
        bs = sorted(set(batches or [1 << i for i in range(int(math.log2(batch)) + 1)] + [batch]))
        bs = [b for b in bs if b <= batch]
        return cls(tuple(bs), tuple(full * (fixed_fraction + (1 - fixed_fraction) * b / batch)
                                    for b in bs), f"offline {samples_per_s:g}/s at batch {batch}")


@dataclass
class Config:
    max_batch: int
    queue_delay_s: float
    instances: int = 1
    overlap: float = 0.0

    def check(self, curve: Curve) -> None:
        if not (isinstance(self.max_batch, (int, np.integer)) and self.max_batch >= 1):
            raise BadInput(f"max_batch must be a whole number >= 1, got {self.max_batch!r}")
        if self.max_batch > curve.max_batch:
            raise BadInput(f"max_batch {self.max_batch} is beyond the latency curve's largest "
                           f"batch {curve.max_batch}")
        if not (math.isfinite(self.queue_delay_s) and self.queue_delay_s >= 0):
            raise BadInput(f"queue_delay must be a finite number >= 0, got {self.queue_delay_s!r}")
        if not (isinstance(self.instances, (int, np.integer)) and self.instances >= 1):
            raise BadInput(f"instances must be a whole number >= 1, got {self.instances!r}")
        if not 0 <= self.overlap <= 1:
            raise BadInput(f"overlap must be in [0, 1], got {self.overlap!r}")

    def service_s(self, curve: Curve, b) -> np.ndarray:
        k = self.instances
        return curve.seconds(b) * k / (1 + self.overlap * (k - 1))


@dataclass
class Result:
    qps: float
    p50_ms: float
    p99_ms: float
    mean_batch: float
    utilization: float     # offered work per instance-second (>= 1: unstable)
    stable: bool
    method: str
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _check_qps(qps) -> float:
    try:
        q = float(qps)
    except (TypeError, ValueError):
        raise BadInput(f"qps must be a number > 0, got {qps!r}") from None
    if not (math.isfinite(q) and q > 0):
        raise BadInput(f"qps must be a finite number > 0, got {qps!r}")
    return q


# ------------------------------------------------------------------ batch statistics

def _batch_law(qps: float, cfg: Config):
    """Batch sizes 1..B with probabilities, and the fill time of a full batch as (points,
    probabilities) conditioned on the batch being full; the fill of a partial batch is D."""
    from scipy import stats

    B, D = int(cfg.max_batch), float(cfg.queue_delay_s)
    sizes = np.arange(1, B + 1)
    if B == 1 or D == 0:
        p = np.zeros(B)
        p[0] = 1.0
        if B == 1:
            return sizes, p, np.array([0.0]), np.array([1.0])
        return sizes, p, np.array([0.0]), np.array([1.0])
    mu = qps * D
    p = np.empty(B)
    p[:-1] = stats.poisson.pmf(np.arange(B - 1), mu)
    p[-1] = max(0.0, 1.0 - p[:-1].sum())
    # fill time of a full batch: Erlang(B-1, qps) given <= D
    edges = np.linspace(0.0, D, FILL_BINS + 1)
    cdf = stats.gamma.cdf(edges, a=B - 1, scale=1.0 / qps)
    w = np.diff(cdf)
    if w.sum() <= 0:
        pts, w = np.array([D]), np.array([1.0])
    else:
        # the conditional mean within each cell (exact for the Erlang: E[X; a<X<b])
        m1 = stats.gamma.cdf(edges, a=B, scale=1.0 / qps) * (B - 1) / qps
        with np.errstate(invalid="ignore", divide="ignore"):
            pts = np.where(w > 1e-300, np.diff(m1) / np.where(w > 0, w, 1), 0.5 * (edges[1:] + edges[:-1]))
        pts = np.clip(pts, edges[:-1], edges[1:])
        w = w / w.sum()
    return sizes, p, pts, w


def mean_cycle_s(qps: float, cfg: Config) -> tuple[float, float]:
    """(mean batch size, mean time from one batch's open to the next's): each batch fills for
    E[F] then the batcher idles an exponential gap until the next arrival."""
    sizes, p, pts, w = _batch_law(qps, cfg)
    D = cfg.queue_delay_s
    ef = p[:-1].sum() * D + p[-1] * float(np.dot(pts, w)) if cfg.max_batch > 1 else 0.0
    return float(np.dot(sizes, p)), ef + 1.0 / qps


def utilization(curve: Curve, qps: float, cfg: Config) -> float:
    sizes, p, _, _ = _batch_law(qps, cfg)
    es = float(np.dot(cfg.service_s(curve, sizes), p))
    _, cyc = mean_cycle_s(qps, cfg)
    return es / (cfg.instances * cyc)


# ------------------------------------------------------------------ grid helpers

def _shift(p: np.ndarray, d: float) -> np.ndarray:
    """Move a probability vector (last axis) by d grid steps (float, either sign), splitting
    mass between neighbours; mass below 0 goes to cell 0, beyond the top to the last cell."""
    n = p.shape[-1]
    k = math.floor(d)
    f = d - k
    out = np.zeros_like(p)
    for kk, wt in ((k, 1.0 - f), (k + 1, f)):
        if wt == 0:
            continue
        if kk >= 0:
            if kk >= n:
                out[..., -1] += wt * p.sum(axis=-1)
                continue
            out[..., kk:] += wt * p[..., :n - kk] if kk else wt * p
            if kk:
                out[..., -1] += wt * p[..., n - kk:].sum(axis=-1)
        else:
            m = -kk
            if m >= n:
                out[..., 0] += wt * p.sum(axis=-1)
                continue
            out[..., :n - m] += wt * p[..., m:]
            out[..., 0] += wt * p[..., :m].sum(axis=-1)
    return out


def _delta(n: int, d: float) -> np.ndarray:
    """_shift of a unit mass at cell 0 by d >= 0 steps, built directly (it is called for every
    batch size and fill point)."""
    out = np.zeros(n)
    k = math.floor(d)
    f = d - k
    out[min(k, n - 1)] += 1.0 - f
    out[min(k + 1, n - 1)] += f
    return out


def _disc(cdf_at, n: int, h: float) -> np.ndarray:
    """A non-negative continuous law on the grid: cell j holds P(X in [(j-.5)h, (j+.5)h)),
    the last cell everything beyond."""
    edges = (np.arange(n) + 0.5) * h
    c = cdf_at(edges)
    out = np.empty(n)
    out[0] = c[0]
    out[1:] = np.diff(c)
    out[-1] = 1.0 - c[-2]
    return np.clip(out, 0, None)


def fftconvolve(a: np.ndarray, b: np.ndarray, axes=-1) -> np.ndarray:
    """Full linear convolution along the last axis (numpy FFT; b broadcasts over a's rows)."""
    m = a.shape[-1] + b.shape[-1] - 1
    size = 1 << (m - 1).bit_length()
    return np.fft.irfft(np.fft.rfft(a, size, axis=-1) * np.fft.rfft(b, size, axis=-1), size,
                        axis=-1)[..., :m]


def _conv(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Law of the sum of two independent grid variables, truncated to n cells (overflow in the
    last)."""
    a2, b2 = np.atleast_2d(a), np.atleast_2d(b)
    c = np.clip(fftconvolve(a2, b2, axes=-1), 0, None)
    out = c[..., :n].copy()
    out[..., -1] += c[..., n:].sum(axis=-1)
    return out.reshape(np.shape(a)[:-1] + (n,))


def _minus(v: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Law of max(0, V - G) on the grid (V, G independent)."""
    n = v.shape[-1]
    v2 = np.atleast_2d(v)
    # index i corresponds to V - G = (i - (n-1)) h
    c = np.clip(fftconvolve(v2, np.atleast_2d(g[::-1]), axes=-1), 0, None)
    out = c[..., n - 1:].copy()
    out[..., 0] += c[..., :n - 1].sum(axis=-1)
    return out.reshape(v.shape)


def _quantile(cdf: np.ndarray, h: float, q: float) -> float:
    i = int(np.searchsorted(cdf, q))
    if i >= len(cdf) - 1:
        return math.inf
    if i == 0:
        return 0.0
    lo, hi = cdf[i - 1], cdf[i]
    return ((i - 1) + (q - lo) / (hi - lo if hi > lo else 1)) * h


# ------------------------------------------------------------------ numeric solution

def solve(curve: Curve, qps: float, cfg: Config, *, horizon_s: float | None = None,
          grid: int = GRID) -> Result:
    """p50/p99 latency at `qps` by the numeric fixed point of the Lindley recursion (module
    docstring). ``horizon_s``: the grid's span (default: grown until p99 lies inside it); a
    percentile beyond it is inf."""
    from scipy import stats

    qps = _check_qps(qps)
    cfg.check(curve)
    if horizon_s is None:  # grow the grid's span until p99 lies inside it (or give up: inf)
        svc_max = float(cfg.service_s(curve, [cfg.max_batch])[0])
        span = 8.0 * (svc_max + cfg.queue_delay_s) + 2.0 / qps * cfg.instances
        for _ in range(8):
            res = solve(curve, qps, cfg, horizon_s=span, grid=grid)
            if math.isfinite(res.p99_ms) or not res.stable:
                return res
            span *= 2
        return res
    sizes, p, fpts, fw = _batch_law(qps, cfg)
    svc = cfg.service_s(curve, sizes)
    util = utilization(curve, qps, cfg)
    out = dict(qps=qps, mean_batch=float(np.dot(sizes, p)), utilization=util,
               method="numeric", config=asdict(cfg))
    if util >= 1:
        return Result(p50_ms=math.inf, p99_ms=math.inf, stable=False, **out)
    D, k, B = cfg.queue_delay_s, cfg.instances, cfg.max_batch
    n, h = int(grid), horizon_s / (grid - 1)

    # G: an exponential idle gap, plus k-1 further (fill + idle) cycles
    idle = _disc(lambda x: stats.expon.cdf(x, scale=1 / qps), n, h)
    fill = np.zeros(n)
    full = B > 1 and D > 0
    if full:
        for pt, wt in zip(fpts, fw):
            fill += p[-1] * wt * _delta(n, pt / h)
        fill += p[:-1].sum() * _delta(n, D / h)
    else:
        fill[0] = 1.0
    g = idle
    cyc = _conv(fill, idle, n)
    for _ in range(k - 1):
        g = _conv(g, cyc, n)

    # components: (fill time, size index, weight)
    comps = []
    if full:
        comps += [(D, i, p[i]) for i in range(B - 1) if p[i] > 0]
        comps += [(pt, B - 1, p[-1] * wt) for pt, wt in zip(fpts, fw) if wt > 0]
    else:
        comps = [(0.0, 0, 1.0)]
    # one step of the recursion as convolutions: partial batches (fill D, sizes 1..B-1) share
    # max(0, Z - D); full batches subtract their fill law and add S(B)
    part_kernel = np.zeros(n)
    for f, i, wt in comps:
        if not (full and i == B - 1):
            part_kernel += wt * _delta(n, svc[i] / h)
    full_fill = np.zeros(n)
    if full:
        for pt, wt in zip(fpts, fw):
            full_fill += wt * _delta(n, pt / h)
    d_part = D / h if full else 0.0

    def step(z):
        v = _conv(_shift(z, -d_part), part_kernel, n) if part_kernel.sum() > 0 else 0 * z
        if full and p[-1] > 0:
            v += p[-1] * _shift(_minus(z, full_fill), svc[-1] / h)
        return _minus(v, g)

    # per-request latency: max(F, Z) + S(b) - t, requests weighted equally
    def latency(z):
        return _latency_pcts(z, comps, sizes, svc, full, B, n, h)

    # the stationary law of Z: the recursion is linear in Z's law, so build its matrix (one
    # step applied to every grid cell at once) and solve M z = z, sum(z) = 1
    m = step(np.eye(n)).T          # column j: the law of Z' given Z in cell j
    a = m - np.eye(n)
    a[-1, :] = 1.0
    rhs = np.zeros(n)
    rhs[-1] = 1.0
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # one BLAS thread: many times faster on a small, busy machine
        try:
            z = np.linalg.solve(a, rhs)
        except np.linalg.LinAlgError:
            z = np.linalg.lstsq(a, rhs, rcond=None)[0]
    z = np.clip(z, 0, None)
    z /= z.sum()
    p50, p99 = latency(z)
    return Result(p50_ms=p50, p99_ms=p99, stable=True, **out)


def _latency_pcts(z, comps, sizes, svc, full, B, n, h) -> tuple[float, float]:
    """p50/p99 (ms) of a request's latency max(F, Z) + S(b) - t mixed over the components
    (fill F, size index, weight). Each component's shifts are the same few laws of Z per fill
    time, moved by S(b): they are summed as kernels and applied by one convolution per law
    (the same numbers as shifting each component, in a few FFTs instead of thousands)."""
    laws: dict = {}  # fill time -> (y, y shifted by -f, max(0, y - U(0, f)), kernels k0/k1/k2)
    for f, i, wt in comps:
        b = int(sizes[i])
        if f not in laws:
            y = _shift(_shift(z, -f / h), f / h)          # max(F, Z)
            u = np.zeros(n)
            if f > 0:
                for t in (np.arange(OFFSET_POINTS) + 0.5) / OFFSET_POINTS * f:
                    u += _delta(n, t / h) / OFFSET_POINTS
            laws[f] = [y, _shift(y, -f / h), _minus(y, u) if f > 0 else y,
                       np.zeros(n), np.zeros(n), np.zeros(n)]
        a0, a1, inner = 1.0 / b, 0.0, b - 1
        if full and i == B - 1 and b >= 2:
            a1, inner = 1.0 / b, b - 2
        a2 = inner / b if inner > 0 else 0.0
        at = _delta(n, svc[i] / h) * wt * b
        law = laws[f]
        law[3] += a0 * at
        law[4] += a1 * at
        law[5] += a2 * at
    lat = np.zeros(n)
    for y, ys, yu, k0, k1, k2 in laws.values():
        for v, k in ((y, k0), (ys, k1), (yu, k2)):
            if k.any():
                lat += _conv(v, k, n)
    cdf = np.cumsum(lat / lat.sum())
    return 1e3 * _quantile(cdf, h, 0.50), 1e3 * _quantile(cdf, h, 0.99)


# ------------------------------------------------------------------ simulation

def simulate(curve: Curve, qps: float, cfg: Config, *, requests: int = 200_000,
             seed: int = 0, warmup: float = 0.1) -> Result:
    """Direct discrete-event simulation of the same server (module docstring): seeded,
    `requests` Poisson arrivals (at most MAX_SIM_REQUESTS), the first `warmup` share dropped."""
    qps = _check_qps(qps)
    cfg.check(curve)
    if not (isinstance(requests, (int, np.integer)) and 1000 <= requests <= MAX_SIM_REQUESTS):
        raise BadInput(f"requests must be a whole number in [1000, {MAX_SIM_REQUESTS}], "
                       f"got {requests!r}")
    rng = np.random.default_rng(seed)
    arr = np.cumsum(rng.exponential(1.0 / qps, int(requests)))
    B, D, k = int(cfg.max_batch), float(cfg.queue_delay_s), int(cfg.instances)
    svc_of = cfg.service_s(curve, np.arange(1, B + 1))
    done = np.empty(len(arr))
    free = np.zeros(k)
    sizes = []
    i, nb, n = 0, 0, len(arr)
    while i < n:
        j = int(np.searchsorted(arr, arr[i] + D, side="right")) if D > 0 else i + 1
        end = min(i + B, j, n)
        close = arr[end - 1] if end - i == B else arr[i] + D
        m = nb % k
        start = max(close, free[m])
        free[m] = start + svc_of[end - i - 1]
        done[i:end] = free[m]
        sizes.append(end - i)
        i, nb = end, nb + 1
    lat = (done - arr)[int(warmup * n):]
    return Result(qps=qps, p50_ms=1e3 * float(np.percentile(lat, 50)),
                  p99_ms=1e3 * float(np.percentile(lat, 99)), mean_batch=float(np.mean(sizes)),
                  utilization=utilization(curve, qps, cfg), stable=True, method="simulation",
                  config=asdict(cfg))


# ------------------------------------------------------------------ capacity

@dataclass
class Capacity:
    """The highest Poisson QPS one GPU sustains with p99 <= target, and how to configure it."""

    max_qps: float
    max_batch: int | None
    queue_delay_ms: float | None
    instances: int | None
    p50_ms: float
    p99_ms: float
    p99_target_ms: float
    feasible: bool
    best_p99_ms: float        # the lowest p99 any setting reaches (at vanishing load)
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def default_batches(curve: Curve) -> list[int]:
    bs = [1 << i for i in range(0, 16) if (1 << i) <= curve.max_batch]
    if curve.max_batch not in bs:
        bs.append(curve.max_batch)
    return bs


def max_qps(curve: Curve, p99_target_ms: float, *, batches=None, delays_ms=None,
            instances=(1,), overlap: float = 0.0, rel_tol: float = 0.01,
            grid: int = 384) -> Capacity:
    """Search max_batch x queue_delay x instances for the largest QPS with p99 <= target.

    Delays (default): 0 and 5 %, 10 %, 20 %, 35 % and 50 % of the target. For each setting the
    QPS is bisected (relative tolerance `rel_tol`) below the stability limit."""
    try:
        target = float(p99_target_ms)
    except (TypeError, ValueError):
        raise BadInput(f"p99 target must be a number > 0 (ms), got {p99_target_ms!r}") from None
    if not (math.isfinite(target) and target > 0):
        raise BadInput(f"p99 target must be a finite number > 0 (ms), got {p99_target_ms!r}")
    batches = sorted(set(batches or default_batches(curve)))
    delays_ms = sorted(set(delays_ms if delays_ms is not None else
                           [0.0] + [target * f for f in (0.05, 0.1, 0.2, 0.35, 0.5)]))
    best_p99 = min(1e3 * float(Config(b, 0.0, k, overlap).service_s(curve, [1])[0])
                   for b in batches[:1] for k in instances)
    best = None
    # largest batches first: a setting whose stability limit, or whose p99 just above the best
    # QPS found so far, rules it out costs at most one solve
    for k in instances:
        for b in sorted(batches, reverse=True):
            if b > curve.max_batch:
                continue
            svc_ms = 1e3 * float(Config(b, 0, k, overlap).service_s(curve, [b])[0])
            if svc_ms >= target:
                continue
            for d in delays_ms:
                if (b == 1) != (d == 0):
                    continue   # batch 1 needs no delay; a batch > 1 with no delay stays at 1
                if d + svc_ms >= target:
                    continue
                cfg = Config(int(b), d / 1e3, int(k), overlap)
                res = qps_at_target(curve, cfg, target, rel_tol, grid,
                                    floor=best[1].qps * (1 + rel_tol) if best else None)
                if res and (best is None or res.qps > best[1].qps):
                    best = (cfg, res)
    if best is None:
        return Capacity(0.0, None, None, None, math.nan, math.nan, target, False, best_p99,
                        f"no batch size or queue delay meets p99 <= {target:g} ms: the best "
                        f"achievable p99 is {best_p99:.4g} ms (batch 1 on an idle GPU)")
    cfg, res = best
    return Capacity(res.qps, cfg.max_batch, 1e3 * cfg.queue_delay_s, cfg.instances, res.p50_ms,
                    res.p99_ms, target, True, best_p99)


def qps_at_target(curve: Curve, cfg: Config, p99_target_ms: float, rel_tol: float = 0.01,
                  grid: int = 384, floor: float | None = None) -> Result | None:
    """The largest QPS (within `rel_tol`) at which this one configuration keeps p99 under the
    target (numeric), as its Result; None when even a light load misses it (or, with
    `floor`, when the configuration cannot beat that QPS)."""
    target = float(p99_target_ms)
    horizon = 3 * target / 1e3

    def ok(q):
        if utilization(curve, q, cfg) >= 1:
            return None
        r = solve(curve, q, cfg, grid=grid, horizon_s=horizon)
        return r if r.p99_ms <= target else None

    # stability limit: the largest QPS with utilization < 1 is below hi
    hi = cfg.max_batch / float(cfg.service_s(curve, [cfg.max_batch])[0]) * cfg.instances * 1.05
    if floor is not None:  # only a setting that beats `floor` is of interest
        if floor >= hi or utilization(curve, floor, cfg) >= 1:
            return None
        lo = floor
        best = ok(lo)
        if best is None:
            return None
    else:
        lo = hi * 0.25
        best = ok(lo)
    while best is None:
        lo /= 8
        if lo < hi * 1e-5:
            return None
        best = ok(lo)
    while hi / lo - 1 > rel_tol:
        mid = math.sqrt(lo * hi)
        r = ok(mid)
        if r is not None:
            lo, best = mid, r
        else:
            hi = mid
    return best


def at_qps(curve: Curve, qps: float, max_batch: int, queue_delay_ms: float, instances: int = 1,
           overlap: float = 0.0, grid: int = GRID) -> Result:
    """p50/p99 at a given QPS with a given configuration (numeric)."""
    return solve(curve, qps, Config(int(max_batch), float(queue_delay_ms) / 1e3, int(instances),
                                    overlap), grid=grid)
