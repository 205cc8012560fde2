//! Non-spiking leaky-integrator readout (same `V`, `I` dynamics, no threshold, no reset) and
//! its cross-entropy losses, computed exactly from the arrival times (issue 4).
//!
//! `V_c(t) = sum_k w_ck K(t - a_k)` over the arrivals `a_k = t_k + d_ck` of the hidden spikes.
//! Two per-class values feed a softmax cross-entropy:
//!
//! * [`ReadoutKind::Max`] — `y_c = max_{t in [0, T]} V_c(t)` (EventProp's MNIST loss). Between
//!   arrivals V is a sum of two exponentials with at most one stationary point, so the maximum is
//!   among the window ends, the arrival times and those stationary points — found exactly.
//!   Gradient: `dy/dw_k = K(t* - a_k)`, `dy/da_k = -w_k K'(t* - a_k)` for `a_k < t*`; when the
//!   maximum sits on a kink (an inhibitory arrival `a_m` while V rises), `t* = a_m` moves with
//!   it and `dy/da_m = V'(t*^-)`.
//! * [`ReadoutKind::ExpMean`] — `y_c = (1/T) int_0^T exp(-t/tau_w) V_c(t) dt`, the exponentially
//!   time-weighted mean voltage of loss shaping (Nowotny et al. 2025 use `tau_w = T`; here it is a
//!   parameter). Per arrival the integral has a closed form `F(a)`, and
//!   `dF/da = -F/tau_w - exp(-T/tau_w) K(T - a)/T (+ K(-a)/T for a < 0)`.

use std::ops::Range;

use crate::cancel::Cancel;
use crate::driver::{self, ChunkPolicy, Kernel};
use crate::error::{param_err, shape_err, Result};
use crate::layer::{LayerGrad, LayerRef};
use crate::multi::sort_by_time;
use crate::multi_network::check_multi_spikes;
use crate::neuron::Neuron;
use crate::spikes::{SpikeTable, Spikes};
use crate::ttfs::In;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReadoutKind {
    /// Maximum voltage over `[0, t_end]`.
    Max,
    /// `(1/t_end) int_0^t_end exp(-t/tau_w) V(t) dt`.
    ExpMean { tau_w: f64 },
}

/// A leaky-integrator readout layer: weights and delays from the last hidden layer, the kind of
/// value read out, and the trial length `t_end` (the window `[0, t_end]`).
#[derive(Debug, Clone, Copy)]
pub struct Readout<'a> {
    pub layer: LayerRef<'a>,
    pub kind: ReadoutKind,
    pub t_end: f64,
}

/// Where the maximum of one readout trace is: value, time, and the index (into the sorted
/// arrivals) of the arrival it sits on when it is a kink.
#[derive(Debug, Clone, Copy)]
struct MaxPoint {
    value: f64,
    t: f64,
    kink: Option<usize>,
}

fn max_point(n: &Neuron, arr: &[(f64, f64, u32)], t_end: f64) -> MaxPoint {
    let mut best = MaxPoint { value: 0.0, t: 0.0, kink: None };
    let (mut v, mut i, mut t) = (0.0_f64, 0.0_f64, f64::NEG_INFINITY);
    let mut k = 0;
    loop {
        let next = if k < arr.len() { arr[k].0 } else { f64::INFINITY };
        // Segment [t, next] of free evolution from (v, i) at t, clipped to [0, t_end].
        let lo = t.max(0.0);
        let hi = next.min(t_end);
        if lo <= hi {
            let (vl, il) = if t == f64::NEG_INFINITY { (0.0, 0.0) } else { n.evolve(v, i, lo - t) };
            // The window start (time 0, fixed) when it lies inside the segment.
            if lo > t && vl > best.value {
                best = MaxPoint { value: vl, t: lo, kink: None };
            }
            if let Some(s) = n.stationary_point(vl, il) {
                if s < hi - lo {
                    let vs = n.voltage(vl, il, s);
                    if vs > best.value {
                        best = MaxPoint { value: vs, t: lo + s, kink: None };
                    }
                }
            }
            if hi.is_finite() {
                let vh = n.voltage(vl, il, hi - lo);
                if vh > best.value {
                    let kink = (hi == next && hi < t_end).then_some(k);
                    best = MaxPoint { value: vh, t: hi, kink };
                }
            }
        }
        if k == arr.len() || next > t_end {
            break;
        }
        if t > f64::NEG_INFINITY {
            (v, i) = n.evolve(v, i, next - t);
        }
        t = next;
        while k < arr.len() && arr[k].0 == t {
            i += arr[k].1;
            k += 1;
        }
    }
    best
}

