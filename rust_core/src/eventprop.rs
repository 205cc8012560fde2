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
//! events in closed form; memory is proportional to the number of spikes and arrivals.

use crate::adjoint::Own;
use crate::layer::DelayKind;
use crate::layer::LayerRef;
use crate::multi::{bucket_sort, factored_step, spike_factors, DelayFactors, MultiNeuron, RecLayer, SortBuf};
use crate::ttfs::{In, SLOPE_FLOOR};

/// One arrival at a neuron in the backward pass: time, weight, index of its synapse in the
/// gradient buffers, index of its source spike in the `dL/dt` buffer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Arr {
    pub a: f64,
    pub w: f64,
    /// `exp((a - t_0)/tau_m)`, `exp((a - t_0)/tau_s)` (see [`crate::multi::DelayFactors`]);
    /// only read when the trace is `factored`.
    pub fm: f64,
    pub fs: f64,
    pub syn: u32,
    pub src: u32,
}

/// `I(to)` from the arrivals strictly before `to`, continuing a forward sweep whose state is
/// `(cur_i at cur_t, next arrival k)`.
/// `K` as in [`factored_step`] (the factored decays' ratio fixed at compile time).
#[inline(always)]
fn current_at<const K: i32>(
    m: &MultiNeuron,
    arr: &[Arr],
    factored: bool,
    to: f64,
    cur_i: &mut f64,
    cur_t: &mut f64,
    k: &mut usize,
) -> f64 {
    let n = &m.neuron;
    while *k < arr.len() && arr[*k].a < to {
        let x = arr[*k];
        if *cur_t > f64::NEG_INFINITY {
            *cur_i *= if factored {
                let p = &arr[*k - 1];
                factored_step::<K>(m, p.fm, p.fs, x.fm, x.fs, 0.0).1
            } else {
                (-(x.a - *cur_t) * n.inv_tau_s).exp()
            };
        }
        *cur_i += x.w;
        *cur_t = x.a;
        *k += 1;
    }
    if *cur_t == f64::NEG_INFINITY {
        0.0
    } else {
        *cur_i * (-(to - *cur_t) * n.inv_tau_s).exp()
    }
}

/// One neuron's events and its adjoint state, walked backwards in time.
#[derive(Debug, Default)]
pub struct Trace {
    /// Arrivals sorted by time (only those before the end of the last spike's refractory time
    /// matter: after it the adjoint is 0).
    pub arrivals: Vec<Arr>,
    /// The neuron's spikes: time, index of the spike in the `dL/dt` buffer (sorted by time).
    pub spikes: Vec<(f64, u32)>,
    /// Whether the arrivals carry valid factors.
    pub factored: bool,
    /// Whether the caller filled `arrivals` already sorted and without those after the end.
    pub presorted: bool,
    pub sort: SortBuf<Arr>,
    prev_arr: bool,
    i_spike: Vec<f64>,
    i_ref: Vec<f64>,
    ka: usize,
    ks: usize,
    pending_ref: bool,
    q: f64,
    lv: f64,
    li: f64,
    t: f64,
}

impl Trace {
    pub fn clear(&mut self) {
        self.arrivals.clear();
        self.spikes.clear();
    }

    /// Sorts the arrivals, drops those after the last spike's end, computes `I` at every spike
    /// and refractory end, and resets the adjoint to 0 at the end. Returns whether there is
    /// anything to do (a neuron without spikes has a zero adjoint throughout).
    pub fn prepare(&mut self, m: &MultiNeuron) -> bool {
        self.ks = self.spikes.len();
        self.pending_ref = m.t_ref > 0.0 && self.ks > 0;
        self.lv = 0.0;
        self.li = 0.0;
        self.t = f64::INFINITY;
        self.ka = 0;
        let Some(&(t_last, _)) = self.spikes.last() else {
            return false;
        };
        let end = t_last + m.t_ref;
        if self.presorted {
            // Built sorted and filtered by the caller.
            debug_assert!(self.arrivals.windows(2).all(|w| w[0].a <= w[1].a));
        } else {
            self.arrivals.retain(|x| x.a < end);
            bucket_sort(&mut self.arrivals, &mut self.sort, |x| x.a);
        }
        self.prev_arr = false;
        self.ka = self.arrivals.len();
        // I along the events. Ties: a spike comes before arrivals at its own time.
        self.i_spike.clear();
        self.i_ref.clear();
        match (self.factored, m.pow_k) {
            (true, 1) => self.currents::<1>(m),
            (true, 2) => self.currents::<2>(m),
            (true, 4) => self.currents::<4>(m),
            _ => self.currents::<0>(m),
        }
        true
    }

