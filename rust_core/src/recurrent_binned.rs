//! The recurrent forward pass over time bins: a target's windows without a possible crossing
//! advance in closed form (issue 14).
//!
//! Time is cut into the windows of [`crate::recurrent`] (about four feed-forward arrivals per
//! target, never longer than the kernel's peak time), grouped into epochs of [`EPOCH`] windows.
//! Every arrival, feed-forward or recurrent, adds to its target's *bin* of its window the factored
//! sums `S_m = sum w exp((a - base)/tau_m)`, `S_s = sum w exp((a - base)/tau_s)` and an upper
//! bound of its positive weight, and leaves a record (the same two numbers, its time, target and
//! window) in the epoch's list, linked per bin. A neuron's state is superposition between resets
//! (the [`crate::binned`] device), so at every window boundary
//!
//! ```text
//! V(T) = (E_m(T) sum_m - E_s(T) sum_s) / delta,   I(T) = E_s(T) sum_s,   E(T) = exp(-(T - base)/tau)
//! ```
//!
//! from the running sums of the bins since its last reset. A window is processed as:
//!
//! 1. every target is tested with the bound of [`crate::binned`]: for windows no longer than the
//!    kernel's peak time, `V(s) <= V e_m(s) + (I + P) K(s)` on the window (`P` the bin's positive
//!    weight sum), and the solver's [`may_cross`] on that free evolution rules a crossing out
//!    with certainty. A window that holds the end of a refractory clamp is exact as well;
//! 2. the targets that may cross are *opened*: their state at the window's start, their records
//!    as arrivals (factors from the arrival's time, weight from `S_s`), sorted; each is scanned
//!    with [`crate::recurrent`]'s exact scan to its first crossing;
//! 3. the earliest tentative crossing is final and committed. The spike's arrivals inside the
//!    current window open their targets if they were closed (from their state at the window's
//!    start, which the closed form still holds) and rescan them. Repeat;
//! 4. closed targets add their bins to their sums; open ones convert their scanned state at the
//!    window's end back to sums.
//!
//! Arrivals are not stored between their spike and their epoch. A spike is a *source* with a
//! cursor into its synapses sorted by delay ([`RecFactors::by_delay`]); when an epoch comes up,
//! every source emits the arrivals that land in it (the inputs within it become sources first; a
//! spike committed during the epoch emits its arrivals within it at once) and stays a source
//! until its last synapse. So the bins and records written are the current epoch's, in cache;
//! memory is the sources within the largest delay plus one epoch's arrivals, O(spikes).
//!
//! Most target-windows cost a bound test and two additions per arrival; only open ones are
//! simulated arrival by arrival. Bins are grouping only: an arrival's own time decides where it
//! acts in an open window.

use crate::multi::{FArr, MultiNeuron, RecLayer};
use crate::neuron::Neuron;
use crate::recurrent::{
    commit_spike, insertion_sort, next_crossing, rescan, scan, sort_by_neuron, take_earliest, window_of, BySyn,
    RecFactors, RecScratch, State,
};
use crate::solver::may_cross;
use crate::ttfs::In;

/// Marks the end of a bin's record list.
pub(crate) const NONE: u32 = u32::MAX;

/// One target's arrivals in one window: factored sums, positive weight sum, head of its records.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bin {
    sm: f64,
    ss: f64,
    pos: f64,
    head: u32,
}

impl Default for Bin {
    fn default() -> Self {
        Self { sm: 0.0, ss: 0.0, pos: 0.0, head: NONE }
    }
}

/// An arrival of the current epoch: what it adds to its bin (`w exp((a - base)/tau_m)`,
/// `w exp((a - base)/tau_s)`), its time, its target and its window within the epoch. An open
/// window takes its factors from its time (two `exp`) and its weight from `xs`: cheaper than
/// reading the source spike and the synapse back from memory.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rec {
    xm: f64,
    xs: f64,
    a: f64,
    target: u32,
    sub: u32,
}

/// Windows per epoch: the bins of an epoch (`EPOCH x n_out`) stay in cache while its arrivals are
/// emitted; longer epochs mean fewer resumptions of the sources (each a cache miss in the
/// synapse table). 16 against 8: the recurrent forward pass of `shd_step 2 8000 3 0.01` 17 %
/// faster (eight pairs), `shd.toml`'s start (recurrent delays 0) unchanged; 32 was slower there.
const EPOCH: i64 = 16;

/// A target's state between windows: the running sums since its last reset and its refractory
/// end (with that time's factors).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sums {
    m: f64,
    s: f64,
    refr_end: f64,
    rfm: f64,
    rfs: f64,
}