/// `int_{u0}^{u1} exp(-c u) du` and `int_{u0}^{u1} u exp(-c u) du`.
#[inline]
fn p_int(c: f64, u0: f64, u1: f64) -> f64 {
    ((-c * u0).exp() - (-c * u1).exp()) / c
}
#[inline]
fn q_int(c: f64, u0: f64, u1: f64) -> f64 {
    let f = |u: f64| -(u / c + 1.0 / (c * c)) * (-c * u).exp();
    f(u1) - f(u0)
}

/// `F(a) = (1/T) int_{max(a,0)}^T exp(-t/tau_w) K(t - a) dt` and `dF/da`.
fn exp_mean_term(n: &Neuron, tau_w: f64, t_end: f64, a: f64) -> (f64, f64) {
    let u0 = (-a).max(0.0);
    let u1 = t_end - a;
    if !(u1 > u0) {
        return (0.0, 0.0);
    }
    let cw = 1.0 / tau_w;
    let j = if n.tau_m == n.tau_s {
        q_int(1.0 / n.tau_m + cw, u0, u1)
    } else {
        let delta = 1.0 / n.tau_s - 1.0 / n.tau_m;
        (p_int(1.0 / n.tau_m + cw, u0, u1) - p_int(1.0 / n.tau_s + cw, u0, u1)) / delta
    };
    let f = (-a * cw).exp() * j / t_end;
    let mut df = -f * cw - (-t_end * cw).exp() * n.kernel(u1) / t_end;
    if a < 0.0 {
        df += n.kernel(-a) / t_end;
    }
    (f, df)
}

/// Reusable buffers, one set per worker thread.
#[derive(Default)]
pub struct Scratch {
    arr: Vec<(f64, f64, u32)>,
    terms: Vec<(f64, f64)>,
}

impl ReadoutKind {
    /// The kind named `kind` (`"max"`, `"exp_mean"`); `tau_w` (for `exp_mean`) defaults to
    /// the window length `t_end`.
    pub fn parse(kind: &str, tau_w: Option<f64>, t_end: f64) -> Result<Self> {
        match kind {
            "max" => Ok(Self::Max),
            "exp_mean" => Ok(Self::ExpMean { tau_w: tau_w.unwrap_or(t_end) }),
            _ => Err(param_err(format!("readout: unknown kind '{kind}' (available: 'max', 'exp_mean')"))),
        }
    }
}

impl<'a> Readout<'a> {
    pub fn validate(&self) -> Result<()> {
        if !(self.t_end.is_finite() && self.t_end > 0.0) {
            return Err(param_err(format!("readout: t_end must be finite and > 0, got {}", self.t_end)));
        }
        if let ReadoutKind::ExpMean { tau_w } = self.kind {
            if !(tau_w.is_finite() && tau_w > 0.0) {
                return Err(param_err(format!("readout: tau_w must be finite and > 0, got {tau_w}")));
            }
        }
        Ok(())
    }

    /// Whether the arrival time of a spike is the same for every class (no per-target delays),
    /// so that per-spike terms are computed once for all classes.
    fn shared_arrivals(&self) -> bool {
        matches!(self.layer.kind, crate::layer::DelayKind::None | crate::layer::DelayKind::Axonal)
    }

    fn fill_terms(&self, n: &Neuron, tau_w: f64, inputs: &[In], terms: &mut Vec<(f64, f64)>) {
        terms.clear();
        terms.extend(
            inputs.iter().map(|&(i, t)| exp_mean_term(n, tau_w, self.t_end, t + self.layer.delay(0, i as usize))),
        );
    }

    fn fill(&self, c: usize, inputs: &[In], arr: &mut Vec<(f64, f64, u32)>) {
        let l = &self.layer;
        arr.clear();
        arr.extend(
            inputs
                .iter()
                .enumerate()
                .map(|(r, &(i, t))| (t + l.delay(c, i as usize), l.weight(c, i as usize), r as u32)),
        );
        sort_by_time(arr, |x| x.0);
    }

