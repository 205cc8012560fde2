//! The feed-forward multi-spike scan over time bins: no sorted arrivals (issue 14).
//!
//! A target's arrivals are scattered into bins of a fixed width `h` (one pass), each bin keeping
//! the factored sums `S_m = sum w exp((a - t_0)/tau_m)`, `S_s = sum w exp((a - t_0)/tau_s)`, the
//! sum of its positive weights and a list of its arrivals. The state is superposition, so between
//! two resets it is a closed form of the running sums of the bins since the last reset (for
//! kernels `K = (e_m - e_s) / delta`):
//!
//! ```text
//! V(T) = (E_m(T) sum_m - E_s(T) sum_s) / delta,   I(T) = E_s(T) sum_s
//! ```
//!
//! with `E(T) = exp(-(T - t_0)/tau)` at the bin boundaries, one table per sample (a reset
//! re-bases both sums on the state it leaves). Only a bin where a crossing is
//! possible is simulated arrival by arrival, exactly and in time order (its few arrivals sorted
//! in place), and so is any bin that holds the end of a refractory clamp. The test is a bound:
//! for `h` no longer than the kernel's peak time, `K` rises on `[0, h]`, so an arrival at
//! `s_k` adds `w K(s - s_k) <= w K(s)` when `w > 0` and nothing above 0 when `w < 0`, and
//! `V(s) <= V e_m(s) + (I + P) K(s)` on the bin (`P` its positive weight sum): the solver's
//! [`may_cross`] on that free evolution rules a bin out with certainty.
//!
//! Arrivals are visited synapse by synapse (a sample's input spikes grouped by channel once, in
//! [`ByChannel`]): a synapse's delay and weight factors are read once for all its spikes, and
//! the per-spike data streams in order; only the bins are written at random.
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
const ARRIVALS_PER_BIN: f64 = 4.0;

#[derive(Debug, Clone, Copy, Default)]
struct Bin {
    sm: f64,
    ss: f64,
    pos: f64,
    head: u32,
}

/// A sample's input spikes grouped by channel (time order kept within a channel), with their
/// factors: the layout both feed-forward passes read synapse by synapse.
#[derive(Debug, Default)]
pub struct ByChannel {
    /// Spikes of channel `i` are `start[i]..start[i + 1]`.
    pub start: Vec<u32>,
    pub time: Vec<f64>,
    /// `exp((t - t_0)/tau_m)`, `exp((t - t_0)/tau_s)`.
    pub um: Vec<f64>,
    pub us: Vec<f64>,
    /// The spike's index in the sample's input order.
    pub row: Vec<u32>,
    /// The spike's channel.
    pub chan: Vec<u32>,
    order: Vec<u32>,
}

impl ByChannel {
    /// Groups `inputs` (channels below `n_in`) with their factors `um`, `us`: a stable counting
    /// sort by channel of the spikes in time order (times then ascend within a channel, which
    /// both passes use to stop at a channel's first arrival past their end).
    pub fn build(&mut self, inputs: &[In], um: &[f64], us: &[f64], n_in: usize) {
        let n = inputs.len();
        self.order.clear();
        self.order.extend(0..n as u32);
        if !inputs.windows(2).all(|p| p[0].1 <= p[1].1) {
            self.order.sort_by(|&a, &b| inputs[a as usize].1.total_cmp(&inputs[b as usize].1));
        }
        self.start.clear();
        self.start.resize(n_in + 1, 0);
        for &(i, _) in inputs {
            self.start[i as usize + 1] += 1;
        }
        for i in 0..n_in {
            self.start[i + 1] += self.start[i];
        }
        for v in [&mut self.time, &mut self.um, &mut self.us] {
            v.clear();
            v.resize(n, 0.0);
        }
        self.row.clear();
        self.row.resize(n, 0);
        self.chan.clear();
        self.chan.resize(n, 0);
        // `start[i]` runs through channel i's slots and ends at channel i + 1's start.
        for &r in &self.order {
            let (i, t) = inputs[r as usize];
            let k = self.start[i as usize] as usize;
            self.start[i as usize] += 1;
            self.time[k] = t;
            self.um[k] = um[r as usize];
            self.us[k] = us[r as usize];
            self.row[k] = r;
            self.chan[k] = i;
        }
        for i in (1..=n_in).rev() {
            self.start[i] = self.start[i - 1];
        }
        self.start[0] = 0;
    }
}