    /// `I` at every spike and refractory end, in one forward sweep over the arrivals.
    fn currents<const K: i32>(&mut self, m: &MultiNeuron) {
        let (mut cur_i, mut cur_t) = (0.0_f64, f64::NEG_INFINITY);
        let mut k = 0;
        for q in 0..self.spikes.len() {
            let ts = self.spikes[q].0;
            let x = current_at::<K>(m, &self.arrivals, self.factored, ts, &mut cur_i, &mut cur_t, &mut k);
            self.i_spike.push(x);
            if m.t_ref > 0.0 {
                let x = current_at::<K>(m, &self.arrivals, self.factored, ts + m.t_ref, &mut cur_i, &mut cur_t, &mut k);
                self.i_ref.push(x);
            }
        }
    }

    /// The next event backwards in time: `(time, rank)`, rank 2 arrival, 1 refractory end,
    /// 0 spike (at equal times the larger rank comes first backwards).
    #[inline]
    pub fn next(&self, m: &MultiNeuron) -> Option<(f64, u8)> {
        let own = if self.ks == 0 {
            None
        } else if self.pending_ref {
            Some((self.spikes[self.ks - 1].0 + m.t_ref, 1u8))
        } else {
            Some((self.spikes[self.ks - 1].0, 0u8))
        };
        let arr = (self.ka > 0).then(|| (self.arrivals[self.ka - 1].a, 2u8));
        match (own, arr) {
            (Some(o), Some(a)) => Some(if a.0 >= o.0 { a } else { o }),
            (o, a) => o.or(a),
        }
    }

    /// Processes the next event backwards (`ev` from [`Trace::next`]). `gsrc` holds `dL/dt` of
    /// every source spike (arrivals add to it; own spikes read their total from it); `gw`, `gd`
    /// are indexed by [`Arr::syn`].
    #[inline]
    pub fn step(&mut self, m: &MultiNeuron, ev: (f64, u8), gsrc: &mut [f64], gw: &mut [f64], gd: &mut [f64]) {
        let n = &m.neuron;
        let (te, rank) = ev;
        if self.t < f64::INFINITY && self.t > te {
            let s = self.t - te;
            let (em, es) = if self.factored && self.prev_arr && rank == 2 {
                // From arrival ka back to arrival ka - 1.
                let (p, q) = (&self.arrivals[self.ka - 1], &self.arrivals[self.ka]);
                m.factor_decays(p.fm, p.fs, q.fm, q.fs)
            } else {
                n.decays(s)
            };
            let k = n.kernel_from_fast(s, em, es);
            self.li = es * self.li + k * self.lv;
            self.lv *= em;
        }
        self.t = te;
        self.prev_arr = rank == 2;
        match rank {
            2 => {
                self.ka -= 1;
                let x = self.arrivals[self.ka];
                gw[x.syn as usize] += self.li;
                let ga = x.w * (self.li * n.inv_tau_s - self.lv);
                gd[x.syn as usize] += ga;
                gsrc[x.src as usize] += ga;
            }
            1 => {
                self.q = self.lv * self.i_ref[self.ks - 1];
                self.lv = 0.0;
                self.pending_ref = false;
            }
            _ => {
                let k = self.ks - 1;
                let (_, src) = self.spikes[k];
                let i_k = self.i_spike[k];
                let q = if m.t_ref > 0.0 { self.q } else { self.lv * i_k };
                let slope = (i_k - n.theta * n.inv_tau_m).max(SLOPE_FLOOR);
                self.lv = (q - gsrc[src as usize]) / slope;
                self.ks = k;
                self.pending_ref = m.t_ref > 0.0 && k > 0;
            }
        }
    }