    /// The readout values of one sample (`out` has `n_out` entries).
    pub fn forward_sample(&self, n: &Neuron, inputs: &[In], out: &mut [f64], scratch: &mut Scratch) {
        if let (ReadoutKind::ExpMean { tau_w }, true) = (self.kind, self.shared_arrivals()) {
            self.fill_terms(n, tau_w, inputs, &mut scratch.terms);
            let l = &self.layer;
            for (c, y) in out.iter_mut().enumerate() {
                let row = &l.weights[c * l.n_in..(c + 1) * l.n_in];
                *y = inputs.iter().zip(&scratch.terms).map(|(&(i, _), &(f, _))| row[i as usize] * f).sum();
            }
            return;
        }
        for (c, y) in out.iter_mut().enumerate() {
            match self.kind {
                ReadoutKind::Max => {
                    self.fill(c, inputs, &mut scratch.arr);
                    *y = max_point(n, &scratch.arr, self.t_end).value;
                }
                ReadoutKind::ExpMean { tau_w } => {
                    let l = &self.layer;
                    *y = inputs
                        .iter()
                        .map(|&(i, t)| {
                            let i = i as usize;
                            l.weight(c, i) * exp_mean_term(n, tau_w, self.t_end, t + l.delay(c, i)).0
                        })
                        .sum();
                }
            }
        }
    }

    /// Accumulates, for one sample with `dy[c] = dL/dy_c`, `dL/dw`, the per-synapse `dL/dd`
    /// (`(n_out, n_in)` row-major) and `dL/dt` of each input spike.
    pub fn backward_sample(
        &self,
        n: &Neuron,
        inputs: &[In],
        dy: &[f64],
        grads: (&mut [f64], &mut [f64], &mut [f64]),
        scratch: &mut Scratch,
    ) {
        let (gw, gd, gin) = grads;
        let l = &self.layer;
        let shared = match self.kind {
            ReadoutKind::ExpMean { tau_w } if self.shared_arrivals() => {
                self.fill_terms(n, tau_w, inputs, &mut scratch.terms);
                true
            }
            _ => false,
        };
        for (c, &g) in dy.iter().enumerate() {
            if g == 0.0 {
                continue;
            }
            let row = c * l.n_in;
            match self.kind {
                ReadoutKind::Max => {
                    self.fill(c, inputs, &mut scratch.arr);
                    let arr = &scratch.arr;
                    let mp = max_point(n, arr, self.t_end);
                    let mut slope = 0.0;
                    for &(a, w, r) in arr.iter() {
                        if !(a < mp.t) {
                            break;
                        }
                        let s = mp.t - a;
                        let (em, es) = n.decays(s);
                        let k = n.kernel_from(s, em, es);
                        let kd = es - k * n.inv_tau_m;
                        let i = inputs[r as usize].0 as usize;
                        gw[row + i] += g * k;
                        gd[row + i] -= g * w * kd;
                        gin[r as usize] -= g * w * kd;
                        slope += w * kd;
                    }
                    if let Some(m) = mp.kink {
                        let r = arr[m].2 as usize;
                        let i = inputs[r].0 as usize;
                        gd[row + i] += g * slope;
                        gin[r] += g * slope;
                    }
                }
                ReadoutKind::ExpMean { tau_w } => {
                    for (r, &(i, t)) in inputs.iter().enumerate() {
                        let i = i as usize;
                        let (f, df) = if shared {
                            scratch.terms[r]
                        } else {
                            exp_mean_term(n, tau_w, self.t_end, t + l.delay(c, i))
                        };
                        let w = l.weights[row + i];
                        gw[row + i] += g * f;
                        gd[row + i] += g * w * df;
                        gin[r] += g * w * df;
                    }
                }
            }
        }
    }

    /// Readout values `(n_samples, n_out)` row-major for a batch of hidden spikes.
    pub fn forward(&self, n: &Neuron, spikes: &Spikes) -> Result<Vec<f64>> {
        self.forward_with(n, spikes, &Cancel::new())
    }

