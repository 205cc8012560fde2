//! The EventProp adjoint as a piecewise closed form over a neuron's own events (issue 14).
//!
//! Between two events of the neuron itself (its spikes and, with a refractory time, the ends of
//! the clamps) the adjoint `lambda = (lambda_V, lambda_I)` evolves freely: an arrival only adds a
//! constant to `I`, so `lambda` is continuous there (see [`crate::eventprop`]). The adjoint at an
//! arrival `a` in the interval `[E_{m-1}, E_m)` is therefore a closed form of
//! `lambda(E_m^-)` and `s = E_m - a`:
//!
//! ```text
//! lambda_V(a) = e_m(s) lambda_V(E_m^-),   lambda_I(a) = e_s(s) lambda_I(E_m^-) + K(s) lambda_V(E_m^-)
//! ```
//!
//! So the backward pass needs no time order among arrivals: it needs `I` at every own event (a sum
//! over the earlier arrivals, order-free), the jumps at the own events (a sweep over the few own
//! events), and then every arrival's gradient independently (one pass, no sort, no per-arrival
//! dependency). Memory is O(own events) per neuron; nothing is stored per arrival.
//!
//! Ties follow the forward pass: an arrival at the time of an own event comes after it
//! (a spike is reached from the left; a clamp ends before an arrival at its end).

use crate::multi::MultiNeuron;
use crate::ttfs::SLOPE_FLOOR;

/// Marks a refractory end in [`Own::src`].
pub const REF_END: u32 = u32::MAX;

/// The own events of a set of neurons (one, for feed-forward layers; the whole layer for a
/// recurrent one), with the adjoint coefficients on the intervals they bound.
#[derive(Debug, Default)]
pub struct Own {
    /// Event times, neuron by neuron (`off[j]..off[j + 1]`), ascending within a neuron.
    pub time: Vec<f64>,
    /// Index of a spike in the `dL/dt` buffer, or [`REF_END`].
    pub src: Vec<u32>,
    pub off: Vec<usize>,
    /// A uniform grid over each neuron's event span for the interval look-up: `grid[c]` is the
    /// number of events at or before the cell's start.
    grid: Vec<u32>,
    grid_off: Vec<usize>,
    grid_lo: Vec<f64>,
    grid_scale: Vec<f64>,
    /// `exp(-(E - t_0)/tau_m)`, `exp(-(E - t_0)/tau_s)` of every event (factored passes only).
    pub inv_fm: Vec<f64>,
    pub inv_fs: Vec<f64>,
    /// `sum w e_s(E_m - a)` over the arrivals of interval `m`, then `I(E_m^-)`.
    pub cur: Vec<f64>,
    /// `lambda(E_m^-)`.
    pub lv: Vec<f64>,
    pub li: Vec<f64>,
}

impl Own {
    pub fn clear(&mut self) {
        self.time.clear();
        self.src.clear();
        self.off.clear();
        self.off.push(0);
    }

    /// Appends one neuron's events from its spikes `(time, src)` (ascending in time).
    pub fn push_neuron(&mut self, m: &MultiNeuron, spikes: impl Iterator<Item = (f64, u32)>) {
        for (t, q) in spikes {
            self.time.push(t);
            self.src.push(q);
            if m.t_ref > 0.0 {
                self.time.push(t + m.t_ref);
                self.src.push(REF_END);
            }
        }
        self.off.push(self.time.len());
    }

    pub fn n_neurons(&self) -> usize {
        self.off.len() - 1
    }

    /// Builds the look-up grids and, with `t0`, the inverse factors; zeroes the currents.
    pub fn finish(&mut self, m: &MultiNeuron, t0: Option<f64>) {
        let n_ev = self.time.len();
        self.grid.clear();
        self.grid_off.clear();
        self.grid_lo.clear();
        self.grid_scale.clear();
        for j in 0..self.n_neurons() {
            let ev = &self.time[self.off[j]..self.off[j + 1]];
            self.grid_off.push(self.grid.len());
            let (lo, hi) = match ev {
                [] => (0.0, 0.0),
                _ => (ev[0], ev[ev.len() - 1]),
            };
            // Eight cells per event: the look-up's correction loops then rarely run (their
            // branches were most of the look-up's cost at two cells per event).
            let cells = 8 * ev.len();
            let scale = if hi > lo { cells as f64 / (hi - lo) } else { 0.0 };
            let mut p = 0;
            for c in 0..cells {
                let tc = lo + c as f64 / scale;
                while p < ev.len() && ev[p] <= tc {
                    p += 1;
                }
                self.grid.push(p as u32);
            }
            self.grid_lo.push(lo);
            self.grid_scale.push(scale);
        }
        self.grid_off.push(self.grid.len());
        self.inv_fm.clear();
        self.inv_fs.clear();
        if let Some(t0) = t0 {
            let n = &m.neuron;
            self.inv_fm.extend(self.time.iter().map(|&t| (-(t - t0) * n.inv_tau_m).exp()));
            self.inv_fs.extend(self.time.iter().map(|&t| (-(t - t0) * n.inv_tau_s).exp()));
        }
        self.cur.clear();
        self.cur.resize(n_ev, 0.0);
        self.lv.clear();
        self.lv.resize(n_ev, 0.0);
        self.li.clear();
        self.li.resize(n_ev, 0.0);
    }