/// Whether a sample takes the binned recurrent scan: factored decays, a kernel of the difference
/// form (`K = (e_m - e_s) / delta`), synapse positions that fit a `u32`.
pub(crate) fn applies(m: &MultiNeuron, factors: &RecFactors, n_out: usize) -> bool {
    factors.factored
        && m.neuron.kernel_is_difference()
        && n_out <= u32::MAX as usize
        && factors.by_delay_start.len() == factors.ff_t.w.len() / n_out.max(1) + n_out + 1
}

/// The binned recurrent forward pass (see the module doc); same contract as
/// [`crate::recurrent::recurrent_forward_with`]. `inputs` non-empty, the layer non-empty.
pub(crate) fn forward(
    m: &MultiNeuron,
    layer: &RecLayer,
    inputs: &[In],
    factors: &RecFactors,
    (out, current): (&mut Vec<In>, &mut Vec<f64>),
    scratch: &mut RecScratch,
) -> bool {
    let n = &m.neuron;
    let n_out = layer.ff.n_out;
    let RecScratch {
        lists,
        committed,
        scan: scanned,
        touched,
        touched_list,
        crossing,
        candidates,
        dirty,
        order,
        bins,
        arena,
        open_src,
        link,
        sums,
        ..
    } = scratch;
    order.clear();
    order.extend_from_slice(inputs);
    order.sort_unstable_by(|a, b| a.1.total_cmp(&b.1));
    let n_in_spikes = order.len();
    let origin = order[0].1;
    let span = order[n_in_spikes - 1].1 - origin;
    let dmax = factors.max_delay;
    let tau_min = n.tau_m.min(n.tau_s);
    // A few feed-forward arrivals per target and window; bounded window and bucket counts; never
    // wider than the kernel's peak (the bound test needs K rising over a window).
    let mut dt = if span > 0.0 { WINDOW_ARRIVALS * span / n_in_spikes as f64 } else { tau_min };
    dt = dt.max((span + dmax) / 4e6).max(dmax / 65536.0).min(50.0 * tau_min).min(n.kernel_peak());
    let inv_dt = 1.0 / dt;
    let rebase_after = 200.0 * tau_min;
    let (ref_fm, ref_fs) = ((m.t_ref * n.inv_tau_m).exp(), (m.t_ref * n.inv_tau_s).exp());
    let (em_h, es_h) = n.decays(dt);
    let k_h = n.kernel_from(dt, em_h, es_h);
    let delta = n.inv_tau_s - n.inv_tau_m;

    bins.clear();
    bins.resize(EPOCH as usize * n_out, Bin::default());
    link.clear();
    let mut counts = [0usize; EPOCH as usize];
    arena.clear();
    open_src.clear();
    lists.resize_with(n_out, Vec::new);
    for l in lists.iter_mut() {
        l.clear();
    }
    sums.clear();
    sums.resize(n_out, Sums { m: 0.0, s: 0.0, refr_end: f64::NEG_INFINITY, rfm: 1.0, rfs: 1.0 });
    let rest =
        State { v: 0.0, i: 0.0, t: origin, fm: 1.0, fs: 1.0, refr_end: f64::NEG_INFINITY, rfm: 1.0, rfs: 1.0, pos: 0 };
    committed.clear();
    committed.resize(n_out, rest);
    scanned.clear();
    scanned.resize(n_out, rest);
    touched.clear();
    touched.resize(n_out, false);
    touched_list.clear();
    crossing.clear();
    crossing.resize(n_out, f64::INFINITY);
    candidates.clear();
    dirty.clear();
    let n_ff_rows = layer.ff.n_in;
    let (sorted, row_start) = (&factors.by_delay[..], &factors.by_delay_start[..]);
    let mut epoch = -1i64;

    let start = out.len();
    let mut base = origin;
    let mut next_in = 0usize;
    let mut c: i64 = 0;
    let rec_t = &factors.rec_t;
    loop {
        let t_lo = origin + c as f64 * dt;
        if t_lo > m.t_end {
            break;
        }
        let (fm_lo, fs_lo) = (((t_lo - base) * n.inv_tau_m).exp(), ((t_lo - base) * n.inv_tau_s).exp());
        let in_epoch = c.div_euclid(EPOCH) == epoch;
        if open_src.is_empty() && !(in_epoch && counts[(c - epoch * EPOCH) as usize..].iter().any(|&k| k > 0)) {
            // Nothing in flight: jump to the window of the next input, of the earliest crossing a
            // neuron makes on its own, or of the end of a refractory clamp (where its sums are
            // re-based), instead of stepping through empty windows.
            let mut t_next = order.get(next_in).map_or(f64::INFINITY, |x| x.1);
            for sm in sums.iter() {
                let st = state_at(n, sm, t_lo, fm_lo, fs_lo);
                if sm.refr_end >= t_lo {
                    t_next = t_next.min(sm.refr_end);
                } else if st.v >= n.theta || (st.i > 0.0 && st.v.max(0.0) + st.i * n.k_max >= n.theta) {
                    t_next = t_next.min(next_crossing(m, &st));
                }
            }
            if t_next == f64::INFINITY || t_next > m.t_end {
                break;
            }
            let b = window_of(t_next, origin, dt, inv_dt);
            if b > c {
                c = b;
                continue;
            }
        }
        let t_hi = origin + (c + 1) as f64 * dt;
        let (fm_lo, fs_lo) = if t_hi - base > rebase_after {
            // Keep the factors in range: measure them from this window's start from now on.
            let (xm, xs) = (1.0 / fm_lo, 1.0 / fs_lo);
            for sm in sums.iter_mut() {
                sm.m *= xm;
                sm.s *= xs;
                sm.rfm *= xm;
                sm.rfs *= xs;
            }
            for r in arena.iter_mut() {
                r.xm *= xm;
                r.xs *= xs;
            }
            for o in open_src.iter_mut() {
                o.um *= xm;
                o.us *= xs;
            }
            for b in bins.iter_mut() {
                b.sm *= xm;
                b.ss *= xs;
                b.pos *= xs;
            }
            base = t_lo;
            (1.0, 1.0)
        } else {
            (fm_lo, fs_lo)
        };
        let end_f = (((t_hi - base) * n.inv_tau_m).exp(), ((t_hi - base) * n.inv_tau_s).exp());
        let (em_lo, es_lo) = (1.0 / fm_lo, 1.0 / fs_lo);
        let limit = (c.div_euclid(EPOCH) + 1) * EPOCH;
        let emit = Emit { origin, inv_dt, t_end: m.t_end, epoch: c.div_euclid(EPOCH), limit, n_out };
        if c.div_euclid(EPOCH) != epoch {
            // A new epoch (all earlier arrivals are done): the inputs within it become sources,
            // and every source emits its arrivals within it into its windows' bins.
            epoch = c.div_euclid(EPOCH);
            for b in bins.iter_mut() {
                *b = Bin::default();
            }
            counts = [0; EPOCH as usize];
            link.clear();
            arena.clear();
            while next_in < n_in_spikes && window_of(order[next_in].1, origin, dt, inv_dt) < limit {
                let (i, t) = order[next_in];
                let (um, us) = (((t - base) * n.inv_tau_m).exp(), ((t - base) * n.inv_tau_s).exp());
                let (pos, end) = (row_start[i as usize], row_start[i as usize + 1]);
                open_src.push(Source { t, um, us, pos, end });
                next_in += 1;
            }
            let mut k = 0;
            while k < open_src.len() {
                // Each source resumes at its own place in the synapse table, which is not in the
                // caches: ask for the line a few sources ahead.
                if let Some(ahead) = open_src.get(k + SOURCES_AHEAD) {
                    prefetch(sorted.as_ptr().wrapping_add(ahead.pos as usize));
                }
                if emit.run(&mut open_src[k], sorted, c, (bins, link, &mut counts, arena)) {
                    open_src.swap_remove(k);
                } else {
                    k += 1;
                }
            }
        }
        let slot = (c - epoch * EPOCH) as usize;
        let row = slot * n_out;
        // Whether a target must be simulated arrival by arrival in this window: its clamp ends in
        // it, or the bound with the bin's arrivals does not rule a crossing out.
        let must_open = |sm: &Sums, bin: &Bin| -> bool {
            sm.refr_end < t_hi
                && (sm.refr_end >= t_lo || {
                    let v = (sm.m * em_lo - sm.s * es_lo) * n.inv_delta;
                    // `pos / fs_lo` bounds the bin's positive weights: `w exp((a - base)/tau_s) >=
                    // w exp((t_lo - base)/tau_s)` for `w > 0`, `a >= t_lo`.
                    let ib = (sm.s + bin.pos) * es_lo;
                    v >= n.theta
                        || (ib > 0.0
                            && v.max(0.0) + ib * k_h >= n.theta
                            && may_cross(n, v, ib, dt, v * em_h + ib * k_h, ib * es_h))
                })
        };
        // Open every target that may cross in this window (or whose clamp ends in it) and scan it
        // to its first crossing.
        for q in 0..n_out {
            if !must_open(&sums[q], &bins[row + q]) {
                continue;
            }
            open(n, base, &bins[row + q], (arena, link), &mut lists[q]);
            committed[q] = state_at(n, &sums[q], t_lo, fm_lo, fs_lo);
            touched[q] = true;
            touched_list.push(q as u32);
            let st = &mut scanned[q];
            *st = committed[q];
            if let Some(tc) = scan(m, st, &lists[q], t_hi, end_f, true) {
                crossing[q] = tc;
                candidates.push(q as u32);
            }
        }
        // Commit the tentative spikes in time order.
        while !candidates.is_empty() {
            let (j, tc) = take_earliest(candidates, crossing);
            if tc > m.t_end {
                continue;
            }
            if out.len() - start >= m.max_spikes {
                return false;
            }
            let (fm_c, fs_c) =
                commit_spike(m, (j, tc), (out, current), (committed, scanned), dirty, (base, true), (ref_fm, ref_fs));
            // Arrivals inside this window join their target's list at once (the synapses come by
            // delay: they are the first ones); the later ones of this epoch go to their bins, the
            // rest when their epoch comes up.
            let r0 = rec_t.row(j).start;
            let (pos, end) = (row_start[n_ff_rows + j], row_start[n_ff_rows + j + 1]);
            let mut src = Source { t: tc, um: fm_c, us: fs_c, pos, end };
            while src.pos < src.end {
                let syn = &sorted[src.pos as usize];
                let a = tc + syn.d;
                if a > m.t_end || ((a - origin) * inv_dt) as i64 > c {
                    break;
                }
                src.pos += 1;
                let q = syn.target as usize;
                if !touched[q] {
                    // A closed target takes the arrival into its bin, and stays closed while the
                    // bound with it still rules a crossing out: recurrent delays of 0 (the SHD
                    // recipe's) would otherwise open every target at every spike.
                    let rec = Rec { xm: fm_c * syn.wfm, xs: fs_c * syn.wfs, a, target: syn.target, sub: slot as u32 };
                    arena.push(rec);
                    add_to_bin(bins, link, &mut counts, &rec, arena.len() - 1, n_out);
                    if must_open(&sums[q], &bins[row + q]) {
                        // Opened from its state at the window's start; its list has the arrival.
                        open(n, base, &bins[row + q], (arena, link), &mut lists[q]);
                        committed[q] = state_at(n, &sums[q], t_lo, fm_lo, fs_lo);
                        touched[q] = true;
                        touched_list.push(q as u32);
                        dirty.push(q as u32);
                    }
                    continue;
                }
                let arr = FArr { a, w: rec_t.w[r0 + q], fm: fm_c * rec_t.fm[r0 + q], fs: fs_c * rec_t.fs[r0 + q] };
                let list = &mut lists[q];
                let mut p = list.len();
                list.push(arr);
                while p > 0 && list[p - 1].a > a {
                    list[p] = list[p - 1];
                    p -= 1;
                }
                list[p] = arr;
                if q != j {
                    dirty.push(q as u32);
                }
            }
            if !emit.run(&mut src, sorted, c, (bins, link, &mut counts, arena)) {
                open_src.push(src);
            }
            // The spiking neuron (after its reset) and the targets hit inside the window.
            rescan(m, dirty, (committed, scanned), lists, (crossing, candidates), (t_hi, end_f, true));
        }
        // The window is final: closed targets add their bins, open ones take their scanned state.
        for q in 0..n_out {
            let bin = &bins[row + q];
            let sm = &mut sums[q];
            if touched[q] {
                *sm = sums_at(n, &scanned[q], t_hi, end_f, delta);
                touched[q] = false;
                lists[q].clear();
            } else {
                if sm.refr_end < t_hi {
                    sm.m += bin.sm;
                }
                sm.s += bin.ss;
            }
        }
        touched_list.clear();
        counts[slot] = 0;
        c += 1;
    }
    sort_by_neuron(&mut out[start..], &mut current[start..]);
    true
}

