//! The feed-forward multi-spike scan over time bins: no sorted arrivals (issue 14).
//!
//! A target's arrivals are scattered into bins of a fixed width `h` (in input order, one pass),
//! each bin keeping the factored sums `S_m = sum w exp((a - t_0)/tau_m)`,
//! `S_s = sum w exp((a - t_0)/tau_s)`, the sum of its positive weights and a list of its arrivals.
//! The state is superposition, so at a bin's end `T` it is a closed form of the state at the bin's
//! start and the two sums (for kernels `K = (e_m - e_s) / delta`):
//!
//! ```text
//! V(T) = V e_m(h) + I K(h) + (S_m E_m(T) - S_s E_s(T)) / delta,   I(T) = I e_s(h) + S_s E_s(T)
//! ```
//!
//! with `E(T) = exp(-(T - t_0)/tau)`, one table per sample. Only a bin where a crossing is
//! possible is simulated arrival by arrival, exactly and in time order (its few arrivals sorted
//! in place), and so is any bin that holds the end of a refractory clamp. The test is a bound:
//! for `h` no longer than the kernel's peak time, `K` rises on `[0, h]`, so an arrival at
//! `s_k` adds `w K(s - s_k) <= w K(s)` when `w > 0` and nothing above 0 when `w < 0`, and
//! `V(s) <= V e_m(s) + (I + P) K(s)` on the bin (`P` its positive weight sum): the solver's
//! [`may_cross`] on that free evolution rules a bin out with certainty.
//!
//! Bins are grouping only: an arrival's own time decides where it acts in an exact bin, and one
//! that rounding puts a hair outside its bin's span acts at the bin's start or end (an error of
//! the order of the rounding of its time).

use crate::multi::{DelayFactors, MultiNeuron};
use crate::solver::{crossing_in_interval, first_crossing, may_cross};
use crate::ttfs::In;

/// Marks the end of a bin's arrival list.
const NONE: u32 = u32::MAX;

/// Arrivals per bin the width aims at (more: more arrivals simulated exactly per bin that may
/// cross; fewer: more bins to scan).
const ARRIVALS_PER_BIN: f64 = 2.0;

#[derive(Debug, Clone, Copy, Default)]
struct Bin {
    sm: f64,
    ss: f64,
    pos: f64,
    head: u32,
}

/// Reusable buffers of the binned scan (one set per worker thread) and the per-sample tables.
#[derive(Debug, Default)]
pub struct BinScratch {
    bins: Vec<Bin>,
    /// Per input spike: the next arrival of the same bin (a singly linked list per bin).
    next: Vec<u32>,
    /// Per input spike: `(t - lo) / h`.
    tb: Vec<f64>,
    /// Per bin: `E_m`, `E_s` at its end.
    em_end: Vec<f64>,
    es_end: Vec<f64>,
    /// One exact bin's arrivals `(time, weight)`.
    seg: Vec<(f64, f64)>,
    geometry: Geometry,
}

/// The bins of one sample: `n` bins of width `h` from `lo`.
#[derive(Debug, Clone, Copy, Default)]
struct Geometry {
    lo: f64,
    h: f64,
    inv_h: f64,
    n: usize,
    /// `(e_m(h), e_s(h), K(h))`.
    em_h: f64,
    es_h: f64,
    k_h: f64,
}