    /// Runs the whole backward pass of an isolated neuron (feed-forward layers).
    pub fn run(&mut self, m: &MultiNeuron, gsrc: &mut [f64], gw: &mut [f64], gd: &mut [f64]) {
        match (self.factored, m.pow_k) {
            (true, 1) => self.run_k::<1>(m, gsrc, gw, gd),
            (true, 2) => self.run_k::<2>(m, gsrc, gw, gd),
            (true, 4) => self.run_k::<4>(m, gsrc, gw, gd),
            _ => self.run_k::<0>(m, gsrc, gw, gd),
        }
    }

    /// [`Trace::run`] with the ratio `tau_m = K tau_s` of the factored decays fixed at compile
    /// time (see [`crate::multi::factored_step`]).
    fn run_k<const K: i32>(&mut self, m: &MultiNeuron, gsrc: &mut [f64], gw: &mut [f64], gd: &mut [f64]) {
        let n = &m.neuron;
        loop {
            // The arrivals before (backwards) the next own event, in a tight loop: the same
            // arithmetic as `step`, without the event dispatch.
            let own = match (self.ks, self.pending_ref) {
                (0, _) => f64::NEG_INFINITY,
                (k, true) => self.spikes[k - 1].0 + m.t_ref,
                (k, false) => self.spikes[k - 1].0,
            };
            while self.ka > 0 && self.arrivals[self.ka - 1].a >= own {
                let x = self.arrivals[self.ka - 1];
                if self.t < f64::INFINITY && self.t > x.a {
                    let s = self.t - x.a;
                    let (em, es, k) = if self.factored && self.prev_arr {
                        let q = &self.arrivals[self.ka];
                        factored_step::<K>(m, x.fm, x.fs, q.fm, q.fs, s)
                    } else {
                        let (em, es) = n.decays(s);
                        (em, es, n.kernel_from_fast(s, em, es))
                    };
                    self.li = es * self.li + k * self.lv;
                    self.lv *= em;
                }
                self.t = x.a;
                self.prev_arr = true;
                self.ka -= 1;
                gw[x.syn as usize] += self.li;
                let ga = x.w * (self.li * n.inv_tau_s - self.lv);
                gd[x.syn as usize] += ga;
                gsrc[x.src as usize] += ga;
            }
            match self.next(m) {
                Some(ev) => self.step(m, ev, gsrc, gw, gd),
                None => break,
            }
        }
    }
}

/// Reusable buffers of the backward pass, one set per worker thread.
#[derive(Default)]
pub struct Scratch {
    gsrc: Vec<f64>,
    um: Vec<f64>,
    us: Vec<f64>,
    own: Own,
    /// Per input spike: the index of its arrival's interval at the current target.
    slot: Vec<u32>,
}

/// Backward pass of one feed-forward multi-spike layer for one sample.
///
/// `outputs` are the layer's spikes sorted by neuron then time, `gout[k] = dL/dt` of
/// `outputs[k]`. Accumulates `dL/dw` and the per-synapse `dL/dd` (`(n_out, n_in)` row-major) and
/// `dL/dt` of each input spike into `grads`.
///
/// Each target is independent and needs no sorted arrivals (see [`crate::adjoint`]): one pass over
/// its arrivals sums the currents at its own events, a sweep over those events gives the adjoint's
/// jumps, and a second pass evaluates every arrival's gradient in closed form.
#[allow(clippy::too_many_arguments)]
pub fn layer_backward(
    m: &MultiNeuron,
    layer: &LayerRef,
    inputs: &[In],
    outputs: &[In],
    gout: &[f64],
    factors: Option<&DelayFactors>,
    grads: (&mut [f64], &mut [f64], &mut [f64]),
    scratch: &mut Scratch,
) {
    layer_backward_targets(m, layer, inputs, outputs, gout, factors, 0..layer.n_out, grads, scratch)
}

