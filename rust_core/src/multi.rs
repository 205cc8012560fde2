//! Multi-spike LIF neurons: exact event-driven simulation with reset to 0 after every spike and an
//! optional refractory time (issue 4, forward pass).
//!
//! The model is DESIGN.md's (`dV/dt = -V/tau_m + I`, `dI/dt = -I/tau_s`, unit capacitance). A spike
//! at `V = theta` resets `V` to 0; `I` continues. With `t_ref > 0`, `V` is clamped at 0 for
//! `t_ref` after the spike while `I` keeps evolving (arrivals still add to it). Between events the
//! state evolves in closed form ([`Neuron::evolve`]) and every threshold crossing is located by the
//! TTFS engine's solver ([`crate::solver`]): closed forms for `tau_m = tau_s` and
//! `tau_m = 2 tau_s`, bracketed Newton otherwise. No time grid anywhere.
//!
//! Feed-forward layers are simulated target by target: all arrivals to a layer are known from the
//! previous layer's spikes and the delays, so each target neuron is an independent scan over its
//! own sorted arrivals. Recurrent layers are simulated in time windows with per-target pending
//! arrivals ([`crate::recurrent`]).

use crate::binned::{BinSample, BinWork};
use crate::error::{param_err, Result};
use crate::layer::{DelayKind, LayerRef};
use crate::neuron::Neuron;
use crate::solver::{crossing_in_interval, first_crossing, may_cross};
use crate::ttfs::In;

/// A multi-spike neuron: the LIF model plus what only the multi-spike mode has.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MultiNeuron {
    pub neuron: Neuron,
    /// Refractory time: `V` is held at 0 for `t_ref` after each spike (`I` keeps evolving).
    pub t_ref: f64,
    /// End of the simulated trial: spikes after `t_end` are not produced (may be infinite; then
    /// a neuron is simulated until its input has decayed and it cannot cross any more).
    pub t_end: f64,
    /// Safety cap on the spikes of one layer in one sample (runaway recurrent excitation without
    /// refractoriness would otherwise never stop). Exceeding it is an error of the batch call.
    pub max_spikes: usize,
    /// `k` when `tau_m = k tau_s` exactly for a small integer `k` (then `exp(-s/tau_s)` is
    /// `exp(-s/tau_m)^k`, one division fewer per interval), else 0.
    pub(crate) pow_k: i32,
}

impl MultiNeuron {
    /// `(e_m, e_s)` over the interval between two arrivals from their factors.
    #[inline]
    pub(crate) fn factor_decays(&self, pm: f64, ps: f64, qm: f64, qs: f64) -> (f64, f64) {
        match self.pow_k {
            0 => (pm / qm, ps / qs),
            1 => pow_decays::<1>(pm, qm),
            2 => pow_decays::<2>(pm, qm),
            4 => pow_decays::<4>(pm, qm),
            k => {
                let em = pm / qm;
                (em, em.powi(k))
            }
        }
    }

    /// `(exp(-s/tau_m), exp(-s/tau_s))` with one `exp` when `tau_m = k tau_s` for a small integer
    /// `k` (`exp(-s/tau_s)` is then the `k`-th power of `exp(-s/tau_m)`, a few ulps from the
    /// direct value), else [`Neuron::decays`].
    #[inline]
    pub(crate) fn decays(&self, s: f64) -> (f64, f64) {
        if self.pow_k < 3 {
            return self.neuron.decays(s);
        }
        let em = (-s * self.neuron.inv_tau_m).exp();
        let es = if self.pow_k == 4 {
            let e2 = em * em;
            e2 * e2
        } else {
            em.powi(self.pow_k)
        };
        (em, es)
    }

    pub fn new(neuron: Neuron, t_ref: f64, t_end: f64) -> Result<Self> {
        if !(t_ref.is_finite() && t_ref >= 0.0) {
            return Err(param_err(format!("neuron: t_ref must be finite and >= 0, got {t_ref}")));
        }
        if t_end.is_nan() {
            return Err(param_err("neuron: t_end must not be NaN"));
        }
        let pow_k = (1..=8).find(|&k| neuron.tau_m == k as f64 * neuron.tau_s).unwrap_or(0);
        Ok(Self { neuron, t_ref, t_end, max_spikes: 10_000_000, pow_k })
    }
}