/// Whether a sample can take the binned scan: factored (the caller's factors exist for it) and a
/// kernel of the difference form. `t0` is the earliest input spike (the factors' origin), `hi`
/// the latest possible arrival. Prepares the per-sample tables when it can.
pub(crate) fn prepare(m: &MultiNeuron, inputs: &[In], t0: f64, hi: f64, bs: &mut BinScratch) -> bool {
    let n = &m.neuron;
    if !n.kernel_is_difference() || inputs.is_empty() {
        return false;
    }
    let stop = hi.min(m.t_end);
    let lo = t0;
    let span = (stop - lo).max(0.0);
    let peak = n.kernel_peak();
    let mut h = span * ARRIVALS_PER_BIN / inputs.len() as f64;
    if !(h > 0.0) || h > peak {
        h = peak;
    }
    // Bins stay O(inputs) (and the factor tables finite): else the sorted scan is used.
    let bins = (span / h).floor() + 2.0;
    if !(bins <= (4 * inputs.len() + 64) as f64) {
        return false;
    }
    let (em_h, es_h) = n.decays(h);
    let geometry =
        Geometry { lo, h, inv_h: 1.0 / h, n: bins as usize, em_h, es_h, k_h: n.kernel_from_fast(h, em_h, es_h) };
    bs.em_end.clear();
    bs.es_end.clear();
    for b in 0..geometry.n {
        let t = (b + 1) as f64 * h;
        bs.em_end.push((-t * n.inv_tau_m).exp());
        bs.es_end.push((-t * n.inv_tau_s).exp());
    }
    bs.tb.clear();
    bs.tb.extend(inputs.iter().map(|&(_, t)| (t - lo) * geometry.inv_h));
    bs.next.clear();
    bs.next.resize(inputs.len(), NONE);
    bs.geometry = geometry;
    true
}

/// The state of one neuron during the scan.
#[derive(Debug, Clone, Copy)]
struct State {
    t: f64,
    v: f64,
    i: f64,
    refr_end: f64,
}

enum Flow {
    /// Reached the requested time.
    Go,
    /// No spike can follow (past `t_end`, or nothing left to cross).
    Done,
    /// `max_spikes` reached.
    Full,
}

/// Simulates the target whose synapses are `row..row + w.len()` of the factors (`w` its weights)
/// on a sample [`prepare`]d in `bs`, with the per-spike factors `um`, `us`; appends its spike
/// times to `out`. Returns `false` if `max_spikes` was reached.
#[allow(clippy::too_many_arguments)]
pub(crate) fn simulate_target(
    m: &MultiNeuron,
    inputs: &[In],
    um: &[f64],
    us: &[f64],
    f: &DelayFactors,
    row: usize,
    w: &[f64],
    bs: &mut BinScratch,
    out: &mut Vec<f64>,
) -> bool {
    let n = &m.neuron;
    let g = bs.geometry;
    let BinScratch { bins, next, tb, em_end, es_end, seg, .. } = bs;
    bins.clear();
    bins.resize(g.n, Bin { sm: 0.0, ss: 0.0, pos: 0.0, head: NONE });
    let n_in = w.len();
    let (d, wfm, wfs, wpos) =
        (&f.delay[row..row + n_in], &f.wfm[row..row + n_in], &f.wfs[row..row + n_in], &f.wpos[row..row + n_in]);
    for (r, &(i, _)) in inputs.iter().enumerate() {
        let i = i as usize;
        // (`as` saturates: arrivals before `lo` by rounding land in bin 0.)
        let b = (tb[r] + d[i] * g.inv_h) as usize;
        if b >= g.n {
            continue; // after t_end: cannot matter
        }
        let bin = &mut bins[b];
        bin.sm += um[r] * wfm[i];
        bin.ss += us[r] * wfs[i];
        bin.pos += wpos[i];
        next[r] = bin.head;
        bin.head = r as u32;
    }
    let start = out.len();
    let mut st = State { t: g.lo, v: 0.0, i: 0.0, refr_end: f64::NEG_INFINITY };
    for (b, bin) in bins.iter().enumerate() {
        let t1 = g.lo + (b + 1) as f64 * g.h;
        if st.t > m.t_end {
            return true;
        }
        let add_i = bin.ss * es_end[b];
        if st.refr_end >= t1 {
            // Clamped throughout: V stays 0, I takes the bin's arrivals.
            st.i = st.i * g.es_h + add_i;
            st.t = t1;
            continue;
        }
        let exact = st.refr_end > st.t || st.v >= n.theta || {
            let ib = st.i + bin.pos;
            ib > 0.0
                && st.v.max(0.0) + ib * g.k_h >= n.theta
                && may_cross(n, st.v, ib, g.h, st.v * g.em_h + ib * g.k_h, ib * g.es_h)
        };
        if !exact {
            st.v = st.v * g.em_h + st.i * g.k_h + (bin.sm * em_end[b] - bin.ss * es_end[b]) * n.inv_delta;
            st.i = st.i * g.es_h + add_i;
            st.t = t1;
            continue;
        }
        seg.clear();
        let mut r = bin.head;
        while r != NONE {
            let (i, t) = inputs[r as usize];
            seg.push((t + d[i as usize], w[i as usize]));
            r = next[r as usize];
        }
        // Lists are built in reverse input order; inputs are mostly in time order.
        seg.reverse();
        insertion_sort(seg);
        match advance(m, &mut st, seg, t1, out, start) {
            Flow::Go => {}
            Flow::Done => return true,
            Flow::Full => return false,
        }
    }
    // Past the last bin (only when t_end lies beyond the last arrival): free evolution.
    !matches!(advance(m, &mut st, &[], f64::INFINITY, out, start), Flow::Full)
}

