//! EventProp (Wunderlich & Pehle 2021) with the delay gradient of Mészáros, Knight & Nowotny
//! (2025), in closed form for DESIGN.md's unit-capacitance convention (issue 4, backward pass).
//!
//! # Derivation for `dV/dt = -V/tau_m + I`, `dI/dt = -I/tau_s`
//!
//! Write the state `x = (V, I)`, `x' = A x` between events with
//! `A = [[-1/tau_m, 1], [0, -1/tau_s]]`, so the free propagator over `s` is
//! `Phi(s) = [[e_m, K(s)], [0, e_s]]` (`e_m = exp(-s/tau_m)`, `e_s = exp(-s/tau_s)`, `K` the PSP
//! kernel). The adjoint `lambda = (lambda_V, lambda_I) = dL/dx(t)` (the sensitivity of the loss
//! to the state at time `t`) runs backwards with the transposed propagator:
//!
//! ```text
//! lambda_V(t - s) = e_m lambda_V(t)
//! lambda_I(t - s) = e_s lambda_I(t) + K(s) lambda_V(t)
//! ```
//!
//! i.e. `-dlambda_V/dt = -lambda_V/tau_m`, `-dlambda_I/dt = lambda_V - lambda_I/tau_s` — the
//! EventProp adjoint ODE without the factors `tau_m`, `tau_s` of the `tau dV/dt = -V + I` form.
//! An arrival only adds a constant to `I`, so `lambda` is continuous there, and
//!
//! * weight: the arrival adds `w` to `I` at `a`: `dL/dw = lambda_I(a)`
//!   (theirs: `-tau_s lambda_I`; the sign and `tau_s` are their normalisation of lambda);
//! * arrival time / delay: moving the jump from `a` to `a + da` changes the state after it by
//!   `-da A (0, w) = -da (w, -w/tau_s)`, so
//!   `dL/da = dL/dd_ji = w (lambda_I(a)/tau_s - lambda_V(a))`
//!   (theirs: `-w (lambda_I - lambda_V)` with their normalisation). An input spike time gets the
//!   sum of `dL/da` over its arrivals (`a = t_i + d_ji`).
//!
//! At a spike `t_k` of the neuron itself (`V(t_k^-) = theta`, `V(t_k^+) = 0`, `I` continuous):
//! `t_k` depends on the state `x_p` after the previous event through `V(t_k; x_p) = theta`, so
//! `dt_k/dx_p = -e_V^T Phi / V'^-` with `V'^- = I(t_k) - theta/tau_m`. The total derivative of the
//! loss with respect to `t_k` (state before it held fixed) is the explicit `G_k = dL/dt_k` (loss
//! term plus everything downstream of the spike, i.e. the `dL/da` of its arrivals) plus the
//! effect of the reset happening later, `-lambda_V^+ V'^+` with `V'^+ = I(t_k)` (the slope just
//! after the reset). Hence the jump
//!
//! ```text
//! lambda_I^- = lambda_I^+,     lambda_V^- = (lambda_V^+ I(t_k) - G_k) / (I(t_k) - theta/tau_m)
//! ```
//!
//! With a refractory time `t_ref`, `V` is clamped at 0 on `(t_k, r_k)`, `r_k = t_k + t_ref`, so
//! `lambda_V = 0` there (V carries no information), `lambda_I` decays with `e_s` alone, and the
//! end of the clamp — which moves with `t_k` — contributes `-lambda_V(r_k^+) I(r_k)`:
//! `lambda_V^- = (lambda_V(r_k^+) I(r_k) - G_k) / (I(t_k) - theta/tau_m)`.
//!
//! Everything is evaluated at the recorded spike times (forward here or on hardware), between
//! events in closed form. Because arrivals do not move `lambda`, the adjoint between two own
//! events is free, and every arrival's gradient is a closed form of the adjoint at the next own
//! event ([`crate::adjoint`]): no sorted arrivals, memory proportional to the number of spikes.

use crate::adjoint::Own;
use crate::binned::ByChannel;
use crate::layer::DelayKind;
use crate::layer::LayerRef;
use crate::multi::{spike_factors, DelayFactors, MultiNeuron, RecLayer};
use crate::ttfs::In;