/// Feed-forward arrivals per target in a window, on average.
const WINDOW_ARRIVALS: f64 = 4.0;

/// A spike whose arrivals are not all emitted yet: its time and factors, and its next synapse
/// (`pos..end` in [`RecFactors::by_delay`], by delay).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Source {
    t: f64,
    um: f64,
    us: f64,
    pos: u32,
    end: u32,
}

/// Emits sources' arrivals into the current epoch's bins.
struct Emit {
    origin: f64,
    inv_dt: f64,
    t_end: f64,
    epoch: i64,
    /// The first window after the epoch.
    limit: i64,
    n_out: usize,
}

impl Emit {
    /// Emits `src`'s arrivals up to the end of the epoch (none before window `c`); returns whether
    /// it has none left.
    #[inline]
    fn run(
        &self,
        src: &mut Source,
        sorted: &[BySyn],
        c: i64,
        (bins, link, counts, arena): (&mut [Bin], &mut Vec<u32>, &mut [usize; EPOCH as usize], &mut Vec<Rec>),
    ) -> bool {
        while src.pos < src.end {
            let syn = &sorted[src.pos as usize];
            let a = src.t + syn.d;
            if a > self.t_end {
                // So are the later ones: the synapses come by delay.
                return true;
            }
            // A plain floor (bins are grouping only: an arrival that rounding puts a hair outside
            // its window acts at its own time in an open window, and the bound test is off by the
            // rounding of its time); never before the current window.
            let b = (((a - self.origin) * self.inv_dt) as i64).max(c);
            if b >= self.limit {
                return false;
            }
            let rec = Rec {
                xm: src.um * syn.wfm,
                xs: src.us * syn.wfs,
                a,
                target: syn.target,
                sub: (b - self.epoch * EPOCH) as u32,
            };
            arena.push(rec);
            add_to_bin(bins, link, counts, &rec, arena.len() - 1, self.n_out);
            src.pos += 1;
        }
        true
    }
}