/// [`layer_backward`] restricted to the targets in `targets`: the gradient rows of other targets
/// are left alone, and `gin` receives only these targets' share of `dL/dt` of the inputs. Disjoint
/// ranges of one sample can run on different threads (each with its own `gin`, summed afterwards
/// in a fixed order), for batches with fewer samples than threads.
#[allow(clippy::too_many_arguments)]
pub fn layer_backward_targets(
    m: &MultiNeuron,
    layer: &LayerRef,
    inputs: &[In],
    outputs: &[In],
    gout: &[f64],
    factors: Option<&DelayFactors>,
    targets: std::ops::Range<usize>,
    grads: (&mut [f64], &mut [f64], &mut [f64]),
    scratch: &mut Scratch,
) {
    let (gw, gd, gin) = grads;
    let n = &m.neuron;
    let Scratch { gsrc, um, us, own, slot, .. } = scratch;
    let n_in_spikes = inputs.len();
    if n_in_spikes == 0 || outputs.is_empty() {
        return;
    }
    let t_last = outputs.iter().fold(f64::NEG_INFINITY, |x, o| x.max(o.1)) + m.t_ref;
    let factors = factors.filter(|f| {
        spike_factors(n, inputs, f.max_delay, um, us) && {
            let t0 = inputs.iter().fold(f64::INFINITY, |x, i| x.min(i.1));
            (t_last - t0) * n.inv_tau_m.max(n.inv_tau_s) < crate::multi::MAX_FACTOR_SPAN
        }
    });
    let t0 = inputs.iter().fold(f64::INFINITY, |x, i| x.min(i.1));
    gsrc.clear();
    gsrc.resize(n_in_spikes, 0.0);
    gsrc.extend_from_slice(gout);
    slot.clear();
    slot.resize(n_in_spikes, u32::MAX);
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
        let w = &layer.weights[row..row + layer.n_in];
        let n_ev = own.time.len();
        // Pass 1: the currents at the own events (and each arrival's interval, kept for pass 2).
        match (factors, layer.kind) {
            (Some(f), DelayKind::Synaptic) => {
                let (fs, d) = (&f.fs[row..row + layer.n_in], &layer.delays[row..row + layer.n_in]);
                for (r, &(i, t)) in inputs.iter().enumerate() {
                    let i = i as usize;
                    let g = own.interval(0, t + d[i]);
                    slot[r] = g as u32;
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
                    slot[r] = g as u32;
                    if g < n_ev {
                        own.cur[g] += w[i] * (-(own.time[g] - a) * n.inv_tau_s).exp();
                    }
                }
            }
        }
        own.currents(m, 0);
        own.sweep(m, 0, gsrc);
        // Pass 2: every arrival's gradient from the adjoint of its interval.
        let (gw, gd) = (&mut gw[row..row + layer.n_in], &mut gd[row..row + layer.n_in]);
        match (factors, layer.kind) {
            (Some(f), DelayKind::Synaptic) => {
                let (fm, fs, d) =
                    (&f.fm[row..row + layer.n_in], &f.fs[row..row + layer.n_in], &layer.delays[row..row + layer.n_in]);
                for (r, &(i, t)) in inputs.iter().enumerate() {
                    let g = slot[r] as usize;
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
                    let g = slot[r] as usize;
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
    for (g, x) in gin.iter_mut().zip(&gsrc[..n_in_spikes]) {
        *g += x;
    }
}

/// Backward pass of one recurrent multi-spike layer for one sample.
///
/// `outputs` sorted by neuron then time, `gout[k] = dL/dt` of `outputs[k]` from outside the
/// layer. The gradient buffers are `gw = [ff (n_out x n_in) | rec (n_out x n_out)]`, `gd` the
/// same; `gin` gets `dL/dt` of each input spike. See [`crate::recurrent`]; this entry point
/// computes the layer's factors on every call and keeps its buffers per thread (`_scratch` is
/// not needed), [`crate::recurrent::recurrent_backward_with`] takes both from the caller.
#[allow(clippy::too_many_arguments)]
pub fn recurrent_backward(
    m: &MultiNeuron,
    layer: &RecLayer,
    inputs: &[In],
    outputs: &[In],
    gout: &[f64],
    grads: (&mut [f64], &mut [f64], &mut [f64]),
    _scratch: &mut Scratch,
) {
    crate::recurrent::recurrent_backward(m, layer, inputs, outputs, gout, grads)
}