/// Sorts `(time, ...)` records by time. Times are finite, so `total_cmp` is the numeric order
/// (up to `-0.0 < 0.0`, which does not change any result).
#[inline]
pub(crate) fn sort_by_time<T>(v: &mut [T], key: impl Fn(&T) -> f64) {
    v.sort_unstable_by(|a, b| key(a).total_cmp(&key(b)));
}

/// Buffers of [`bucket_sort`].
#[derive(Debug)]
pub struct SortBuf<T> {
    buf: Vec<T>,
    bucket: Vec<u32>,
    counts: Vec<u32>,
}

impl<T> Default for SortBuf<T> {
    fn default() -> Self {
        Self { buf: Vec::new(), bucket: Vec::new(), counts: Vec::new() }
    }
}

/// Sorts records by time in expected linear time: one bucket per record over the time span, a
/// counting scatter, then insertion sort (records are only out of order within a bucket).
/// Falls back to a comparison sort when a bucket is crowded (strongly clustered times).
pub fn bucket_sort<T: Copy>(v: &mut Vec<T>, sb: &mut SortBuf<T>, key: impl Fn(&T) -> f64) {
    bucket_sort_above(v, sb, key, 48)
}

/// [`bucket_sort`] with insertion sort for up to `small` records (for records that come in
/// nearly sorted, insertion sort wins up to larger sizes).
#[inline]
pub fn bucket_sort_above<T: Copy>(v: &mut Vec<T>, sb: &mut SortBuf<T>, key: impl Fn(&T) -> f64, small: usize) {
    let n = v.len();
    if n <= small {
        insertion_sort(v, &key);
        return;
    }
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for x in v.iter() {
        let t = key(x);
        lo = lo.min(t);
        hi = hi.max(t);
    }
    if !(hi > lo) {
        return;
    }
    let scale = n as f64 / (hi - lo);
    let last = (n - 1) as u32;
    sb.bucket.clear();
    sb.bucket.extend(v.iter().map(|x| (((key(x) - lo) * scale) as u32).min(last)));
    sb.counts.clear();
    sb.counts.resize(n + 1, 0);
    for &b in &sb.bucket {
        sb.counts[b as usize + 1] += 1;
    }
    place_by_bucket(v, &sb.bucket, &mut sb.counts, &mut sb.buf, &key);
    std::mem::swap(v, &mut sb.buf);
}

/// The second half of both bucket sorts: the records `src` (not empty), each with its bucket in
/// `bucket` and the bucket sizes in `counts[b + 1]`, placed into `out` in time order. A crowded
/// bucket (strongly clustered times) falls back to a comparison sort.
#[inline(always)]
fn place_by_bucket<T: Copy>(src: &[T], bucket: &[u32], counts: &mut [u32], out: &mut Vec<T>, key: &impl Fn(&T) -> f64) {
    out.clear();
    if counts.iter().any(|&c| c > 32) {
        out.extend_from_slice(src);
        sort_by_time(out, key);
        return;
    }
    for b in 0..counts.len() - 1 {
        counts[b + 1] += counts[b];
    }
    out.resize(src.len(), src[0]);
    for (x, &b) in src.iter().zip(bucket) {
        let c = &mut counts[b as usize];
        out[*c as usize] = *x;
        *c += 1;
    }
    insertion_sort(out, key);
}