/// How many sources ahead the epoch's emission asks for a source's synapses.
const SOURCES_AHEAD: usize = 4;

/// A prefetch of the line at `p` (a hint: never faults, whatever the address).
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Adds record `r` of the current epoch's arena to its window's bin and the bin's list.
#[inline(always)]
fn add_to_bin(bins: &mut [Bin], link: &mut Vec<u32>, counts: &mut [usize], rec: &Rec, r: usize, n_out: usize) {
    let b = &mut bins[rec.sub as usize * n_out + rec.target as usize];
    b.sm += rec.xm;
    b.ss += rec.xs;
    b.pos += rec.xs.max(0.0);
    debug_assert_eq!(link.len(), r);
    link.push(b.head);
    b.head = r as u32;
    counts[rec.sub as usize] += 1;
}

/// A target's list for the window: its bin's records as arrivals, sorted by time.
#[inline]
fn open(n: &Neuron, base: f64, bin: &Bin, (recs, link): (&[Rec], &[u32]), list: &mut Vec<FArr>) {
    list.clear();
    let mut r = bin.head;
    while r != NONE {
        let rec = &recs[r as usize];
        let (fm, fs) = (((rec.a - base) * n.inv_tau_m).exp(), ((rec.a - base) * n.inv_tau_s).exp());
        list.push(FArr { a: rec.a, w: rec.xs / fs, fm, fs });
        r = link[r as usize];
    }
    insertion_sort(list);
}