    /// [`Readout::forward`], stopped with `Error::Interrupted` when `cancel` is set.
    pub fn forward_with(&self, n: &Neuron, spikes: &Spikes, cancel: &Cancel) -> Result<Vec<f64>> {
        self.validate()?;
        check_multi_spikes(spikes, spikes.n_samples(), self.layer.n_in, "readout input")?;
        let kernel = ReadoutKernel { readout: *self, neuron: *n };
        let mut out = driver::forward(&[kernel], spikes, ChunkPolicy::SLOW_SAMPLES, cancel)?;
        // One event (class, value) per class and sample, in class order: the values row-major.
        Ok(out.pop().expect("one layer").time)
    }

    /// Gradients for a batch given `dy = dL/dy` `(n_samples, n_out)`: the readout's parameter
    /// gradients and `dL/dt` of each row of `spikes`.
    pub fn backward(&self, n: &Neuron, spikes: &Spikes, dy: &[f64]) -> Result<(LayerGrad, Vec<f64>)> {
        self.backward_with(n, spikes, dy, &Cancel::new())
    }

    /// [`Readout::backward`], stopped with `Error::Interrupted` when `cancel` is set.
    pub fn backward_with(
        &self,
        n: &Neuron,
        spikes: &Spikes,
        dy: &[f64],
        cancel: &Cancel,
    ) -> Result<(LayerGrad, Vec<f64>)> {
        let (mut grads, gin) = self.backward_shards(n, spikes, dy, &[spikes.n_samples()], cancel)?;
        Ok((grads.pop().expect("one shard"), gin))
    }

    /// [`Readout::backward_with`] for a batch cut into consecutive shards of `shards[k]`
    /// samples: the readout's gradient of each shard as a batch of its own
    /// ([`driver::backward_shards`]), and `dL/dt` of each row of `spikes`.
    pub fn backward_shards(
        &self,
        n: &Neuron,
        spikes: &Spikes,
        dy: &[f64],
        shards: &[usize],
        cancel: &Cancel,
    ) -> Result<(Vec<LayerGrad>, Vec<f64>)> {
        self.validate()?;
        let n_samples = spikes.n_samples();
        let l = &self.layer;
        check_multi_spikes(spikes, n_samples, l.n_in, "readout input")?;
        if dy.len() != n_samples * l.n_out {
            return Err(shape_err(format!(
                "readout backward: dy has {} entries, expected n_samples * n_out = {n_samples} * {}",
                dy.len(),
                l.n_out
            )));
        }
        let kernel = ReadoutKernel { readout: *self, neuron: *n };
        // The readout's gradient is per class (`grad_rows`); it needs no recorded output.
        let outputs = [Spikes::empty(n_samples)];
        let policy = ChunkPolicy::SLOW_SAMPLES;
        let (grads, gin) = driver::backward_shards(&[kernel], spikes, &outputs, dy, policy, shards, cancel)?;
        Ok((grads.into_iter().map(|mut layers| layers.pop().expect("one layer")).collect(), gin))
    }

    /// [`Readout::forward_with`] on a table of hidden spikes (any row order).
    pub fn forward_table(&self, n: &Neuron, table: &SpikeTable, n_samples: usize, cancel: &Cancel) -> Result<Vec<f64>> {
        table.validate("spikes", n_samples, self.layer.n_in)?;
        let (spikes, _) = Spikes::from_table(table, n_samples)?;
        self.forward_with(n, &spikes, cancel)
    }

    /// [`Readout::backward_shards`] on a table of hidden spikes (any row order); `dL/dt` comes
    /// back in the table's row order.
    pub fn backward_table(
        &self,
        n: &Neuron,
        table: &SpikeTable,
        n_samples: usize,
        dy: &[f64],
        shards: &[usize],
        cancel: &Cancel,
    ) -> Result<(Vec<LayerGrad>, Vec<f64>)> {
        table.validate("spikes", n_samples, self.layer.n_in)?;
        let (spikes, perm) = Spikes::from_table(table, n_samples)?;
        let (grad, sorted) = self.backward_shards(n, &spikes, dy, shards, cancel)?;
        let mut gin = vec![0.0; sorted.len()];
        for (&row, g) in perm.iter().zip(sorted) {
            gin[row] = g;
        }
        Ok((grad, gin))
    }
}