/// The per-sample part of the backward pass, shared by all targets (and threads) of a sample.
#[derive(Default)]
pub struct SampleTables {
    um: Vec<f64>,
    us: Vec<f64>,
    by_channel: ByChannel,
    t0: f64,
    /// Whether the sample takes the factored path, and whether (with a kernel of the difference
    /// form) it reads the inputs by channel; then the per-input `dL/dt` are in channel order.
    factored: bool,
    by_channel_order: bool,
}

/// The per-target buffers of the backward pass (one set per thread).
#[derive(Default)]
pub struct Work {
    gsrc: Vec<f64>,
    own: Own,
    arrivals: ArrivalBufs,
}

/// Per-target buffers of the passes over the arrivals.
#[derive(Default)]
struct ArrivalBufs {
    /// Per input spike: the index of its arrival's interval at the current target.
    slot: Vec<u32>,
    /// The factored path's interval look-up grid, per-interval sums in lanes and coefficients.
    grid: Vec<u32>,
    ev_pad: Vec<f64>,
    lanes: Vec<[f64; 4]>,
    coef: Vec<Coef>,
}

/// Reusable buffers of the backward pass, one set per worker thread.
#[derive(Default)]
pub struct Scratch {
    tables: SampleTables,
    work: Work,
}

/// Targets per block of the backward pass: `dL/dt` of the inputs is summed over a block's targets
/// and then over the blocks in order, serially or in parallel alike (so the result does not depend
/// on how a batch is spread over threads).
pub const TARGET_BLOCK: usize = 32;

/// The adjoint at an arrival of interval `g` as a linear form of the arrival's factors
/// `x_m = exp((a - t_0)/tau_m)`, `x_s = exp((a - t_0)/tau_s)` (kernels `K = (e_m - e_s)/delta`):
/// `dL/dw = q x_m + r x_s` and `dL/da = w (u x_m + v x_s)`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Coef {
    pub(crate) q: f64,
    pub(crate) r: f64,
    pub(crate) u: f64,
    pub(crate) v: f64,
}

impl Coef {
    /// The form of the interval that ends at own event `g`, from `lambda(E_g^-)` and the event's
    /// inverse factors.
    #[inline]
    pub(crate) fn at(n: &crate::neuron::Neuron, own: &Own, g: usize) -> Self {
        let (lv, li) = (own.lv[g], own.li[g]);
        let a = lv * own.inv_fm[g];
        let q = a * n.inv_delta;
        let r = (li - lv * n.inv_delta) * own.inv_fs[g];
        Coef { q, r, u: q * n.inv_tau_s - a, v: r * n.inv_tau_s }
    }
}

/// Backward pass of one feed-forward multi-spike layer for one sample.
///
/// `outputs` are the layer's spikes sorted by neuron then time, `current` their currents as the
/// forward pass recorded them (see [`crate::Spikes::current`]; empty when not recorded), and
/// `gout[k] = dL/dt` of `outputs[k]`. Accumulates `dL/dw` and the per-synapse `dL/dd`
/// (`(n_out, n_in)` row-major) and `dL/dt` of each input spike into `grads`.
///
/// Each target is independent and needs no sorted arrivals (see [`crate::adjoint`]): one pass over
/// its arrivals sums the currents at its own events (unless they were recorded), a sweep over
/// those events gives the adjoint's jumps, and a second pass evaluates every arrival's gradient in
/// closed form. Targets are taken in blocks of [`TARGET_BLOCK`] (see there).
#[allow(clippy::too_many_arguments)]
pub fn layer_backward(
    m: &MultiNeuron,
    layer: &LayerRef,
    inputs: &[In],
    outputs: &[In],
    current: &[f64],
    gout: &[f64],
    factors: Option<&DelayFactors>,
    grads: (&mut [f64], &mut [f64], &mut [f64]),
    scratch: &mut Scratch,
) {
    let (gw, gd, gin) = grads;
    if inputs.is_empty() || outputs.is_empty() {
        return;
    }
    let Scratch { tables, work } = scratch;
    let factors = prepare_sample(m, layer, inputs, outputs, factors, tables);
    for b in (0..layer.n_out).step_by(TARGET_BLOCK) {
        let targets = b..(b + TARGET_BLOCK).min(layer.n_out);
        let rows = targets.start * layer.n_in..targets.end * layer.n_in;
        let grads = (&mut gw[rows.clone()], &mut gd[rows]);
        backward_block(m, layer, (inputs, outputs, current), gout, factors, tables, targets, grads, work);
        add_gin(tables, &work.gsrc[..inputs.len()], gin);
    }
}