/// Fills `out` with the records of `items` (at most `n` of them) sorted by time, bucketing
/// while the records are produced (one pass fewer than [`bucket_sort`]); all times lie in
/// `[lo, hi]`. Same fallback for crowded buckets. The buffers keep their length between calls,
/// so that the hot loop writes by index instead of pushing.
pub fn bucket_fill<T: Copy + Default>(
    n: usize,
    lo: f64,
    hi: f64,
    sb: &mut SortBuf<T>,
    out: &mut Vec<T>,
    items: impl Iterator<Item = T>,
    key: impl Fn(&T) -> f64,
) {
    out.clear();
    let span = hi - lo;
    if !(span > 0.0) || !span.is_finite() || n <= 48 {
        out.extend(items);
        bucket_sort(out, sb, key);
        return;
    }
    let scale = n as f64 / span;
    let last = n - 1;
    // (`bucket_sort` shares these buffers and leaves them at its own lengths.)
    if sb.buf.len() < n {
        sb.buf.resize(n, T::default());
    }
    if sb.bucket.len() < n {
        sb.bucket.resize(n, 0);
    }
    sb.counts.clear();
    sb.counts.resize(n + 1, 0);
    let (buf, bucket, counts) = (&mut sb.buf[..n], &mut sb.bucket[..n], &mut sb.counts[..n + 1]);
    let mut len = 0;
    for x in items {
        // Times are >= lo, so only the top end needs a clamp (`as` saturates below at 0).
        let b = (((key(&x) - lo) * scale) as usize).min(last);
        buf[len] = x;
        bucket[len] = b as u32;
        counts[b + 1] += 1;
        len += 1;
    }
    if len == 0 {
        return;
    }
    place_by_bucket(&buf[..len], &bucket[..len], counts, out, &key);
}

#[inline]
fn insertion_sort<T: Copy>(v: &mut [T], key: &impl Fn(&T) -> f64) {
    for k in 1..v.len() {
        // Nearly sorted input: compare first, and move a record only when it is out of place.
        let kx = key(&v[k]);
        if key(&v[k - 1]) <= kx {
            continue;
        }
        let x = v[k];
        let mut m = k;
        while m > 0 && key(&v[m - 1]) > kx {
            v[m] = v[m - 1];
            m -= 1;
        }
        v[m] = x;
    }
}

/// `exp(d_ji / tau_m)` and `exp(d_ji / tau_s)` of every synapse of a layer, computed once per
/// batch. With the per-spike factors `exp((t_i - t_0)/tau)` of a sample, each arrival carries
/// `exp((a - t_0)/tau)` as a product, and the decay over the interval between two arrivals is a
/// quotient: the scans and the adjoint sweeps then need no `exp` between consecutive arrivals
/// (the same device as the TTFS scan's, for both time constants).
#[derive(Debug, Clone)]
pub struct DelayFactors {
    pub fm: Vec<f64>,
    pub fs: Vec<f64>,
    pub max_delay: f64,
    /// Per synapse (`n_out x n_in`): the effective delay, `w exp(d / tau_m)`, `w exp(d / tau_s)`
    /// and `max(w, 0)`, for the binned scan ([`crate::binned`]) and the backward pass, which read
    /// a synapse once per arrival.
    pub delay: Vec<f64>,
    pub wfm: Vec<f64>,
    pub wfs: Vec<f64>,
    pub wpos: Vec<f64>,
}

pub fn delay_factors(n: &Neuron, layer: &LayerRef) -> DelayFactors {
    let len = layer.n_out * layer.n_in;
    let mut fm = Vec::with_capacity(len);
    let mut fs = Vec::with_capacity(len);
    let mut delay = Vec::with_capacity(len);
    for j in 0..layer.n_out {
        for i in 0..layer.n_in {
            let d = layer.delay(j, i);
            delay.push(d);
            fm.push((d * n.inv_tau_m).exp());
            fs.push((d * n.inv_tau_s).exp());
        }
    }
    let w = &layer.weights[..len];
    let wfm = w.iter().zip(&fm).map(|(w, f)| w * f).collect();
    let wfs = w.iter().zip(&fs).map(|(w, f)| w * f).collect();
    let wpos = w.iter().map(|w| w.max(0.0)).collect();
    let max_delay = layer.delays.iter().fold(0.0_f64, |m, &d| m.max(d));
    DelayFactors { fm, fs, max_delay, delay, wfm, wfs, wpos }
}

/// Spans longer than this many time constants would overflow the factors: such samples take
/// the exponential path.
pub(crate) const MAX_FACTOR_SPAN: f64 = 600.0;

