//! Time-to-first-spike layers for one sample: the causal-set scan (forward) and the
//! implicit-function-theorem gradients (backward, DelGrad / Fast&Deep).
//!
//! Forward: sort the arrivals `a = t_i + d_ji`; walk them keeping the state `(V, I)`; after each
//! prefix ask the solver for the first crossing before the next arrival. The first prefix that
//! yields one fixes the spike; no time grid is involved.
//!
//! Backward: at the spike, `V(T; w, a) = theta` with `V = sum_k w_k K(T - a_k)` over the causal
//! arrivals, so `dT/dp = -(dV/dp) / (dV/dT)`:
//! `dT/dw_k = -K(T - a_k) / V'(T)`, `dT/da_k = w_k K'(T - a_k) / V'(T)`, with
//! `V'(T) = I(T) - theta / tau_m`. A delay enters only through `a_k`, so `dT/dd_ji = dT/dt_i`
//! for every synapse `i -> j` that carried a causal arrival.

use crate::layer::{DelayKind, LayerRef};
use crate::multi::{bucket_sort_above, SortBuf};
use crate::neuron::Neuron;
use crate::solver::{crossing_in_interval, first_crossing, may_cross};

/// One input spike of a sample: (source neuron, time).
pub type In = (u32, f64);

/// Reusable buffers, one set per worker thread.
#[derive(Default)]
pub struct Scratch {
    arrivals: Vec<(f64, f64, u32)>,
    order: Vec<(f64, u32)>,
    exps: Vec<(f64, f64)>,
    by_time: Vec<In>,
    fwd: Vec<(f64, f64, f64)>,
    sort: SortBuf<(f64, f64, f64)>,
    up: Vec<f64>,
    shared: SharedState,
}

/// The state of every target of a shared-order layer during [`scan_shared`].
#[derive(Default)]
struct SharedState {
    v: Vec<f64>,
    i: Vec<f64>,
    spike: Vec<f64>,
}

/// Arrivals of up to this many inputs are insertion-sorted, more are bucket-sorted.
const SMALL_SORT: usize = 16;

/// The smallest `V'(T)` used in a gradient by default. At an exact tangency the true derivative
/// is infinite; this floor keeps it finite (and huge) instead of producing inf/NaN.
pub const SLOPE_FLOOR: f64 = 1e-12;

/// First spike time of one neuron given its arrivals sorted by time: `(arrival, weight, _)`.
pub fn first_spike<T: Copy>(n: &Neuron, arrivals: &[(f64, f64, T)]) -> Option<f64> {
    scan(n, arrivals, |_, _, len| n.decays(len))
}

/// The causal-set scan. `decay(k, m, len)` gives `(exp(-len/tau_m), exp(-len/tau_s))` for the
/// interval from arrival `k` to arrival `m`, `len` long.
#[inline]
fn scan<T: Copy>(
    n: &Neuron,
    arrivals: &[(f64, f64, T)],
    decay: impl Fn(usize, usize, f64) -> (f64, f64),
) -> Option<f64> {
    let (mut v, mut i) = (0.0, 0.0);
    let mut k = 0;
    while k < arrivals.len() {
        let a = arrivals[k].0;
        // Simultaneous arrivals act as one jump.
        while k < arrivals.len() && arrivals[k].0 == a {
            i += arrivals[k].1;
            k += 1;
        }
        if v >= n.theta {
            // Only reachable by rounding when the previous interval's crossing sat on its end.
            return Some(a);
        }
        if k == arrivals.len() {
            return first_crossing(n, v, i, f64::INFINITY).map(|s| a + s);
        }
        let len = arrivals[k].0 - a;
        let (em, es) = decay(k - 1, k, len);
        let (v_end, i_end) = n.evolve_with(v, i, len, em, es);
        if let Some(s) = crossing_in_interval(n, v, i, len, v_end, i_end) {
            return Some(a + s);
        }
        (v, i) = (v_end, i_end);
    }
    None
}

/// `exp(d_ji / tau_m)` for every synapse of a layer, for [`layer_forward`]'s exp-free scan;
/// `None` when the neuron's ratio needs two rates.
///
/// Why: the decay over an interval is `exp(-(a_m - a_k)/tau_m) = x_k / x_m` with
/// `x = exp((t - t_ref)/tau_m) exp(d/tau_m)` per arrival, a product of one factor per input
/// spike (shared by all targets) and one per synapse (shared by the whole batch). That removes
/// the exponential from every interval of the scan, which was most of its cost.
pub fn delay_factors(n: &Neuron, layer: &LayerRef) -> Option<DelayFactors> {
    if !n.single_rate() {
        return None;
    }
    let mut per_synapse = Vec::with_capacity(layer.n_out * layer.n_in);
    for j in 0..layer.n_out {
        for i in 0..layer.n_in {
            per_synapse.push((layer.delay(j, i) * n.inv_tau_m).exp());
        }
    }
    let max_delay = layer.delays.iter().fold(0.0_f64, |m, &d| m.max(d));
    Some(DelayFactors { per_synapse, max_delay })
}

