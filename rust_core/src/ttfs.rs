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
use crate::neuron::Neuron;
use crate::solver::{crossing_in_interval, first_crossing};

/// One input spike of a sample: (source neuron, time).
pub type In = (u32, f64);

/// Reusable buffers, one set per worker thread.
#[derive(Default)]
pub struct Scratch {
    arrivals: Vec<(f64, f64, u32)>,
    order: Vec<(f64, u32)>,
    exps: Vec<f64>,
    by_time: Vec<In>,
}

/// Sorts arrivals by time. Inputs are pre-sorted by spike time, so with delays that are small
/// against the gaps between spikes the arrivals are nearly sorted and insertion sort is linear.
#[inline]
fn sort_arrivals(arrivals: &mut [(f64, f64, u32)]) {
    if arrivals.len() > 48 {
        // Arrival times are finite (inputs and parameters are validated).
        arrivals.sort_unstable_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
        return;
    }
    for k in 1..arrivals.len() {
        let x = arrivals[k];
        let mut m = k;
        while m > 0 && arrivals[m - 1].0 > x.0 {
            arrivals[m] = arrivals[m - 1];
            m -= 1;
        }
        arrivals[m] = x;
    }
}

/// The smallest `V'(T)` used in a gradient. At an exact tangency the true derivative is
/// infinite; this floor keeps it finite (and huge) instead of producing inf/NaN.
const SLOPE_FLOOR: f64 = 1e-12;

/// First spike time of one neuron given its arrivals sorted by time: `(arrival, weight, _)`.
pub fn first_spike(n: &Neuron, arrivals: &[(f64, f64, u32)]) -> Option<f64> {
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
        let (v_end, i_end) = n.evolve(v, i, len);
        if let Some(s) = crossing_in_interval(n, v, i, len, v_end, i_end) {
            return Some(a + s);
        }
        (v, i) = (v_end, i_end);
    }
    None
}

/// Forward pass of one TTFS layer for one sample. Appends `(neuron, time)` for every output
/// neuron that spikes, in neuron order.
pub fn layer_forward(
    n: &Neuron,
    layer: &LayerRef,
    inputs: &[In],
    out: &mut Vec<In>,
    scratch: &mut Scratch,
) {
    let Scratch { arrivals, order, by_time, .. } = scratch;
    if inputs.is_empty() {
        return;
    }
    by_time.clear();
    by_time.extend_from_slice(inputs);
    by_time.sort_unstable_by(|a, b| a.1.partial_cmp(&b.1).unwrap_or(std::cmp::Ordering::Equal));
    let inputs = &by_time[..];
    // Without synaptic delays the arrival order is the same for every target: sort once.
    let shared_order = layer.kind != DelayKind::Synaptic;
    if shared_order {
        order.clear();
        order.extend(inputs.iter().map(|&(i, t)| (t + axonal(layer, i as usize), i)));
        order.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    }
    for j in 0..layer.n_out {
        arrivals.clear();
        if shared_order {
            let dj = dend(layer, j);
            let row = &layer.weights[j * layer.n_in..(j + 1) * layer.n_in];
            arrivals.extend(order.iter().map(|&(a, i)| (a + dj, row[i as usize], i)));
        } else {
            fill_arrivals(layer, j, inputs, arrivals);
            sort_arrivals(arrivals);
        }
        if let Some(t) = first_spike(n, arrivals) {
            out.push((j as u32, t));
        }
    }
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
fn fill_arrivals(layer: &LayerRef, j: usize, inputs: &[In], arrivals: &mut Vec<(f64, f64, u32)>) {
    let row = &layer.weights[j * layer.n_in..(j + 1) * layer.n_in];
    arrivals.extend(
        inputs.iter().enumerate().map(|(r, &(i, t))| (t + layer.delay(j, i as usize), row[i as usize], r as u32)),
    );
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
    gw: &mut [f64],
    gd: &mut [f64],
    gin: &mut [f64],
    scratch: &mut Scratch,
) {
    let Scratch { arrivals, exps, .. } = scratch;
    for (&(j, t_out), &g) in outputs.iter().zip(gout) {
        if g == 0.0 {
            continue;
        }
        let j = j as usize;
        arrivals.clear();
        fill_arrivals(layer, j, inputs, arrivals);
        // Causal set: arrivals strictly before the spike (an arrival at T has K = 0 and
        // does not influence the crossing from the left). First pass: the current at T, with
        // each arrival's exp(-s/tau_s) kept for the second pass.
        let mut current = 0.0;
        exps.clear();
        for &(a, w, _) in arrivals.iter() {
            let e = if a < t_out { (-(t_out - a) * n.inv_tau_s).exp() } else { f64::NAN };
            if a < t_out {
                current += w * e;
            }
            exps.push(e);
        }
        let slope = (current - n.theta * n.inv_tau_m).max(SLOPE_FLOOR);
        let scale = g / slope;
        for (&(a, w, r), &e) in arrivals.iter().zip(exps.iter()) {
            if a >= t_out {
                continue;
            }
            let k = n.kernel_with(t_out - a, e);
            let i = inputs[r as usize].0 as usize;
            gw[j * layer.n_in + i] -= scale * k;
            // K'(s) = -K(s)/tau_m + exp(-s/tau_s)
            let ga = scale * w * (e - k * n.inv_tau_m);
            gd[j * layer.n_in + i] += ga;
            gin[r as usize] += ga;
        }
    }
}