/// The per-spike factors of one sample's inputs, or `false` when the span is too long.
pub fn spike_factors(n: &Neuron, inputs: &[In], max_delay: f64, um: &mut Vec<f64>, us: &mut Vec<f64>) -> bool {
    um.clear();
    us.clear();
    let (mut t0, mut t1) = (f64::INFINITY, f64::NEG_INFINITY);
    for &(_, t) in inputs {
        t0 = t0.min(t);
        t1 = t1.max(t);
    }
    if (t1 - t0 + max_delay) * n.inv_tau_m.max(n.inv_tau_s) >= MAX_FACTOR_SPAN {
        return false;
    }
    for &(_, t) in inputs {
        um.push(((t - t0) * n.inv_tau_m).exp());
        us.push(((t - t0) * n.inv_tau_s).exp());
    }
    true
}

/// An arrival in the forward scan: time, weight, and `exp((a - t_0)/tau_m)`,
/// `exp((a - t_0)/tau_s)` (NaN when the sample takes the exponential path).
#[derive(Debug, Clone, Copy, Default)]
pub struct FArr {
    pub a: f64,
    pub w: f64,
    pub fm: f64,
    pub fs: f64,
}

/// Simulates one neuron from rest on its arrivals `(time, weight)` sorted by time, appending its
/// spike times to `out`. Returns `false` if `max_spikes` was reached (the output is truncated).
pub fn simulate(m: &MultiNeuron, arrivals: &[(f64, f64)], out: &mut Vec<f64>) -> bool {
    let arr: Vec<FArr> = arrivals.iter().map(|&(a, w)| FArr { a, w, fm: f64::NAN, fs: f64::NAN }).collect();
    simulate_arr(m, &arr, false, out, &mut Vec::new())
}

/// [`simulate`] on [`FArr`] records; with `factored`, the decays between consecutive arrivals
/// come from the records' factors. Appends the current `I(t^-)` at each spike to `current`.
pub fn simulate_arr(
    m: &MultiNeuron,
    arrivals: &[FArr],
    factored: bool,
    out: &mut Vec<f64>,
    current: &mut Vec<f64>,
) -> bool {
    let n = &m.neuron;
    if arrivals.is_empty() {
        return true;
    }
    let start = out.len();
    let (mut v, mut i) = (0.0_f64, 0.0_f64);
    let mut t = arrivals[0].a;
    let mut k = 0;
    // Apply the arrivals at time t.
    while k < arrivals.len() && arrivals[k].a <= t {
        i += arrivals[k].w;
        k += 1;
    }
    // Whether the state sits at arrival k - 1 (so the factors give the next decay).
    let mut at_arrival = true;
    let mut refr_end = f64::NEG_INFINITY;
    loop {
        if factored && at_arrival && refr_end <= t && v < n.theta {
            match m.pow_k {
                1 => quiet::<1>(m, arrivals, &mut k, &mut v, &mut i, &mut t),
                2 => quiet::<2>(m, arrivals, &mut k, &mut v, &mut i, &mut t),
                4 => quiet::<4>(m, arrivals, &mut k, &mut v, &mut i, &mut t),
                _ => quiet::<0>(m, arrivals, &mut k, &mut v, &mut i, &mut t),
            }
        }
        let na = if k < arrivals.len() { arrivals[k].a } else { f64::INFINITY };
        if na > m.t_end && t > m.t_end {
            break;
        }
        if refr_end > t {
            // Refractory: V stays at 0, I decays; arrivals still add to I.
            if refr_end <= na {
                i *= (-(refr_end - t) * n.inv_tau_s).exp();
                t = refr_end;
                at_arrival = false;
            } else {
                i *= (-(na - t) * n.inv_tau_s).exp();
                t = na;
                while k < arrivals.len() && arrivals[k].a <= t {
                    i += arrivals[k].w;
                    k += 1;
                }
                at_arrival = true;
            }
            continue;
        }
        let crossing = if v >= n.theta {
            // Only by rounding, when the previous interval's crossing sat on its end.
            Some(0.0)
        } else if na == f64::INFINITY {
            first_crossing(n, v, i, f64::INFINITY)
        } else {
            let len = na - t;
            let (em, es) = if factored && at_arrival {
                let (p, q) = (&arrivals[k - 1], &arrivals[k]);
                m.factor_decays(p.fm, p.fs, q.fm, q.fs)
            } else {
                n.decays(len)
            };
            let (ve, ie) = (v * em + i * n.kernel_from_fast(len, em, es), i * es);
            // With I <= 0 no crossing is possible: skip the solver's checks.
            match if i > 0.0 { crossing_in_interval(n, v, i, len, ve, ie) } else { None } {
                Some(s) => Some(s),
                None => {
                    v = ve;
                    i = ie;
                    t = na;
                    while k < arrivals.len() && arrivals[k].a <= t {
                        i += arrivals[k].w;
                        k += 1;
                    }
                    at_arrival = true;
                    continue;
                }
            }
        };
        match crossing {
            Some(s) => {
                let ts = t + s;
                if ts > m.t_end {
                    break;
                }
                if out.len() - start >= m.max_spikes {
                    return false;
                }
                out.push(ts);
                i *= (-s * n.inv_tau_s).exp();
                current.push(i);
                v = 0.0;
                t = ts;
                refr_end = ts + m.t_ref;
                at_arrival = false;
            }
            None => break,
        }
    }
    true
}