/// Per-batch data of a layer for the exp-free scan (see [`delay_factors`]).
#[derive(Debug, Clone)]
pub struct DelayFactors {
    /// `exp(d_ji / tau_m)`, `(n_out, n_in)` row-major.
    pub per_synapse: Vec<f64>,
    /// The largest delay, which bounds a sample's span of arrival times.
    pub max_delay: f64,
}

/// What [`layer_forward`] needs of a layer once per batch rather than once per sample.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The exp-free scan's factors (see [`delay_factors`]).
    pub factors: Option<DelayFactors>,
    /// For layers whose arrival order is the same for every target (no delays, axonal delays):
    /// the weights by source, `(n_in, n_out)` row-major, so that an arrival updates every
    /// target from one contiguous row (see [`scan_shared`]).
    by_source: Option<Vec<f64>>,
}

/// The per-batch data of `layer` for [`layer_forward`].
pub fn prepare(n: &Neuron, layer: &LayerRef) -> Prepared {
    let by_source = matches!(layer.kind, DelayKind::None | DelayKind::Axonal).then(|| {
        let mut t = vec![0.0; layer.n_in * layer.n_out];
        for j in 0..layer.n_out {
            for i in 0..layer.n_in {
                t[i * layer.n_out + j] = layer.weights[j * layer.n_in + i];
            }
        }
        t
    });
    Prepared { factors: delay_factors(n, layer), by_source }
}

/// Spans longer than this many `tau_m` would overflow the factors: such samples take the
/// exponential path.
const MAX_FACTOR_SPAN: f64 = 500.0;

/// Forward pass of one TTFS layer for one sample. Appends `(neuron, time)` for every output
/// neuron that spikes, in neuron order.
pub fn layer_forward(
    n: &Neuron,
    layer: &LayerRef,
    inputs: &[In],
    prepared: &Prepared,
    out: &mut Vec<In>,
    scratch: &mut Scratch,
) {
    let Scratch { order, by_time, fwd, up, sort, shared, .. } = scratch;
    let factors = prepared.factors.as_ref();
    if inputs.is_empty() {
        return;
    }
    // Few inputs: their arrivals are insertion-sorted per target below, which is linear when
    // the inputs come in time order and the delays are small against their gaps, so sort the
    // inputs once. More inputs: the arrivals are bucket-sorted, and the input order does not
    // matter.
    let inputs = if inputs.len() <= SMALL_SORT {
        by_time.clear();
        by_time.extend_from_slice(inputs);
        // Times are finite (validated at the boundary), so total order = numeric order here.
        by_time.sort_unstable_by(|a, b| a.1.total_cmp(&b.1));
        &by_time[..]
    } else {
        inputs
    };
    let (t_ref, t_last) =
        inputs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| (lo.min(x.1), hi.max(x.1)));
    let factors =
        factors.filter(|f| (t_last - t_ref + f.max_delay) * n.inv_tau_m < MAX_FACTOR_SPAN).map(|f| &f.per_synapse[..]);
    up.clear();
    if factors.is_some() {
        up.extend(inputs.iter().map(|&(_, t)| ((t - t_ref) * n.inv_tau_m).exp()));
    }
    // Without synaptic delays the arrival order is the same for every target: sort once.
    let shared_order = layer.kind != DelayKind::Synaptic;
    if shared_order {
        order.clear();
        order.extend(inputs.iter().enumerate().map(|(r, &(i, t))| (t + axonal(layer, i as usize), r as u32)));
        order.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
        if let Some(by_source) = &prepared.by_source {
            // No delays or axonal ones: the factor of an arrival is the same for every target
            // (that of row 0 stands for all).
            let fsrc = factors.map(|f| &f[..layer.n_in]);
            return scan_shared(n, layer.n_out, inputs, order, up, fsrc, by_source, shared, out);
        }
    }
    for j in 0..layer.n_out {
        fwd.clear();
        let row = &layer.weights[j * layer.n_in..(j + 1) * layer.n_in];
        let frow = factors.map(|f| &f[j * layer.n_in..(j + 1) * layer.n_in]);
        let factor = |r: usize, i: usize| frow.map_or(0.0, |f| up[r] * f[i]);
        if shared_order {
            let dj = dend(layer, j);
            fwd.extend(order.iter().map(|&(a, r)| {
                let i = inputs[r as usize].0 as usize;
                (a + dj, row[i], factor(r as usize, i))
            }));
        } else {
            let drow = &layer.delays[j * layer.n_in..(j + 1) * layer.n_in];
            match frow {
                Some(f) => fwd.extend(inputs.iter().zip(up.iter()).map(|(&(i, t), &u)| {
                    let i = i as usize;
                    (t + drow[i], row[i], u * f[i])
                })),
                None => fwd.extend(inputs.iter().map(|&(i, t)| (t + drow[i as usize], row[i as usize], 0.0))),
            }
            bucket_sort_above(fwd, sort, |x| x.0, SMALL_SORT);
        }
        let t = if frow.is_some() {
            let f = &fwd[..];
            scan(n, f, |k, m, _| {
                let em = f[k].2 / f[m].2;
                (em, n.es_from_em(em))
            })
        } else {
            first_spike(n, fwd)
        };
        if let Some(t) = t {
            out.push((j as u32, t));
        }
    }
}

