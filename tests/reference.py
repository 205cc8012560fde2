"""An independent reference simulation of the TTFS neuron of DESIGN.md, in plain numpy.

Shares no code with delgrad. It does NOT use the closed forms or the "one stationary point per
interval" structure the library relies on; it only uses the superposition formula

    V_j(t) = sum_{arrivals a_k < t} w_k K(t - a_k)
    K(s) = tau_m tau_s / (tau_m - tau_s) (exp(-s/tau_m) - exp(-s/tau_s))     (tau_m != tau_s)
    K(s) = s exp(-s/tau)                                                      (tau_m == tau_s)

and finds the first time V reaches theta by brute force:

* every interval between consecutive distinct arrivals (and a long tail after the last one) is
  sampled densely;
* the first sign change of V - theta on the grid is refined by bisection (to ~1e-13);
* every local maximum of the sampled V (a narrow peak may poke above theta between two grid
  points) is refined by golden-section search; if it reaches theta, the crossing before it is
  refined by bisection;
* the earliest candidate wins.

Besides the spike time it reports conditioning diagnostics that the tests use to exclude
ill-posed cases (near-tangent peaks, tiny slopes, arrivals right at the spike).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


@dataclass(frozen=True)
class Model:
    tau_m: float
    tau_s: float
    theta: float

    def kernel(self, s):
        """K(s), 0 for s <= 0 (vectorised)."""
        s = np.asarray(s, dtype=np.float64)
        pos = s > 0
        sp = np.where(pos, s, 0.0)
        if self.tau_m == self.tau_s:
            k = sp * np.exp(-sp / self.tau_m)
        else:
            c = self.tau_m * self.tau_s / (self.tau_m - self.tau_s)
            k = c * (np.exp(-sp / self.tau_m) - np.exp(-sp / self.tau_s))
        return np.where(pos, k, 0.0)

    def kernel_ds(self, s):
        """dK/ds, 0 for s <= 0 (vectorised)."""
        s = np.asarray(s, dtype=np.float64)
        pos = s > 0
        sp = np.where(pos, s, 0.0)
        if self.tau_m == self.tau_s:
            k = (1.0 - sp / self.tau_m) * np.exp(-sp / self.tau_m)
        else:
            c = self.tau_m * self.tau_s / (self.tau_m - self.tau_s)
            k = c * (-np.exp(-sp / self.tau_m) / self.tau_m + np.exp(-sp / self.tau_s) / self.tau_s)
        return np.where(pos, k, 0.0)


@dataclass
class NeuronResult:
    """First spike time (inf when silent) and conditioning diagnostics."""

    time: float
    # Smallest |V_peak - theta| over the local maxima of V strictly before the spike (all of
    # them when silent); inf if there is none.
    near_miss: float = math.inf
    # dV/dt (from the left) at the spike; nan when silent.
    slope: float = math.nan
    # Smallest |a_k - time| over all arrivals; inf when silent.
    arrival_gap: float = math.inf
    # Largest value of V seen (over everything that was searched).
    v_max: float = -math.inf
    peaks: list = field(default_factory=list)
    theta: float = math.nan


def voltage(model: Model, t, arr: np.ndarray, w: np.ndarray):
    """V(t) for an array of times t, arrivals arr, weights w (superposition)."""
    t = np.asarray(t, dtype=np.float64)
    if arr.size == 0:
        return np.zeros_like(t)
    return model.kernel(t[..., None] - arr) @ w


def voltage_dt(model: Model, t, arr: np.ndarray, w: np.ndarray):
    """dV/dt from the left (arrivals at exactly t do not contribute)."""
    t = np.asarray(t, dtype=np.float64)
    if arr.size == 0:
        return np.zeros_like(t)
    return model.kernel_ds(t[..., None] - arr) @ w


def _bisect(f, lo: float, hi: float) -> float:
    """Root of f with f(lo) < 0 <= f(hi)."""
    for _ in range(400):
        if hi - lo <= 1e-13:
            break
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        if f(mid) >= 0.0:
            hi = mid
        else:
            lo = mid
    return hi


def _golden_max(f, lo: float, hi: float) -> tuple[float, float]:
    """(argmax, max) of a unimodal f on [lo, hi]."""
    a, b = lo, hi
    c = b - GOLDEN * (b - a)
    d = a + GOLDEN * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(200):
        if b - a <= 1e-13:
            break
        if fc >= fd:
            b, d, fd = d, c, fc
            c = b - GOLDEN * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + GOLDEN * (b - a)
            fd = f(d)
    best = max([(f(x), x) for x in (a, b, c, d, lo, hi)])
    return best[1], best[0]


def first_spike(
    model: Model,
    arrivals,
    weights,
    *,
    points_per_interval: int = 160,
    tail_points: int = 600,
) -> NeuronResult:
    """First time V reaches theta for one neuron, by dense sampling + bisection."""
    arr = np.asarray(arrivals, dtype=np.float64).ravel()
    w = np.asarray(weights, dtype=np.float64).ravel()
    keep = w != 0.0
    arr, w = arr[keep], w[keep]
    if arr.size == 0:
        return NeuronResult(math.inf, v_max=0.0, theta=model.theta)
    order = np.argsort(arr, kind="stable")
    arr, w = arr[order], w[order]
    theta = model.theta
    taumax = max(model.tau_m, model.tau_s)
    # After the last arrival V is a sum of decaying exponentials; with |sum w| bounded, its
    # maximum lies within a few time constants. Search far beyond that.
    tail = taumax * (60.0 + 4.0 * math.log1p(float(np.abs(w).sum())))
    knots = np.unique(arr)
    ends = np.append(knots[1:], knots[-1] + tail)

    def f(t: float) -> float:
        return float(voltage(model, np.array(t), arr, w)) - theta

    peaks: list[tuple[float, float]] = []
    v_max = -math.inf
    wsum = float(np.abs(w).sum())
    # |K''| = |K'/tau_m + exp(-s/tau_s)/tau_s| with |K'| <= 1 + max K / tau_m, max K <= tau_m.
    kpp = 2.0 / model.tau_m + 1.0 / model.tau_s
    for lo_t, hi_t in zip(knots, ends):
        # Uniform and dense over the first 20 time constants of the interval, where the response
        # to the arrivals lives; geometric beyond (long silent gaps, the tail).
        length = hi_t - lo_t
        near = min(length, 20.0 * taumax)
        n = tail_points if hi_t == ends[-1] else points_per_interval
        rel = np.linspace(0.0, near, n)
        if length > near:
            rel = np.append(rel, np.geomspace(near, length, 60)[1:])
        grid = lo_t + rel
        grid[0], grid[-1] = lo_t, hi_t
        fv = voltage(model, grid, arr, w) - theta
        v_max = max(v_max, float(fv.max()) + theta)
        cands: list[float] = []
        above = np.nonzero(fv >= 0.0)[0]
        first_above = above[0] if above.size else len(grid)
        if first_above == 0:
            # V >= theta already at the interval start: the crossing lies at the previous end.
            cands.append(float(grid[0]))
        elif first_above < len(grid):
            k = first_above
            cands.append(_bisect(f, float(grid[k - 1]), float(grid[k])))
        # Local maxima of the sampled V (interior), refined: a narrow peak above theta. Between
        # grid points V can exceed its samples by at most h^2/8 max|V''|; maxima whose samples
        # are further below theta than that cannot reach it and are not refined.
        h = float(np.diff(grid).max())
        slack = h * h / 8.0 * wsum * kpp + 1e-9
        for k in range(1, min(first_above, len(grid) - 1)):
            if fv[k] > fv[k - 1] and fv[k] >= fv[k + 1]:
                if fv[k] < -slack:
                    peaks.append((float(grid[k]), float(fv[k]) + theta))
                    continue
                tm, fm = _golden_max(f, float(grid[k - 1]), float(grid[k + 1]))
                if fm >= 0.0:
                    cands.append(_bisect(f, float(grid[k - 1]), tm))
                else:
                    peaks.append((tm, fm + theta))
        # A kink maximum at the end of the interval (V rising into an inhibitory arrival).
        if first_above == len(grid) and hi_t != ends[-1] and len(grid) >= 2:
            if fv[-1] >= fv[-2]:
                t_end = float(grid[-1])
                if voltage_dt(model, np.array(t_end + 1e-9), arr, w) < 0:
                    peaks.append((t_end, fv[-1] + theta))
        if cands:
            t = min(cands)
            before = [abs(v - theta) for (tp, v) in peaks if tp < t]
            return NeuronResult(
                time=t,
                near_miss=min(before, default=math.inf),
                slope=float(voltage_dt(model, np.array(t), arr, w)),
                arrival_gap=float(np.abs(arr - t).min()),
                v_max=max(v_max, theta),
                peaks=peaks,
                theta=theta,
            )
    return NeuronResult(
        math.inf,
        near_miss=min((abs(v - theta) for _, v in peaks), default=math.inf),
        v_max=v_max,
        peaks=peaks,
        theta=theta,
    )


def effective_delays(kind: str, delays, n_out: int, n_in: int) -> np.ndarray:
    """Per-synapse delays d[j, i] for any parametrisation."""
    if kind in ("none", None) or delays is None:
        return np.zeros((n_out, n_in))
    d = np.asarray(delays, dtype=np.float64)
    if kind == "synaptic":
        return d.reshape(n_out, n_in).copy()
    if kind == "axonal":
        return np.broadcast_to(d.reshape(1, n_in), (n_out, n_in)).copy()
    if kind == "dendritic":
        return np.broadcast_to(d.reshape(n_out, 1), (n_out, n_in)).copy()
    raise ValueError(kind)


def layer(model: Model, inputs, weights, delays=None, kind="none", n_samples=None):
    """Reference forward pass of one layer.

    inputs: list (one entry per sample) of lists of (neuron, time).
    Returns (times, info): times (n_samples, n_out) with inf for silent neurons, and info[s][j]
    the NeuronResult.
    """
    w = np.asarray(weights, dtype=np.float64)
    n_out, n_in = w.shape
    d = effective_delays(kind, delays, n_out, n_in)
    n_samples = len(inputs) if n_samples is None else n_samples
    times = np.full((n_samples, n_out), np.inf)
    info = [[None] * n_out for _ in range(n_samples)]
    for s in range(n_samples):
        spikes = inputs[s] if s < len(inputs) else []
        src = np.array([i for i, _ in spikes], dtype=np.int64)
        t_in = np.array([t for _, t in spikes], dtype=np.float64)
        for j in range(n_out):
            if src.size:
                a = t_in + d[j, src]
                ww = w[j, src]
            else:
                a = ww = np.zeros(0)
            r = first_spike(model, a, ww)
            times[s, j] = r.time
            info[s][j] = r
    return times, info


def times_to_inputs(times: np.ndarray) -> list[list[tuple[int, float]]]:
    """First-spike matrix (inf = silent) -> per-sample list of (neuron, time)."""
    return [[(j, float(t)) for j, t in enumerate(row) if np.isfinite(t)] for row in times]


def network(model: Model, inputs, layers, n_samples=None):
    """Reference forward pass of a feed-forward network.

    layers: list of (weights, delays, kind). Returns (list of per-layer time matrices,
    list of per-layer info).
    """
    all_times, all_info = [], []
    cur = inputs
    for w, d, kind in layers:
        t, info = layer(model, cur, w, d, kind, n_samples=n_samples)
        all_times.append(t)
        all_info.append(info)
        cur = times_to_inputs(t)
    return all_times, all_info


def well_conditioned(info, *, peak_margin=1e-7, min_slope=1e-4, min_arrival_gap=0.0) -> bool:
    """True when no neuron in info (nested lists of NeuronResult) is near-tangent:

    * every local maximum of V before the spike (every one, for a silent neuron) is at least
      peak_margin away from theta, and a silent neuron's V stays peak_margin below theta;
    * a spiking neuron crosses with dV/dt >= min_slope;
    * no arrival lies within min_arrival_gap of the spike.
    """
    stack = [info]
    while stack:
        x = stack.pop()
        if isinstance(x, list):
            stack.extend(x)
            continue
        if x.near_miss < peak_margin:
            return False
        if math.isfinite(x.time):
            if not (x.slope >= min_slope):
                return False
            if x.arrival_gap < min_arrival_gap:
                return False
        elif x.v_max > x.theta - peak_margin:
            return False
    return True