/// `(e_m, e_s)` from the `tau_m` factors when `tau_m = K tau_s` (`K` = 1, 2 or 4).
#[inline(always)]
fn pow_decays<const K: i32>(pm: f64, qm: f64) -> (f64, f64) {
    let em = pm / qm;
    let es = match K {
        1 => em,
        2 => em * em,
        _ => {
            let e2 = em * em;
            e2 * e2
        }
    };
    (em, es)
}

/// `(e_m, e_s)` between two factored arrivals and the kernel `K` over the interval, with the
/// case `tau_m = K tau_s` fixed at compile time (`K = 0`: any ratio). Bit for bit the values of
/// [`MultiNeuron::factor_decays`] and [`Neuron::kernel_from_fast`].
#[inline(always)]
pub(crate) fn factored_step<const K: i32>(
    m: &MultiNeuron,
    pm: f64,
    ps: f64,
    qm: f64,
    qs: f64,
    len: f64,
) -> (f64, f64, f64) {
    let n = &m.neuron;
    match K {
        1 => {
            let (em, es) = pow_decays::<1>(pm, qm);
            (em, es, len * es)
        }
        2 | 4 => {
            let (em, es) = pow_decays::<K>(pm, qm);
            (em, es, (em - es) * n.inv_delta)
        }
        _ => {
            let (em, es) = m.factor_decays(pm, ps, qm, qs);
            (em, es, n.kernel_from_fast(len, em, es))
        }
    }
}

/// The forward scan's inner loop over arrivals where no threshold crossing is possible: from
/// the state at arrival `k - 1` (factored, not refractory, below threshold) it advances arrival
/// by arrival with exactly the arithmetic of [`simulate_arr`], and stops before the first
/// interval that may hold a crossing (or at the end), leaving that interval to the full scan.
#[inline(always)]
fn quiet<const K: i32>(m: &MultiNeuron, arr: &[FArr], k: &mut usize, v: &mut f64, i: &mut f64, t: &mut f64) {
    let n = &m.neuron;
    while *k < arr.len() && *t <= m.t_end {
        let q = &arr[*k];
        if q.a <= *t {
            *i += q.w;
            *k += 1;
            continue;
        }
        let p = &arr[*k - 1];
        let (em, es, kern) = factored_step::<K>(m, p.fm, p.fs, q.fm, q.fs, q.a - *t);
        let (ve, ie) = (*v * em + *i * kern, *i * es);
        if may_cross(n, *v, *i, q.a - *t, ve, ie) {
            return;
        }
        *v = ve;
        *i = ie + q.w;
        *t = q.a;
        *k += 1;
    }
}

/// Reusable buffers of the forward pass, one set per worker thread.
#[derive(Default)]
pub struct Scratch {
    arrivals: Vec<FArr>,
    sort: SortBuf<FArr>,
    times: Vec<f64>,
    um: Vec<f64>,
    us: Vec<f64>,
    sample: BinSample,
    work: BinWork,
}