/// The causal-set scan of [`scan`] for every target of a layer at once, for layers whose
/// targets all see the same arrival times (`order`: arrival time and input row, sorted).
///
/// Why: the intervals between arrivals, hence their decays and the kernel over them, are then
/// shared, and each interval costs one tight pass over the targets' states (no per-target
/// arrival lists to build and sort); an arrival adds its source's row of `by_source` to every
/// target's current. The operations per target are those of [`scan`], in the same order, so
/// the spike times are the same to the bit. Targets that have spiked keep being updated (no
/// branch in the update); only their spike time is read.
#[allow(clippy::too_many_arguments)]
fn scan_shared(
    n: &Neuron,
    n_out: usize,
    inputs: &[In],
    order: &[(f64, u32)],
    up: &[f64],
    fsrc: Option<&[f64]>,
    by_source: &[f64],
    st: &mut SharedState,
    out: &mut Vec<In>,
) {
    let SharedState { v, i, spike } = st;
    for x in [&mut *v, &mut *i] {
        x.clear();
        x.resize(n_out, 0.0);
    }
    spike.clear();
    spike.resize(n_out, f64::NAN);
    let mut waiting = n_out;
    let mut k = 0;
    while k < order.len() && waiting > 0 {
        let a = order[k].0;
        // Simultaneous arrivals act as one jump.
        while k < order.len() && order[k].0 == a {
            let src = inputs[order[k].1 as usize].0 as usize;
            for (ij, w) in i.iter_mut().zip(&by_source[src * n_out..(src + 1) * n_out]) {
                *ij += w;
            }
            k += 1;
        }
        if k == order.len() {
            for ((sp, &vj), &ij) in spike.iter_mut().zip(v.iter()).zip(i.iter()) {
                if sp.is_nan() {
                    if let Some(s) = first_crossing(n, vj, ij, f64::INFINITY) {
                        *sp = a + s;
                    }
                }
            }
            break;
        }
        let next = order[k].0;
        let len = next - a;
        let (em, es) = match fsrc {
            Some(f) => {
                let factor = |k: usize| {
                    let r = order[k].1 as usize;
                    up[r] * f[inputs[r].0 as usize]
                };
                let em = factor(k - 1) / factor(k);
                (em, n.es_from_em(em))
            }
            None => n.decays(len),
        };
        let kern = n.kernel_from(len, em, es);
        for ((sp, vj), ij) in spike.iter_mut().zip(v.iter_mut()).zip(i.iter_mut()) {
            let (v_end, i_end) = (*vj * em + *ij * kern, *ij * es);
            // The cheap test inline, so that the common interval makes no call; the solver
            // repeats it only for the few that pass.
            if sp.is_nan() && may_cross(n, *vj, *ij, len, v_end, i_end) {
                if let Some(s) = crossing_in_interval(n, *vj, *ij, len, v_end, i_end) {
                    *sp = a + s;
                    waiting -= 1;
                }
            }
            // `scan` checks this at the next arrival: reachable only by rounding, when the
            // crossing sat on the interval's end (the jumps there change I, not V).
            if sp.is_nan() && v_end >= n.theta {
                *sp = next;
                waiting -= 1;
            }
            (*vj, *ij) = (v_end, i_end);
        }
    }
    out.extend(spike.iter().enumerate().filter(|(_, t)| !t.is_nan()).map(|(j, &t)| (j as u32, t)));
}

