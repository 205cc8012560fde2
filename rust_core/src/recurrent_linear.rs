//! The recurrent backward pass with the feed-forward backward's linear forms (issue 14).
//!
//! Same order of work as [`crate::recurrent::recurrent_backward_with`] (currents at every own
//! event, then all own events in global reverse time order, each spike pulling the adjoints of
//! its recurrent arrivals, then the feed-forward arrivals), with the arithmetic of
//! [`crate::eventprop`]'s factored path, for samples with factored decays and a kernel of the
//! difference form:
//!
//! * an arrival's interval (the first own event of its target after it) comes from a per-target
//!   map of 16 cells per event, with an event's cell computed exactly as an arrival's (only the
//!   events sharing the arrival's cell, usually none, are compared);
//! * the currents at the own events are those the forward pass recorded at its spikes, or else
//!   per-interval sums of `w x_s` (`x = exp((a - t_0)/tau)`, a product of the source spike's and
//!   the synapse's factors), in four lanes;
//! * the adjoint at an arrival of interval `g` is the linear form of [`Coef`]: `dL/dw = q x_m +
//!   r x_s`, `dL/da = w (u x_m + v x_s)` — no `exp` and no kernel per arrival. Only `(q, r)` are
//!   kept per interval (16 bytes: the pulls read them at random over the whole layer), as
//!   `u = q / tau_m` and `v = r / tau_s`. An interval's form
//!   is known once its end event has taken its jump, which in reverse time order is before any
//!   spike that can reach it pulls from it;
//! * feed-forward arrivals are visited synapse by synapse over the inputs grouped by channel (a
//!   synapse's gradients summed in registers), recurrent ones over the layer's spikes grouped by
//!   neuron (as the outputs come); recurrent gradients are summed source-major (one spike's
//!   arrivals are one contiguous row) and transposed once at the end.
//!
//! Memory stays O(spikes): per own event a few numbers and its cells; nothing per arrival.

use crate::adjoint::REF_END;
use crate::eventprop::Coef;
use crate::multi::{MultiNeuron, RecLayer};
use crate::recurrent::{RecFactors, RecScratch};
use crate::ttfs::In;

/// Cells per own event of the interval look-up.
const CELLS_PER_EVENT: usize = 4;

/// The interval look-up of one neuron: its events are `start..start + n` of [`Own::time`], its
/// cells `grid[off..off + cells + 2]`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cells {
    lo: f64,
    last: f64,
    scale: f64,
    cells: usize,
    off: usize,
    start: usize,
    n: usize,
}

impl Cells {
    #[inline(always)]
    fn cell(&self, a: f64) -> usize {
        // Below `lo` the cast saturates to 0.
        (((a - self.lo) * self.scale) as u32 as usize).min(self.cells)
    }

    /// The global index of the first event after `a` (events at `a` count as before it), or
    /// `None` when `a` is at or after the last one.
    #[inline(always)]
    fn interval(&self, a: f64, grid: &[u32], time: &[f64]) -> Option<usize> {
        if !(a < self.last) {
            return None;
        }
        let c = self.cell(a);
        let g = &grid[self.off + c..self.off + c + 2];
        let (g0, g_end) = (g[0] as usize, g[1] as usize);
        let ev = &time[self.start..self.start + self.n];
        // `g0 < n`: the last event lies in a cell at or after `a`'s, so it is not counted before.
        let mut k = g0 + (ev[g0] <= a) as usize;
        if g_end > g0 + 1 {
            while k < g_end && ev[k] <= a {
                k += 1;
            }
        }
        Some(self.start + k)
    }
}

/// Whether a sample takes this path: factored decays and a kernel of the difference form.
pub(crate) fn applies(m: &MultiNeuron, fact: bool) -> bool {
    fact && m.neuron.kernel_is_difference()
}