    /// The global index of the first event of neuron `j` after `a` (events at `a` count as
    /// before it), or `off[j + 1]` when `a` is at or after the last one.
    #[inline(always)]
    pub fn interval(&self, j: usize, a: f64) -> usize {
        let (start, end) = (self.off[j], self.off[j + 1]);
        let ev = &self.time[start..end];
        let lo = self.grid_lo[j];
        if ev.is_empty() || a < lo {
            return start;
        }
        if a >= ev[ev.len() - 1] {
            return end;
        }
        let g = &self.grid[self.grid_off[j]..self.grid_off[j + 1]];
        let c = (((a - lo) * self.grid_scale[j]) as usize).min(g.len() - 1);
        let mut p = g[c] as usize;
        while p > 0 && ev[p - 1] > a {
            p -= 1;
        }
        while p < ev.len() && ev[p] <= a {
            p += 1;
        }
        start + p
    }

    /// `I(E^-)` at every event of neuron `j` from the per-interval sums in `cur`.
    pub fn currents(&mut self, m: &MultiNeuron, j: usize) {
        let n = &m.neuron;
        let (start, end) = (self.off[j], self.off[j + 1]);
        for g in start + 1..end {
            let es = (-(self.time[g] - self.time[g - 1]) * n.inv_tau_s).exp();
            self.cur[g] += self.cur[g - 1] * es;
        }
    }

    /// The jump at event `g` (of neuron `j`), given the adjoint just after it (`lv_after`,
    /// `li_after`), the total `dL/dt` of the spike (`g_spike`, unused at a refractory end), and
    /// the pending reset term `q` of a refractory neuron. Stores `lambda(E_g^-)`.
    #[inline]
    pub fn jump(&mut self, m: &MultiNeuron, g: usize, after: (f64, f64), g_spike: f64, q: &mut f64) {
        let n = &m.neuron;
        let (lv_after, li_after) = after;
        let i_e = self.cur[g];
        let lv = if self.src[g] == REF_END {
            *q = lv_after * i_e;
            0.0
        } else {
            let reset = if m.t_ref > 0.0 { *q } else { lv_after * i_e };
            let slope = (i_e - n.theta * n.inv_tau_m).max(SLOPE_FLOOR);
            (reset - g_spike) / slope
        };
        self.lv[g] = lv;
        self.li[g] = li_after;
    }

    /// `lambda(E_g^+)`: the adjoint just before event `g + 1` of the same neuron (`end` is the
    /// neuron's end index) evolved freely back to `E_g`; zero after the last event.
    #[inline]
    pub fn after(&self, m: &MultiNeuron, g: usize, end: usize) -> (f64, f64) {
        if g + 1 >= end {
            return (0.0, 0.0);
        }
        let n = &m.neuron;
        let s = self.time[g + 1] - self.time[g];
        let (em, es) = n.decays(s);
        let k = n.kernel_from(s, em, es);
        let (lv, li) = (self.lv[g + 1], self.li[g + 1]);
        (lv * em, li * es + k * lv)
    }

    /// The whole backward sweep of neuron `j` whose spikes' `dL/dt` are final in `gsrc`
    /// (feed-forward layers).
    pub fn sweep(&mut self, m: &MultiNeuron, j: usize, gsrc: &[f64]) {
        let (start, end) = (self.off[j], self.off[j + 1]);
        let mut q = 0.0;
        for g in (start..end).rev() {
            let after = self.after(m, g, end);
            let gs = if self.src[g] == REF_END { 0.0 } else { gsrc[self.src[g] as usize] };
            self.jump(m, g, after, gs, &mut q);
        }
    }

    /// `(lambda_V(a), lambda_I(a))` for an arrival in the interval ending at event `g`, from the
    /// decays `em`, `es` over `s = E_g - a`.
    #[inline(always)]
    pub fn adjoint_at(&self, m: &MultiNeuron, g: usize, s: f64, em: f64, es: f64) -> (f64, f64) {
        let lv = self.lv[g];
        let k = m.neuron.kernel_from_fast(s, em, es);
        (lv * em, self.li[g] * es + k * lv)
    }
}