/// Forward pass of one feed-forward multi-spike layer for one sample. Appends `(neuron, time)`
/// for every output spike, sorted by neuron then time, to `out.0` and its current `I(t^-)` to
/// `out.1`. `factors` (from [`delay_factors`], once per batch) make the scan exp-free between
/// arrivals. Returns `false` if a neuron hit `max_spikes`.
pub fn layer_forward(
    m: &MultiNeuron,
    layer: &LayerRef,
    inputs: &[In],
    factors: Option<&DelayFactors>,
    (out, current): (&mut Vec<In>, &mut Vec<f64>),
    scratch: &mut Scratch,
) -> bool {
    layer_forward_targets(m, layer, inputs, factors, 0..layer.n_out, (out, current), scratch)
}

/// [`layer_forward`] for the targets in `targets` only. Targets are independent, so disjoint
/// ranges of one sample can run on different threads (each with its own `out` and scratch;
/// concatenating the outputs in range order gives [`layer_forward`]'s), for batches with fewer
/// samples than threads.
pub fn layer_forward_targets(
    m: &MultiNeuron,
    layer: &LayerRef,
    inputs: &[In],
    factors: Option<&DelayFactors>,
    targets: std::ops::Range<usize>,
    (out, current): (&mut Vec<In>, &mut Vec<f64>),
    scratch: &mut Scratch,
) -> bool {
    let Scratch { arrivals, sort, times, um, us, sample, work } = scratch;
    let mut ok = true;
    if inputs.is_empty() {
        return true;
    }
    let factors = factors.filter(|f| spike_factors(&m.neuron, inputs, f.max_delay, um, us));
    let (lo, hi) = time_range(inputs, layer);
    if let Some(f) = factors.filter(|_| crate::binned::prepare(m, inputs, um, us, layer.n_in, lo, hi, sample)) {
        return binned_targets(m, layer, f, targets, sample, work, times, (out, current));
    }
    for j in targets {
        let row = j * layer.n_in;
        let w = &layer.weights[row..row + layer.n_in];
        match (factors, layer.kind) {
            (Some(f), DelayKind::Synaptic) => {
                let (fm, fs, d) =
                    (&f.fm[row..row + layer.n_in], &f.fs[row..row + layer.n_in], &layer.delays[row..row + layer.n_in]);
                let items = inputs.iter().zip(um.iter().zip(us.iter())).filter_map(|(&(i, t), (&xm, &xs))| {
                    let i = i as usize;
                    (w[i] != 0.0).then(|| FArr { a: t + d[i], w: w[i], fm: xm * fm[i], fs: xs * fs[i] })
                });
                bucket_fill(inputs.len(), lo, hi, sort, arrivals, items, |x| x.a);
            }
            (Some(f), _) => {
                let (fm, fs) = (&f.fm[row..row + layer.n_in], &f.fs[row..row + layer.n_in]);
                let items = inputs.iter().zip(um.iter().zip(us.iter())).filter_map(|(&(i, t), (&xm, &xs))| {
                    let i = i as usize;
                    (w[i] != 0.0).then(|| FArr { a: t + layer.delay(j, i), w: w[i], fm: xm * fm[i], fs: xs * fs[i] })
                });
                bucket_fill(inputs.len(), lo, hi, sort, arrivals, items, |x| x.a);
            }
            (None, _) => {
                let items = inputs.iter().filter_map(|&(i, t)| {
                    let i = i as usize;
                    (w[i] != 0.0).then(|| FArr { a: t + layer.delay(j, i), w: w[i], fm: f64::NAN, fs: f64::NAN })
                });
                bucket_fill(inputs.len(), lo, hi, sort, arrivals, items, |x| x.a);
            }
        }
        times.clear();
        ok &= simulate_arr(m, arrivals, factors.is_some(), times, current);
        out.extend(times.iter().map(|&t| (j as u32, t)));
    }
    ok
}

/// The binned scan ([`crate::binned`]) of the targets in `targets` on a prepared sample.
#[allow(clippy::too_many_arguments)]
fn binned_targets(
    m: &MultiNeuron,
    layer: &LayerRef,
    f: &DelayFactors,
    targets: std::ops::Range<usize>,
    sample: &BinSample,
    work: &mut BinWork,
    times: &mut Vec<f64>,
    (out, current): (&mut Vec<In>, &mut Vec<f64>),
) -> bool {
    let mut ok = true;
    for j in targets {
        let row = j * layer.n_in;
        times.clear();
        let w = &layer.weights[row..row + layer.n_in];
        ok &= crate::binned::simulate_target(m, f, row, w, sample, work, (times, current));
        out.extend(times.iter().map(|&t| (j as u32, t)));
    }
    ok
}