/// [`layer_backward`] with its blocks of targets run on rayon's pool, for batches with fewer
/// samples than threads: the sample's tables are built once and shared, each block has its own
/// buffers, gradient rows are disjoint, and `dL/dt` of the inputs is summed over the blocks in
/// order (bit for bit [`layer_backward`]'s result).
#[allow(clippy::too_many_arguments)]
pub fn layer_backward_parallel(
    m: &MultiNeuron,
    layer: &LayerRef,
    inputs: &[In],
    outputs: &[In],
    current: &[f64],
    gout: &[f64],
    factors: Option<&DelayFactors>,
    grads: (&mut [f64], &mut [f64], &mut [f64]),
    scratch: &mut Scratch,
) {
    use rayon::prelude::*;
    let (gw, gd, gin) = grads;
    if inputs.is_empty() || outputs.is_empty() {
        return;
    }
    let tables = &mut scratch.tables;
    let factors = prepare_sample(m, layer, inputs, outputs, factors, tables);
    let tables = &*tables;
    let rows = TARGET_BLOCK * layer.n_in;
    let n_grad = layer.n_out * layer.n_in;
    let parts: Vec<Vec<f64>> = gw[..n_grad]
        .par_chunks_mut(rows)
        .zip(gd[..n_grad].par_chunks_mut(rows))
        .enumerate()
        .map(|(k, (gw, gd))| {
            let targets = k * TARGET_BLOCK..((k + 1) * TARGET_BLOCK).min(layer.n_out);
            let mut work = Work::default();
            backward_block(m, layer, (inputs, outputs, current), gout, factors, tables, targets, (gw, gd), &mut work);
            work.gsrc.truncate(inputs.len());
            work.gsrc
        })
        .collect();
    for part in parts {
        add_gin(tables, &part, gin);
    }
}

/// [`layer_backward`] restricted to the targets in `targets`: the gradient rows of other targets
/// are left alone, and `gin` receives only these targets' share of `dL/dt` of the inputs. Disjoint
/// ranges of one sample can run on different threads (each with its own `gin`, summed afterwards
/// in a fixed order).
#[allow(clippy::too_many_arguments)]
pub fn layer_backward_targets(
    m: &MultiNeuron,
    layer: &LayerRef,
    inputs: &[In],
    outputs: &[In],
    current: &[f64],
    gout: &[f64],
    factors: Option<&DelayFactors>,
    targets: std::ops::Range<usize>,
    grads: (&mut [f64], &mut [f64], &mut [f64]),
    scratch: &mut Scratch,
) {
    let (gw, gd, gin) = grads;
    if inputs.is_empty() || outputs.is_empty() {
        return;
    }
    let Scratch { tables, work } = scratch;
    let factors = prepare_sample(m, layer, inputs, outputs, factors, tables);
    let rows = targets.start * layer.n_in..targets.end * layer.n_in;
    let grads = (&mut gw[rows.clone()], &mut gd[rows]);
    backward_block(m, layer, (inputs, outputs, current), gout, factors, tables, targets, grads, work);
    add_gin(tables, &work.gsrc[..inputs.len()], gin);
}

/// The per-sample tables; returns the factors when the sample takes the factored path.
fn prepare_sample<'f>(
    m: &MultiNeuron,
    layer: &LayerRef,
    inputs: &[In],
    outputs: &[In],
    factors: Option<&'f DelayFactors>,
    tables: &mut SampleTables,
) -> Option<&'f DelayFactors> {
    let n = &m.neuron;
    let SampleTables { um, us, by_channel, t0, factored, by_channel_order } = tables;
    let t_last = outputs.iter().fold(f64::NEG_INFINITY, |x, o| x.max(o.1)) + m.t_ref;
    *t0 = inputs.iter().fold(f64::INFINITY, |x, i| x.min(i.1));
    let factors = factors.filter(|f| {
        spike_factors(n, inputs, f.max_delay, um, us)
            && (t_last - *t0) * n.inv_tau_m.max(n.inv_tau_s) < crate::multi::MAX_FACTOR_SPAN
    });
    *factored = factors.is_some();
    *by_channel_order = *factored && n.kernel_is_difference();
    if *by_channel_order {
        by_channel.build(inputs, um, us, layer.n_in);
    }
    factors
}