/// A readout as a per-sample kernel of the batch driver: its output events are one
/// `(class, value)` per class.
struct ReadoutKernel<'a> {
    readout: Readout<'a>,
    neuron: Neuron,
}

#[derive(Default)]
struct KernelScratch {
    scratch: Scratch,
    values: Vec<f64>,
}

impl Kernel for ReadoutKernel<'_> {
    type Scratch = KernelScratch;
    type Grad = LayerGrad;

    fn grad_len(&self) -> usize {
        self.readout.layer.n_out * self.readout.layer.n_in
    }

    fn forward(&self, inputs: &[In], out: &mut Vec<In>, _current: &mut Vec<f64>, scratch: &mut KernelScratch) -> bool {
        let KernelScratch { scratch, values } = scratch;
        values.clear();
        values.resize(self.readout.layer.n_out, 0.0);
        self.readout.forward_sample(&self.neuron, inputs, values, scratch);
        out.extend(values.iter().enumerate().map(|(c, &y)| (c as u32, y)));
        true
    }

    fn grad_rows(&self, _outputs: &Spikes, s: usize) -> Range<usize> {
        let n_out = self.readout.layer.n_out;
        s * n_out..(s + 1) * n_out
    }

    fn backward(
        &self,
        inputs: &[In],
        _outputs: &[In],
        _current: &[f64],
        grad_out: &[f64],
        grads: (&mut [f64], &mut [f64], &mut [f64]),
        scratch: &mut KernelScratch,
    ) {
        self.readout.backward_sample(&self.neuron, inputs, grad_out, grads, &mut scratch.scratch);
    }

    fn finish(&self, weights: Vec<f64>, delays: Vec<f64>) -> LayerGrad {
        LayerGrad { weights, delays: self.readout.layer.reduce_delay_grad(&delays) }
    }
}

/// Softmax cross-entropy on readout values `(n_samples, n_out)`: mean loss over the batch,
/// `dL/dy`, and the predicted class (largest value, ties: lowest index).
pub fn cross_entropy(values: &[f64], n_out: usize, labels: &[i64]) -> Result<(f64, Vec<f64>, Vec<i64>)> {
    cross_entropy_part(values, n_out, labels, labels.len())
}

/// [`cross_entropy`] for rows that are part of a batch of `batch_size` samples (a shard of it):
/// the loss is this part's sum divided by `batch_size`, and each row's gradient is the one the
/// whole batch gives it.
pub fn cross_entropy_part(
    values: &[f64],
    n_out: usize,
    labels: &[i64],
    batch_size: usize,
) -> Result<(f64, Vec<f64>, Vec<i64>)> {
    if batch_size < labels.len() {
        return Err(shape_err(format!(
            "cross_entropy: batch_size {batch_size} is smaller than the {} rows given",
            labels.len()
        )));
    }
    if n_out == 0 || values.len() != labels.len() * n_out {
        return Err(shape_err(format!(
            "cross_entropy: values have {} entries, expected n_samples * n_out = {} * {n_out}",
            values.len(),
            labels.len()
        )));
    }
    if let Some(k) = labels.iter().position(|&l| l < 0 || l as usize >= n_out) {
        return Err(shape_err(format!(
            "cross_entropy: label {} at sample {k} is out of range (n_out = {n_out})",
            labels[k]
        )));
    }
    let ns = batch_size.max(1) as f64;
    let mut loss = 0.0;
    let mut grad = vec![0.0; values.len()];
    let mut pred = Vec::with_capacity(labels.len());
    for ((row, g), &lab) in values.chunks_exact(n_out).zip(grad.chunks_exact_mut(n_out)).zip(labels) {
        let mx = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
        let z: f64 = row.iter().map(|&x| (x - mx).exp()).sum();
        loss += -(row[lab as usize] - mx - z.ln());
        for (gc, &x) in g.iter_mut().zip(row) {
            *gc = (x - mx).exp() / z / ns;
        }
        g[lab as usize] -= 1.0 / ns;
        let mut best = 0usize;
        for (c, &x) in row.iter().enumerate() {
            if x > row[best] {
                best = c;
            }
        }
        pred.push(best as i64);
    }
    Ok((loss / ns, grad, pred))
}