/// `n` targets in `parts` consecutive ranges (the last ones one shorter).
pub(crate) fn target_ranges(n: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.clamp(1, n.max(1));
    (0..parts).map(|p| p * n / parts..(p + 1) * n / parts).collect()
}

/// [`layer_forward`] with the targets cut into `parts` ranges run on rayon's pool, for batches
/// with fewer samples than threads: the sample's tables are built once and shared, each range
/// has its own buffers, and the outputs are concatenated in range order (the same output as
/// [`layer_forward`]).
pub fn layer_forward_parallel(
    m: &MultiNeuron,
    layer: &LayerRef,
    inputs: &[In],
    factors: Option<&DelayFactors>,
    parts: usize,
    (out, current): (&mut Vec<In>, &mut Vec<f64>),
    scratch: &mut Scratch,
) -> bool {
    use rayon::prelude::*;
    if inputs.is_empty() {
        return true;
    }
    let ranges = target_ranges(layer.n_out, parts);
    let Scratch { um, us, sample, .. } = scratch;
    let factored = factors.filter(|f| spike_factors(&m.neuron, inputs, f.max_delay, um, us));
    let (lo, hi) = time_range(inputs, layer);
    let parts: Vec<(bool, Vec<In>, Vec<f64>)> = match factored
        .filter(|_| crate::binned::prepare(m, inputs, um, us, layer.n_in, lo, hi, sample))
    {
        Some(f) => {
            let sample = &*sample;
            ranges
                .into_par_iter()
                .map(|r| {
                    let (mut work, mut times) = (BinWork::default(), Vec::new());
                    let (mut part, mut part_current) = (Vec::new(), Vec::new());
                    let ok =
                        binned_targets(m, layer, f, r, sample, &mut work, &mut times, (&mut part, &mut part_current));
                    (ok, part, part_current)
                })
                .collect()
        }
        None => ranges
            .into_par_iter()
            .map(|r| {
                let (mut part, mut part_current) = (Vec::new(), Vec::new());
                let ok = layer_forward_targets(
                    m,
                    layer,
                    inputs,
                    factors,
                    r,
                    (&mut part, &mut part_current),
                    &mut Scratch::default(),
                );
                (ok, part, part_current)
            })
            .collect(),
    };
    let mut ok = true;
    for (part_ok, part, part_current) in parts {
        ok &= part_ok;
        out.extend_from_slice(&part);
        current.extend_from_slice(&part_current);
    }
    ok
}

/// Bounds of the arrival times of a layer's inputs: `[min t, max t + max delay]`.
pub fn time_range(inputs: &[In], layer: &LayerRef) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for &(_, t) in inputs {
        lo = lo.min(t);
        hi = hi.max(t);
    }
    let max_delay = layer.delays.iter().fold(0.0_f64, |m, &d| m.max(d));
    (lo, hi + max_delay)
}

/// A recurrent layer: feed-forward weights `ff` (`n_out x n_in`) plus recurrent weights `rec`
/// (`n_out x n_out`, `rec[j, i]` from neuron `i` to neuron `j` of the same layer), each synapse
/// with its own delay.
#[derive(Debug, Clone, Copy)]
pub struct RecLayer<'a> {
    pub ff: LayerRef<'a>,
    pub rec: LayerRef<'a>,
}

/// Forward pass of one recurrent multi-spike layer for one sample. Appends `(neuron, time)` for
/// every spike, sorted by neuron then time, to `out.0` and its current `I(t^-)` to `out.1`.
/// Returns `false` if the layer hit `max_spikes`.
/// See [`crate::recurrent`] (time windows with per-target pending arrivals); this entry point
/// computes the layer's factors on every call, [`crate::recurrent::recurrent_forward_with`] takes
/// them precomputed.
pub fn recurrent_forward(m: &MultiNeuron, layer: &RecLayer, inputs: &[In], out: (&mut Vec<In>, &mut Vec<f64>)) -> bool {
    crate::recurrent::recurrent_forward(m, layer, inputs, out)
}