fn insertion_sort(v: &mut [(f64, f64)]) {
    for k in 1..v.len() {
        let x = v[k];
        let mut p = k;
        while p > 0 && v[p - 1].0 > x.0 {
            v[p] = v[p - 1];
            p -= 1;
        }
        v[p] = x;
    }
}

/// Advances the exact simulation over the arrivals `arr` (sorted; times before `st.t` act at
/// `st.t`) to `t_stop` (may be infinite), appending spikes to `out` (`start` is where this
/// neuron's spikes begin).
fn advance(m: &MultiNeuron, st: &mut State, arr: &[(f64, f64)], t_stop: f64, out: &mut Vec<f64>, start: usize) -> Flow {
    let n = &m.neuron;
    let mut k = 0;
    loop {
        if st.t > m.t_end {
            return Flow::Done;
        }
        let na = if k < arr.len() { arr[k].0.max(st.t) } else { t_stop };
        if st.refr_end > st.t {
            // Refractory: V stays at 0, I decays; arrivals still add to it.
            if st.refr_end <= na {
                st.i *= (-(st.refr_end - st.t) * n.inv_tau_s).exp();
                st.t = st.refr_end;
            } else {
                st.i *= (-(na - st.t) * n.inv_tau_s).exp();
                st.t = na;
                if k == arr.len() {
                    return Flow::Go;
                }
                st.i += arr[k].1;
                k += 1;
            }
            continue;
        }
        let crossing = if st.v >= n.theta {
            // Only by rounding, when the previous interval's crossing sat on its end.
            Some(0.0)
        } else if na == f64::INFINITY {
            first_crossing(n, st.v, st.i, f64::INFINITY)
        } else {
            let len = na - st.t;
            let (em, es) = n.decays(len);
            let (ve, ie) = (st.v * em + st.i * n.kernel_from_fast(len, em, es), st.i * es);
            match if st.i > 0.0 { crossing_in_interval(n, st.v, st.i, len, ve, ie) } else { None } {
                Some(s) => Some(s),
                None => {
                    st.v = ve;
                    st.i = ie;
                    st.t = na;
                    if k == arr.len() {
                        return Flow::Go;
                    }
                    st.i += arr[k].1;
                    k += 1;
                    continue;
                }
            }
        };
        let Some(s) = crossing else { return Flow::Done };
        let ts = st.t + s;
        if ts > m.t_end {
            return Flow::Done;
        }
        if out.len() - start >= m.max_spikes {
            return Flow::Full;
        }
        out.push(ts);
        st.i *= (-s * n.inv_tau_s).exp();
        st.v = 0.0;
        st.t = ts;
        st.refr_end = ts + m.t_ref;
    }
}