/// The per-sample tables of the binned scan, shared by all targets (and threads) of a sample.
#[derive(Debug, Default)]
pub struct BinSample {
    by_channel: ByChannel,
    /// Per input spike (channel order): `(t - lo) / h`.
    tb: Vec<f64>,
    /// `E_m`, `E_s` at every bin boundary (`n + 1` of them).
    em_at: Vec<f64>,
    es_at: Vec<f64>,
    geometry: Geometry,
}

/// The per-target buffers of the binned scan (one set per thread).
#[derive(Debug, Default)]
pub struct BinWork {
    bins: Vec<Bin>,
    /// Per input spike (channel order): the next arrival of the same bin (a singly linked list
    /// per bin).
    next: Vec<u32>,
    /// One exact bin's arrivals `(time, weight)`.
    seg: Vec<(f64, f64)>,
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

/// Whether a sample can take the binned scan: factored (the caller's factors `um`, `us` exist for
/// it) and a kernel of the difference form. `t0` is the earliest input spike (the factors'
/// origin), `hi` the latest possible arrival. Prepares the per-sample tables when it can.
#[allow(clippy::too_many_arguments)]
pub(crate) fn prepare(
    m: &MultiNeuron,
    inputs: &[In],
    um: &[f64],
    us: &[f64],
    n_in: usize,
    t0: f64,
    hi: f64,
    bs: &mut BinSample,
) -> bool {
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
    bs.em_at.clear();
    bs.es_at.clear();
    for b in 0..=geometry.n {
        let t = b as f64 * h;
        bs.em_at.push((-t * n.inv_tau_m).exp());
        bs.es_at.push((-t * n.inv_tau_s).exp());
    }
    bs.by_channel.build(inputs, um, us, n_in);
    bs.tb.clear();
    bs.tb.extend(bs.by_channel.time.iter().map(|&t| (t - lo) * geometry.inv_h));
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
/// on a sample [`prepare`]d in `bs`; appends its spike times to `out.0` and the current at each
/// to `out.1`. Returns `false` if `max_spikes` was reached.
pub(crate) fn simulate_target(
    m: &MultiNeuron,
    f: &DelayFactors,
    row: usize,
    w: &[f64],
    bs: &BinSample,
    work: &mut BinWork,
    (out, current): (&mut Vec<f64>, &mut Vec<f64>),
) -> bool {
    let n = &m.neuron;
    let g = bs.geometry;
    let BinSample { by_channel: bc, tb, em_at, es_at, .. } = bs;
    let BinWork { bins, next, seg } = work;
    // (Entries are written before the lists reach them: no reset between targets.)
    if next.len() < tb.len() {
        next.resize(tb.len(), NONE);
    }
    bins.clear();
    bins.resize(g.n, Bin { sm: 0.0, ss: 0.0, pos: 0.0, head: NONE });
    let n_in = w.len();
    let (d, wfm, wfs, wpos) =
        (&f.delay[row..row + n_in], &f.wfm[row..row + n_in], &f.wfs[row..row + n_in], &f.wpos[row..row + n_in]);
    let n_bins = g.n as f64;
    for i in 0..n_in {
        let (first, end) = (bc.start[i] as usize, bc.start[i + 1] as usize);
        if first == end {
            continue;
        }
        let (db, xm, xs, p) = (d[i] * g.inv_h, wfm[i], wfs[i], wpos[i]);
        let spikes = tb[first..end].iter().zip(bc.um[first..end].iter().zip(&bc.us[first..end]));
        for (r, ((&t, (&um, &us)), nx)) in (first as u32..).zip(spikes.zip(&mut next[first..end])) {
            let x = t + db;
            if !(x < n_bins) {
                break; // this channel's later spikes arrive after t_end: they cannot matter
            }
            // `x >= 0` (`t >= lo`, delays `>= 0`), so the bin index is exact.
            let bin = &mut bins[x as u32 as usize];
            bin.sm += um * xm;
            bin.ss += us * xs;
            bin.pos += p;
            *nx = bin.head;
            bin.head = r;
        }
    }
    // The scan. Between resets the state is a closed form of the factored sums since the last
    // one, `V(T) = (E_m(T) sum_m - E_s(T) sum_s) / delta`, `I(T) = E_s(T) sum_s` (a reset
    // re-bases both sums on the state it leaves), so a bin that cannot cross only adds its sums.
    let delta = n.inv_tau_s - n.inv_tau_m;
    let start = out.len();
    let (mut sum_m, mut sum_s) = (0.0, 0.0);
    let mut refr_end = f64::NEG_INFINITY;
    for (b, bin) in bins.iter().enumerate() {
        let t_b = g.lo + b as f64 * g.h;
        if t_b > m.t_end {
            return true;
        }
        let t1 = g.lo + (b + 1) as f64 * g.h;
        if refr_end >= t1 {
            // Clamped throughout: V stays 0 (re-based where the clamp ends), I takes the arrivals.
            sum_s += bin.ss;
            continue;
        }
        let (em, es) = (em_at[b], es_at[b]);
        let i = es * sum_s;
        let (v, exact) = if refr_end >= t_b {
            // The clamp ends in this bin (or at its start).
            (0.0, true)
        } else {
            let v = (em * sum_m - es * sum_s) * n.inv_delta;
            let ib = i + bin.pos;
            let exact = v >= n.theta
                || (ib > 0.0
                    && v.max(0.0) + ib * g.k_h >= n.theta
                    && may_cross(n, v, ib, g.h, v * g.em_h + ib * g.k_h, ib * g.es_h));
            (v, exact)
        };
        if !exact {
            sum_m += bin.sm;
            sum_s += bin.ss;
            continue;
        }
        seg.clear();
        let mut r = bin.head;
        while r != NONE {
            let i = bc.chan[r as usize] as usize;
            seg.push((bc.time[r as usize] + d[i], w[i]));
            r = next[r as usize];
        }
        insertion_sort(seg);
        let mut st = State { t: t_b, v, i, refr_end };
        match advance(m, &mut st, seg, t1, (out, current), start) {
            Flow::Go => {}
            Flow::Done => return true,
            Flow::Full => return false,
        }
        refr_end = st.refr_end;
        sum_s = st.i / es_at[b + 1];
        sum_m = (st.v * delta + st.i) / em_at[b + 1];
    }
    let t_n = g.lo + g.n as f64 * g.h;
    let (em, es) = (em_at[g.n], es_at[g.n]);
    let v = if refr_end >= t_n { 0.0 } else { (em * sum_m - es * sum_s) * n.inv_delta };
    let mut st = State { t: t_n, v, i: es * sum_s, refr_end };
    // Past the last bin (only when t_end lies beyond the last arrival): free evolution.
    !matches!(advance(m, &mut st, &[], f64::INFINITY, (out, current), start), Flow::Full)
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
/// `st.t`) to `t_stop` (may be infinite), appending spikes to `out.0` and their currents to
/// `out.1` (`start` is where this neuron's spikes begin).
fn advance(
    m: &MultiNeuron,
    st: &mut State,
    arr: &[(f64, f64)],
    t_stop: f64,
    (out, current): (&mut Vec<f64>, &mut Vec<f64>),
    start: usize,
) -> Flow {
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
            let (em, es) = m.decays(len);
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
        current.push(st.i);
        st.v = 0.0;
        st.t = ts;
        st.refr_end = ts + m.t_ref;
    }
}