/// The backward pass (see the module doc); `recorded` are the outputs' currents from the forward
/// pass when the own events are the spikes (no refractory time). The caller has filled
/// `scratch.own` (events, with factors), `um`, `us`, `hm`, `hs` (the inputs' and outputs'
/// factors) and `gsrc` (`dL/dt` from outside the layer, inputs first). Same contract as
/// [`crate::recurrent::recurrent_backward_with`].
pub(crate) fn backward(
    m: &MultiNeuron,
    layer: &RecLayer,
    inputs: &[In],
    (outputs, recorded): (&[In], Option<&[f64]>),
    factors: &RecFactors,
    grads: (&mut [f64], &mut [f64], &mut [f64]),
    scratch: &mut RecScratch,
) {
    let (gw, gd, gin) = grads;
    let n = &m.neuron;
    let ff = &layer.ff;
    let (n_out, n_in) = (ff.n_out, ff.n_in);
    let n_in_spikes = inputs.len();
    let RecScratch {
        own,
        owner,
        events,
        gsrc,
        um,
        us,
        hm,
        hs,
        q_ref,
        cells,
        grid,
        lanes,
        coef,
        by_channel,
        gsrc_bc,
        rec_gw,
        rec_gd,
        ..
    } = scratch;
    let n_ev = own.time.len();
    // The per-neuron interval look-ups.
    cells.clear();
    grid.clear();
    for j in 0..n_out {
        let (start, end) = (own.off[j], own.off[j + 1]);
        let ev = &own.time[start..end];
        if ev.is_empty() {
            cells.push(Cells { lo: 0.0, last: f64::NEG_INFINITY, scale: 0.0, cells: 0, off: grid.len(), start, n: 0 });
            continue;
        }
        let (lo, last) = (ev[0], ev[ev.len() - 1]);
        let n_cells = CELLS_PER_EVENT * ev.len();
        let scale = if last > lo { n_cells as f64 / (last - lo) } else { 0.0 };
        let c = Cells { lo, last, scale, cells: n_cells, off: grid.len(), start, n: ev.len() };
        grid.resize(grid.len() + n_cells + 2, 0);
        let g = &mut grid[c.off..];
        for &e in ev {
            g[c.cell(e) + 1] += 1;
        }
        for k in 0..=n_cells {
            g[k + 1] += g[k];
        }
        cells.push(c);
    }
    // The inputs grouped by channel, with their factors.
    by_channel.build(inputs, um, us, n_in);
    let bc = &*by_channel;
    let (ffac, rfac) = (&factors.ff, &factors.rec);
    let out_start = |i: usize| own_range(outputs, i);

    // Currents at the own events: recorded by the forward pass, or per interval `sum w x_s`
    // over every arrival, in four lanes taken in turn.
    match recorded {
        Some(current) => own.cur[..n_ev].copy_from_slice(current),
        None => {
            lanes.clear();
            lanes.resize(n_ev, [0.0; 4]);
            let mut lane = 0usize;
            for (j, &cj) in cells.iter().enumerate() {
                if cj.n == 0 {
                    continue;
                }
                let row = j * n_in;
                for i in 0..n_in {
                    let (d, wfs) = (ffac.delay[row + i], ffac.wfs[row + i]);
                    let (first, end) = (bc.start[i] as usize, bc.start[i + 1] as usize);
                    for (&t, &x) in bc.time[first..end].iter().zip(&bc.us[first..end]) {
                        let Some(g) = cj.interval(t + d, grid, &own.time) else { break };
                        lanes[g][lane & 3] += x * wfs;
                        lane += 1;
                    }
                }
                let row = j * n_out;
                let mut q = 0;
                while q < outputs.len() {
                    let i = outputs[q].0 as usize;
                    let end = out_start(q);
                    let (d, wfs) = (rfac.delay[row + i], rfac.wfs[row + i]);
                    for k in q..end {
                        let Some(g) = cj.interval(outputs[k].1 + d, grid, &own.time) else { break };
                        lanes[g][lane & 3] += hs[k] * wfs;
                        lane += 1;
                    }
                    q = end;
                }
            }
            for ((c, l), x) in own.cur[..n_ev].iter_mut().zip(lanes.iter()).zip(&own.inv_fs) {
                *c = ((l[0] + l[1]) + (l[2] + l[3])) * x;
            }
            for j in 0..n_out {
                own.currents(m, j);
            }
        }
    }

    // All own events in reverse time order; each spike pulls its recurrent arrivals' adjoints
    // (as linear forms of intervals whose end events have already jumped), then jumps.
    owner.clear();
    for j in 0..n_out {
        owner.extend(std::iter::repeat_n(j as u32, own.off[j + 1] - own.off[j]));
    }
    events.clear();
    events.extend(0..n_ev as u32);
    events.sort_unstable_by(|&a, &b| own.time[b as usize].total_cmp(&own.time[a as usize]).then(b.cmp(&a)));
    q_ref.clear();
    q_ref.resize(n_out, 0.0);
    coef.clear();
    coef.resize(n_ev, [0.0; 2]);
    rec_gw.clear();
    rec_gw.resize(n_out * n_out, 0.0);
    rec_gd.clear();
    rec_gd.resize(n_out * n_out, 0.0);
    let rec_t = &factors.rec_t;
    for &g in events.iter() {
        let g = g as usize;
        let j = owner[g] as usize;
        let after = own.after(m, g, own.off[j + 1]);
        let src = own.src[g];
        if src == REF_END {
            own.jump(m, g, after, 0.0, &mut q_ref[j]);
            coef[g] = form(n, own, g);
            continue;
        }
        let q = src as usize - n_in_spikes;
        let (i, t) = outputs[q];
        let r = rec_t.row(i as usize);
        let (w, d, fm, fs) = (&rec_t.w[r.clone()], &rec_t.d[r.clone()], &rec_t.fm[r.clone()], &rec_t.fs[r.clone()]);
        let (gw_row, gd_row) = (&mut rec_gw[r.clone()], &mut rec_gd[r]);
        let (xm0, xs0) = (hm[q], hs[q]);
        let mut pulled = 0.0;
        for p in 0..n_out {
            let Some(gp) = cells[p].interval(t + d[p], grid, &own.time) else { continue };
            let [cq, cr] = coef[gp];
            let (xm, xs) = (xm0 * fm[p], xs0 * fs[p]);
            gw_row[p] += cq * xm + cr * xs;
            let ga = w[p] * (cq * n.inv_tau_m * xm + cr * n.inv_tau_s * xs);
            gd_row[p] += ga;
            pulled += ga;
        }
        gsrc[src as usize] += pulled;
        let gs = gsrc[src as usize];
        own.jump(m, g, after, gs, &mut q_ref[j]);
        coef[g] = form(n, own, g);
    }
    // Recurrent gradients back to target-major (`[ff | rec]`, row = target).
    let off_rec = n_out * n_in;
    for i in 0..n_out {
        for p in 0..n_out {
            gw[off_rec + p * n_out + i] += rec_gw[i * n_out + p];
            gd[off_rec + p * n_out + i] += rec_gd[i * n_out + p];
        }
    }

    // Feed-forward arrivals, now that every adjoint is known: synapse by synapse.
    gsrc_bc.clear();
    gsrc_bc.resize(n_in_spikes, 0.0);
    for (j, &cj) in cells.iter().enumerate() {
        if cj.n == 0 {
            continue;
        }
        let row = j * n_in;
        for i in 0..n_in {
            let (d, fm_i, fs_i, w_i) = (ffac.delay[row + i], ffac.fm[row + i], ffac.fs[row + i], ff.weights[row + i]);
            let (first, end) = (bc.start[i] as usize, bc.start[i + 1] as usize);
            let (mut acc_w, mut acc_d) = (0.0, 0.0);
            let spikes = bc.time[first..end].iter().zip(bc.um[first..end].iter().zip(&bc.us[first..end]));
            for ((&t, (&um, &us)), gs) in spikes.zip(&mut gsrc_bc[first..end]) {
                let Some(g) = cj.interval(t + d, grid, &own.time) else { break };
                let [cq, cr] = coef[g];
                let (xm, xs) = (um * fm_i, us * fs_i);
                acc_w += cq * xm + cr * xs;
                let ga = w_i * (cq * n.inv_tau_m * xm + cr * n.inv_tau_s * xs);
                acc_d += ga;
                *gs += ga;
            }
            gw[row + i] += acc_w;
            gd[row + i] += acc_d;
        }
    }
    for (&r, x) in bc.row.iter().zip(gsrc_bc.iter()) {
        gsrc[r as usize] += x;
    }
    for (g, x) in gin.iter_mut().zip(&gsrc[..n_in_spikes]) {
        *g += x;
    }
}

/// `(q, r)` of the [`Coef`] of the interval that ends at own event `g`.
#[inline]
fn form(n: &crate::neuron::Neuron, own: &crate::adjoint::Own, g: usize) -> [f64; 2] {
    let c = Coef::at(n, own, g);
    [c.q, c.r]
}

/// The end of the run of `outputs` (sorted by neuron) that starts at `q`.
#[inline]
fn own_range(outputs: &[In], q: usize) -> usize {
    let i = outputs[q].0;
    let mut k = q;
    while k < outputs.len() && outputs[k].0 == i {
        k += 1;
    }
    k
}