/// Adds a block's `dL/dt` of the inputs (`gsrc`, in the tables' order) to `gin` (input order).
fn add_gin(tables: &SampleTables, gsrc: &[f64], gin: &mut [f64]) {
    if tables.by_channel_order {
        for (&r, x) in tables.by_channel.row.iter().zip(gsrc) {
            gin[r as usize] += x;
        }
    } else {
        for (g, x) in gin.iter_mut().zip(gsrc) {
            *g += x;
        }
    }
}

/// The targets in `targets` (gradient rows `gw`, `gd` of these targets only) on a prepared
/// sample; leaves their share of `dL/dt` of the inputs in `work.gsrc[..inputs.len()]`.
#[allow(clippy::too_many_arguments)]
fn backward_block(
    m: &MultiNeuron,
    layer: &LayerRef,
    (inputs, outputs, current): (&[In], &[In], &[f64]),
    gout: &[f64],
    factors: Option<&DelayFactors>,
    tables: &SampleTables,
    targets: std::ops::Range<usize>,
    (gw, gd): (&mut [f64], &mut [f64]),
    work: &mut Work,
) {
    let n = &m.neuron;
    let Work { gsrc, own, arrivals } = work;
    let SampleTables { um, us, t0, by_channel_order: by_channel, .. } = tables;
    let (t0, by_channel) = (*t0, *by_channel);
    let n_in_spikes = inputs.len();
    gsrc.clear();
    gsrc.resize(n_in_spikes, 0.0);
    gsrc.extend_from_slice(gout);
    arrivals.slot.clear();
    arrivals.slot.resize(n_in_spikes, u32::MAX);
    let mut k = 0;
    while k < outputs.len() {
        let j = outputs[k].0 as usize;
        let start = k;
        while k < outputs.len() && outputs[k].0 as usize == j {
            k += 1;
        }
        if !targets.contains(&j) || gout[start..k].iter().all(|&g| g == 0.0) {
            // No loss reaches this neuron's spikes: its adjoint is 0 throughout.
            continue;
        }
        own.clear();
        own.push_neuron(m, (start..k).map(|q| (outputs[q].1, (n_in_spikes + q) as u32)));
        own.finish(m, factors.map(|_| t0));
        let row = j * layer.n_in;
        // This target's gradient rows in the block's buffers.
        let rel = (j - targets.start) * layer.n_in;
        let (gw, gd) = (&mut gw[rel..rel + layer.n_in], &mut gd[rel..rel + layer.n_in]);
        if let (Some(f), true) = (factors, by_channel) {
            let w = &layer.weights[row..row + layer.n_in];
            // Without a refractory time the own events are the spikes, whose currents the forward
            // pass may have recorded.
            let recorded = (current.len() == outputs.len() && m.t_ref == 0.0).then(|| &current[start..k]);
            target_factored(m, &tables.by_channel, f, row, w, own, recorded, gsrc, (gw, gd), arrivals);
            continue;
        }
        let w = &layer.weights[row..row + layer.n_in];
        let n_ev = own.time.len();
        // Pass 1: the currents at the own events (and each arrival's interval, kept for pass 2).
        match (factors, layer.kind) {
            (Some(f), DelayKind::Synaptic) => {
                let (fs, d) = (&f.fs[row..row + layer.n_in], &layer.delays[row..row + layer.n_in]);
                for (r, &(i, t)) in inputs.iter().enumerate() {
                    let i = i as usize;
                    let g = own.interval(0, t + d[i]);
                    arrivals.slot[r] = g as u32;
                    if g < n_ev {
                        own.cur[g] += w[i] * (us[r] * fs[i]) * own.inv_fs[g];
                    }
                }
            }
            _ => {
                for (r, &(i, t)) in inputs.iter().enumerate() {
                    let i = i as usize;
                    let a = t + layer.delay(j, i);
                    let g = own.interval(0, a);
                    arrivals.slot[r] = g as u32;
                    if g < n_ev {
                        own.cur[g] += w[i] * (-(own.time[g] - a) * n.inv_tau_s).exp();
                    }
                }
            }
        }
        own.currents(m, 0);
        own.sweep(m, 0, gsrc);
        // Pass 2: every arrival's gradient from the adjoint of its interval.
        match (factors, layer.kind) {
            (Some(f), DelayKind::Synaptic) => {
                let (fm, fs, d) =
                    (&f.fm[row..row + layer.n_in], &f.fs[row..row + layer.n_in], &layer.delays[row..row + layer.n_in]);
                for (r, &(i, t)) in inputs.iter().enumerate() {
                    let g = arrivals.slot[r] as usize;
                    if g >= n_ev {
                        continue;
                    }
                    let i = i as usize;
                    let s = own.time[g] - (t + d[i]);
                    let (em, es) = ((um[r] * fm[i]) * own.inv_fm[g], (us[r] * fs[i]) * own.inv_fs[g]);
                    let (lv, li) = own.adjoint_at(m, g, s, em, es);
                    gw[i] += li;
                    let ga = w[i] * (li * n.inv_tau_s - lv);
                    gd[i] += ga;
                    gsrc[r] += ga;
                }
            }
            _ => {
                for (r, &(i, t)) in inputs.iter().enumerate() {
                    let g = arrivals.slot[r] as usize;
                    if g >= n_ev {
                        continue;
                    }
                    let i = i as usize;
                    let s = own.time[g] - (t + layer.delay(j, i));
                    let (em, es) = n.decays(s);
                    let (lv, li) = own.adjoint_at(m, g, s, em, es);
                    gw[i] += li;
                    let ga = w[i] * (li * n.inv_tau_s - lv);
                    gd[i] += ga;
                    gsrc[r] += ga;
                }
            }
        }
    }
}