/// The state at a window's start `t` (factors `fm`, `fs`) from a target's sums: `V` from the
/// closed form, or 0 while clamped.
#[inline]
fn state_at(n: &crate::neuron::Neuron, sm: &Sums, t: f64, fm: f64, fs: f64) -> State {
    let i = sm.s / fs;
    let v = if sm.refr_end >= t { 0.0 } else { (sm.m / fm - sm.s / fs) * n.inv_delta };
    State { v, i, t, fm, fs, refr_end: sm.refr_end, rfm: sm.rfm, rfs: sm.rfs, pos: 0 }
}

/// A scanned state (at its last event in the window) as sums at the window's end (factors
/// `end_f`), evolving it freely over the rest of the window.
#[inline]
fn sums_at(n: &crate::neuron::Neuron, st: &State, t_hi: f64, end_f: (f64, f64), delta: f64) -> Sums {
    let (fm_hi, fs_hi) = end_f;
    let i_hi = st.i * (st.fs / fs_hi);
    let v_hi = if st.refr_end >= t_hi {
        0.0
    } else if st.refr_end > st.t {
        // The clamp ends within the rest of the window: V is 0 there and free after it.
        let (em, es) = (st.rfm / fm_hi, st.rfs / fs_hi);
        st.i * (st.fs / st.rfs) * (em - es) * n.inv_delta
    } else {
        let (em, es) = (st.fm / fm_hi, st.fs / fs_hi);
        st.v * em + st.i * (em - es) * n.inv_delta
    };
    Sums { m: (v_hi * delta + i_hi) * fm_hi, s: i_hi * fs_hi, refr_end: st.refr_end, rfm: st.rfm, rfs: st.rfs }
}