#[inline]
fn axonal(layer: &LayerRef, i: usize) -> f64 {
    if layer.kind == DelayKind::Axonal {
        layer.delays[i]
    } else {
        0.0
    }
}

#[inline]
fn dend(layer: &LayerRef, j: usize) -> f64 {
    if layer.kind == DelayKind::Dendritic {
        layer.delays[j]
    } else {
        0.0
    }
}

#[inline]
fn fill_causal(layer: &LayerRef, j: usize, inputs: &[In], t_out: f64, arrivals: &mut Vec<(f64, f64, u32)>) {
    let row = &layer.weights[j * layer.n_in..(j + 1) * layer.n_in];
    arrivals.clear();
    arrivals.resize(inputs.len(), (0.0, 0.0, 0));
    // Causal set: arrivals strictly before the spike (an arrival at T has K = 0 and does not
    // influence the crossing from the left). Kept without branching: whether an arrival is
    // causal is close to a coin flip, and a branch on it mispredicts.
    let mut n = 0;
    let mut keep = |r: usize, a: f64, i: usize| {
        arrivals[n] = (a, row[i], r as u32);
        n += (a < t_out) as usize;
    };
    if layer.kind == DelayKind::Synaptic {
        let d = &layer.delays[j * layer.n_in..(j + 1) * layer.n_in];
        for (r, &(i, t)) in inputs.iter().enumerate() {
            keep(r, t + d[i as usize], i as usize);
        }
    } else {
        for (r, &(i, t)) in inputs.iter().enumerate() {
            keep(r, t + layer.delay(j, i as usize), i as usize);
        }
    }
    arrivals.truncate(n);
}

/// Backward pass of one TTFS layer for one sample.
///
/// `outputs[k] = (j, T)` with loss gradient `gout[k] = dL/dT`. Accumulates `dL/dw` and the
/// per-synapse `dL/dd` (both `(n_out, n_in)` row-major) and `dL/dt` of each input spike.
#[allow(clippy::too_many_arguments)]
pub fn layer_backward(
    n: &Neuron,
    layer: &LayerRef,
    inputs: &[In],
    outputs: &[In],
    gout: &[f64],
    factors: Option<&DelayFactors>,
    min_slope: f64,
    grads: (&mut [f64], &mut [f64], &mut [f64]),
    scratch: &mut Scratch,
) {
    let (gw, gd, gin) = grads;
    let Scratch { arrivals, exps, up, .. } = scratch;
    if inputs.is_empty() {
        return;
    }
    let factors = factors.map(|f| &f.per_synapse[..]);
    // The same per-spike x per-synapse factors as the forward scan, so that each causal
    // arrival costs a product instead of an exponential.
    let t_ref = inputs.iter().fold(f64::INFINITY, |m, x| m.min(x.1));
    up.clear();
    if factors.is_some() {
        up.extend(inputs.iter().map(|&(_, t)| ((t - t_ref) * n.inv_tau_m).exp()));
    }
    for (&(j, t_out), &g) in outputs.iter().zip(gout) {
        if g == 0.0 {
            continue;
        }
        let j = j as usize;
        let frow = factors
            .filter(|_| (t_out - t_ref) * n.inv_tau_m < MAX_FACTOR_SPAN)
            .map(|f| &f[j * layer.n_in..(j + 1) * layer.n_in]);
        let y = (-(t_out - t_ref) * n.inv_tau_m).exp();
        fill_causal(layer, j, inputs, t_out, arrivals);
        // First pass: the current at T, with each arrival's decays kept for the second pass.
        let mut current = 0.0;
        exps.clear();
        for &(a, w, r) in arrivals.iter() {
            let d = if let Some(f) = frow {
                let em = up[r as usize] * f[inputs[r as usize].0 as usize] * y;
                (em, n.es_from_em(em))
            } else {
                let s = t_out - a;
                ((-s * n.inv_tau_m).exp(), (-s * n.inv_tau_s).exp())
            };
            current += w * d.1;
            exps.push(d);
        }
        let slope = (current - n.theta * n.inv_tau_m).max(min_slope);
        let scale = g / slope;
        for (&(a, w, r), &(em, es)) in arrivals.iter().zip(exps.iter()) {
            let k = n.kernel_from(t_out - a, em, es);
            let i = inputs[r as usize].0 as usize;
            gw[j * layer.n_in + i] -= scale * k;
            // K'(s) = -K(s)/tau_m + exp(-s/tau_s)
            let ga = scale * w * (es - k * n.inv_tau_m);
            gd[j * layer.n_in + i] += ga;
            gin[r as usize] += ga;
        }
    }
}