/// One target of [`layer_backward_targets`] on the factored path with a kernel of the difference
/// form, synapse by synapse over the inputs grouped by channel (`bc`; `gsrc` in that order): the
/// own events' currents (`recorded` by the forward pass, else per-interval sums of `w x_s` over
/// the arrivals), the adjoint sweep, then every arrival's gradient as a linear form of its factors
/// ([`Coef`]): per arrival a grid look-up of its interval and a handful of multiply-adds, no
/// `exp`; a synapse's gradients are summed in registers.
#[allow(clippy::too_many_arguments)]
fn target_factored(
    m: &MultiNeuron,
    bc: &ByChannel,
    f: &DelayFactors,
    row: usize,
    w: &[f64],
    own: &mut Own,
    recorded: Option<&[f64]>,
    gsrc: &mut [f64],
    (gw, gd): (&mut [f64], &mut [f64]),
    bufs: &mut ArrivalBufs,
) {
    let ArrivalBufs { grid, ev_pad, lanes, coef, .. } = bufs;
    let n = &m.neuron;
    let n_in = w.len();
    let (d, fm, fs, wfs) =
        (&f.delay[row..row + n_in], &f.fm[row..row + n_in], &f.fs[row..row + n_in], &f.wfs[row..row + n_in]);
    let n_ev = own.time.len();
    // Interval look-up over 16 cells per event: `grid[c]` is the number of events in cells before
    // `c`, with an event's cell computed exactly as an arrival's (the map is monotone, so an event
    // in an earlier cell is before the arrival, one in a later cell after it, and only the
    // events sharing the arrival's cell, usually none, are compared).
    let (lo, last) = (own.time[0], own.time[n_ev - 1]);
    let cells = 16 * n_ev;
    let scale = if last > lo { cells as f64 / (last - lo) } else { 0.0 };
    let cell = |a: f64| (((a - lo) * scale) as u32 as usize).min(cells);
    grid.clear();
    grid.resize(cells + 2, 0);
    for &e in &own.time {
        grid[cell(e) + 1] += 1;
    }
    for c in 0..=cells {
        grid[c + 1] += grid[c];
    }
    ev_pad.clear();
    ev_pad.extend_from_slice(&own.time);
    ev_pad.push(f64::INFINITY);
    let (grid, ev_pad) = (&*grid, &*ev_pad);
    // The first event after `a`, for `a` before the last event.
    let interval = |a: f64| {
        let c = cell(a);
        let (g0, g_end) = (grid[c] as usize, grid[c + 1] as usize);
        // Most cells hold no event and a few one: a comparison without a branch (`ev_pad` ends
        // in +inf, and the event after a cell lies after the arrival); the rare cell with
        // several events takes the loop.
        let mut g = g0 + (ev_pad[g0] <= a) as usize;
        if g_end > g0 + 1 {
            while g < g_end && ev_pad[g] <= a {
                g += 1;
            }
        }
        g
    };
    match recorded {
        Some(current) => own.cur[..n_ev].copy_from_slice(current),
        None => {
            // Per interval the sum of `w x_s`, in four lanes taken in turn (a neuron with few
            // events puts most arrivals in one interval, and a single sum would chain every
            // arrival's addition to the previous one's).
            lanes.clear();
            lanes.resize(n_ev, [0.0; 4]);
            let mut lane = 0;
            for i in 0..n_in {
                let (first, end) = (bc.start[i] as usize, bc.start[i + 1] as usize);
                let (di, wfs_i) = (d[i], wfs[i]);
                for (&t, &us) in bc.time[first..end].iter().zip(&bc.us[first..end]) {
                    let a = t + di;
                    if a >= last {
                        // So do this channel's later arrivals (times ascend within a channel).
                        break;
                    }
                    lanes[interval(a)][lane & 3] += us * wfs_i;
                    lane += 1;
                }
            }
            for ((c, l), x) in own.cur[..n_ev].iter_mut().zip(lanes.iter()).zip(&own.inv_fs) {
                *c = ((l[0] + l[1]) + (l[2] + l[3])) * x;
            }
            own.currents(m, 0);
        }
    }
    own.sweep(m, 0, gsrc);
    coef.clear();
    coef.extend((0..n_ev).map(|g| Coef::at(n, own, g)));
    // Every arrival's gradient.
    for i in 0..n_in {
        let (first, end) = (bc.start[i] as usize, bc.start[i + 1] as usize);
        let (di, fm_i, fs_i, w_i) = (d[i], fm[i], fs[i], w[i]);
        let (mut acc_w, mut acc_d) = (0.0, 0.0);
        let spikes = bc.time[first..end].iter().zip(bc.um[first..end].iter().zip(&bc.us[first..end]));
        for ((&t, (&um, &us)), gsrc) in spikes.zip(&mut gsrc[first..end]) {
            let a = t + di;
            if a >= last {
                break;
            }
            let c = coef[interval(a)];
            let (xm, xs) = (um * fm_i, us * fs_i);
            acc_w += c.q * xm + c.r * xs;
            let ga = w_i * (c.u * xm + c.v * xs);
            acc_d += ga;
            *gsrc += ga;
        }
        gw[i] += acc_w;
        gd[i] += acc_d;
    }
}

/// Backward pass of one recurrent multi-spike layer for one sample.
///
/// `outputs` sorted by neuron then time, `current` their recorded currents (empty when not
/// recorded), `gout[k] = dL/dt` of `outputs[k]` from outside the layer. The gradient buffers are
/// `gw = [ff (n_out x n_in) | rec (n_out x n_out)]`, `gd` the same; `gin` gets `dL/dt` of each
/// input spike. See [`crate::recurrent`]; this entry point
/// computes the layer's factors on every call and keeps its buffers per thread (`_scratch` is
/// not needed), [`crate::recurrent::recurrent_backward_with`] takes both from the caller.
#[allow(clippy::too_many_arguments)]
pub fn recurrent_backward(
    m: &MultiNeuron,
    layer: &RecLayer,
    inputs: &[In],
    outputs: &[In],
    current: &[f64],
    gout: &[f64],
    grads: (&mut [f64], &mut [f64], &mut [f64]),
    _scratch: &mut Scratch,
) {
    crate::recurrent::recurrent_backward(m, layer, inputs, outputs, current, gout, grads)
}
