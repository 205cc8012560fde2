//! Recurrent multi-spike layers at feed-forward cost per synaptic event (issue 14).
//!
//! # Forward: time windows with per-target pending arrivals
//!
//! (Samples with factored decays and a kernel of the difference form take the binned scan of
//! [`crate::recurrent_binned`] over the same windows; what follows is the windowed scan that
//! simulates every arrival, [`recurrent_forward_windowed`].)
//!
//! Time is cut into windows of a fixed length (about eight feed-forward arrivals per target).
//! Every arrival waits in the bucket of its window (a ring of buckets spanning the largest
//! delay); a spike is fanned out to all its targets when it is committed, an input spike when
//! its window comes up, so only the arrivals in flight are held (memory O(spikes in the last
//! `max delay` x fan-out), never the whole layer's arrivals). A window is processed as:
//!
//! 1. its bucket is scattered into per-target lists and each list is sorted (a handful of
//!    records);
//! 2. every target scans its list from its committed state with the feed-forward scan's
//!    arithmetic (exp-free decays from per-spike and per-synapse factors, the same crossing
//!    tests and solver), stopping at its first threshold crossing: a tentative spike;
//! 3. the earliest tentative spike is final (no other spike precedes it, and a spike only
//!    creates arrivals after itself); it is committed and fanned out. A recurrent arrival that
//!    lands inside the current window is inserted into its target's list, and only that target
//!    is rescanned from its committed state (a few records). Repeat until no tentative spike is
//!    left in the window.
//!
//! No target's past is rescanned beyond the current window; no prediction is ever stale; the
//! per-event cost is the feed-forward scan's plus a bucket scatter.
//!
//! # Backward: adjoint pulled at the spikes, in global reverse time order
//!
//! (With factored decays and a kernel of the difference form, the same order of work runs on the
//! linear forms of [`crate::recurrent_linear`].)
//!
//! See [`crate::adjoint`]: between its own events a neuron's adjoint is free, so an arrival's
//! gradient needs no order among arrivals. The only coupling in a recurrent layer is that a
//! spike's total `dL/dt` collects the adjoints of its targets at its arrivals, which lie later
//! in time. Walking all neurons' own events in reverse time order, each spike *pulls* those
//! adjoints (their intervals lie after it, so they are already known), then takes its jump.
//! Feed-forward arrivals are evaluated afterwards in one pass. Memory O(spikes).

use std::cell::RefCell;
use std::ops::Range;

use crate::adjoint::{Own, REF_END};
use crate::layer::LayerRef;
use crate::multi::{delay_factors, DelayFactors, FArr, MultiNeuron, RecLayer, MAX_FACTOR_SPAN};
use crate::neuron::Neuron;
use crate::recurrent_binned::{Bin, Rec, Source, Sums};
use crate::solver::{crossing_in_interval, first_crossing};
use crate::ttfs::In;

/// A layer's synapses source by source (`row = source`, `column = target`): weight, effective
/// delay, `exp(d/tau_m)`, `exp(d/tau_s)`. Fanning a spike out reads one contiguous row.
#[derive(Debug, Clone, Default)]
pub struct SourceMajor {
    pub n_targets: usize,
    pub w: Vec<f64>,
    pub d: Vec<f64>,
    pub fm: Vec<f64>,
    pub fs: Vec<f64>,
}

impl SourceMajor {
    pub fn new(n: &Neuron, layer: &LayerRef) -> Self {
        let size = layer.n_in * layer.n_out;
        let mut s = Self {
            n_targets: layer.n_out,
            w: Vec::with_capacity(size),
            d: Vec::with_capacity(size),
            fm: Vec::with_capacity(size),
            fs: Vec::with_capacity(size),
        };
        for i in 0..layer.n_in {
            for j in 0..layer.n_out {
                let (d, w) = (layer.delay(j, i), layer.weight(j, i));
                let (fm, fs) = ((d * n.inv_tau_m).exp(), (d * n.inv_tau_s).exp());
                s.w.push(w);
                s.d.push(d);
                s.fm.push(fm);
                s.fs.push(fs);
            }
        }
        s
    }

    #[inline]
    pub(crate) fn row(&self, src: usize) -> Range<usize> {
        src * self.n_targets..(src + 1) * self.n_targets
    }
}

/// A synapse in [`RecFactors::by_delay`]: its delay, `w exp(d/tau_m)`, `w exp(d/tau_s)` (what an
/// arrival adds to its bin, times the source spike's factors) and its target.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BySyn {
    pub(crate) d: f64,
    pub(crate) wfm: f64,
    pub(crate) wfs: f64,
    pub(crate) target: u32,
}

/// Everything a recurrent layer's passes precompute from its parameters; compute it once per
/// batch ([`rec_factors`]) and share it across samples and threads.
#[derive(Debug, Clone)]
pub struct RecFactors {
    /// Feed-forward and recurrent synapses target by target (the backward pass's layout).
    pub ff: DelayFactors,
    pub rec: DelayFactors,
    pub ff_t: SourceMajor,
    pub rec_t: SourceMajor,
    /// The synapses with a weight, source by source (the feed-forward sources, then the layer's
    /// own neurons; source `k` is `by_delay_start[k]..by_delay_start[k + 1]`), by delay within a
    /// source: [`crate::recurrent_binned`] emits a spike's arrivals epoch by epoch, each one when
    /// its epoch comes up.
    pub(crate) by_delay: Vec<BySyn>,
    pub(crate) by_delay_start: Vec<u32>,
    /// Largest delay, feed-forward or recurrent.
    pub max_delay: f64,
    /// Whether the delays are short enough (against the time constants) for the factored,
    /// exp-free decays; otherwise every decay takes `exp`.
    pub factored: bool,
}

/// The [`RecFactors`] of a layer.
pub fn rec_factors(n: &Neuron, layer: &RecLayer) -> RecFactors {
    let ff = delay_factors(n, &layer.ff);
    let rec = delay_factors(n, &layer.rec);
    let ff_t = SourceMajor::new(n, &layer.ff);
    let rec_t = SourceMajor::new(n, &layer.rec);
    let max_delay = ff.max_delay.max(layer.rec.delays.iter().fold(0.0_f64, |m, &d| m.max(d)));
    let factored = max_delay * n.inv_tau_m.max(n.inv_tau_s) <= 300.0;
    let (mut by_delay, mut by_delay_start) = (Vec::new(), vec![0u32]);
    // (Positions are `u32`: a layer with more synapses keeps the windowed scan.)
    let fits = ff_t.w.len() + rec_t.w.len() <= u32::MAX as usize;
    for t in [&ff_t, &rec_t].into_iter().filter(|_| fits) {
        for src in 0..t.w.len() / t.n_targets.max(1) {
            let r = t.row(src);
            let first = by_delay.len();
            by_delay.extend(r.filter(|&k| t.w[k] != 0.0).map(|k| BySyn {
                d: t.d[k],
                wfm: t.w[k] * t.fm[k],
                wfs: t.w[k] * t.fs[k],
                target: (k % t.n_targets) as u32,
            }));
            by_delay[first..].sort_by(|a, b| a.d.total_cmp(&b.d).then(a.target.cmp(&b.target)));
            by_delay_start.push(by_delay.len() as u32);
        }
    }
    RecFactors { ff, rec, ff_t, rec_t, by_delay, by_delay_start, max_delay, factored }
}

/// Feed-forward arrivals per target in a window, on average.
const WINDOW_ARRIVALS: f64 = 4.0;

/// Asks for the cache line `ahead` records past a bucket's end before it is written: arrivals
/// are scattered over all buckets, so the hardware prefetcher cannot see the stream, and each
/// new line of a bucket would otherwise stall the store.
#[inline(always)]
pub(crate) fn prefetch_tail<T>(bucket: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        let p = bucket.as_ptr().wrapping_add(bucket.len() + 3);
        // SAFETY: a prefetch is a hint; it never faults, whatever the address.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bucket;
}

/// An arrival waiting in the ring of buckets.
#[derive(Debug, Clone, Copy, Default)]
struct Pending {
    arr: FArr,
    target: u32,
}

/// A neuron's state in the forward pass: `(V, I)` at time `t` with the factors of `t`
/// (`exp((t - base)/tau)`), its refractory end with that time's factors, and the index of the
/// next arrival in its list for the current window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct State {
    pub(crate) v: f64,
    pub(crate) i: f64,
    pub(crate) t: f64,
    pub(crate) fm: f64,
    pub(crate) fs: f64,
    pub(crate) refr_end: f64,
    pub(crate) rfm: f64,
    pub(crate) rfs: f64,
    pub(crate) pos: usize,
}

/// Reusable buffers of the recurrent passes, one set per worker thread.
#[derive(Default)]
pub struct RecScratch {
    ring: Vec<Vec<Pending>>,
    pub(crate) lists: Vec<Vec<FArr>>,
    pub(crate) committed: Vec<State>,
    pub(crate) scan: Vec<State>,
    pub(crate) touched: Vec<bool>,
    pub(crate) touched_list: Vec<u32>,
    /// Tentative crossing of each neuron in the current window (`INFINITY`: none).
    pub(crate) crossing: Vec<f64>,
    pub(crate) candidates: Vec<u32>,
    pub(crate) dirty: Vec<u32>,
    pub(crate) order: Vec<In>,
    // The binned forward pass ([`crate::recurrent_binned`]).
    pub(crate) bins: Vec<Bin>,
    pub(crate) arena: Vec<Rec>,
    pub(crate) open_src: Vec<Source>,
    pub(crate) link: Vec<u32>,
    pub(crate) sums: Vec<Sums>,
    // Backward.
    pub(crate) own: Own,
    pub(crate) owner: Vec<u32>,
    pub(crate) events: Vec<u32>,
    pub(crate) gsrc: Vec<f64>,
    pub(crate) um: Vec<f64>,
    pub(crate) us: Vec<f64>,
    pub(crate) hm: Vec<f64>,
    pub(crate) hs: Vec<f64>,
    pub(crate) q_ref: Vec<f64>,
    // The backward pass's linear forms ([`crate::recurrent_linear`]).
    pub(crate) cells: Vec<crate::recurrent_linear::Cells>,
    pub(crate) grid: Vec<u32>,
    pub(crate) lanes: Vec<[f64; 4]>,
    pub(crate) coef: Vec<[f64; 2]>,
    pub(crate) by_channel: crate::binned::ByChannel,
    pub(crate) gsrc_bc: Vec<f64>,
    pub(crate) rec_gw: Vec<f64>,
    pub(crate) rec_gd: Vec<f64>,
}

thread_local! {
    static SCRATCH: RefCell<RecScratch> = RefCell::new(RecScratch::default());
    static FACTORS: RefCell<Option<(Snapshot, RecFactors)>> = const { RefCell::new(None) };
}

/// The parameters [`RecFactors`] were computed from, kept to recognise them bit for bit.
struct Snapshot {
    neuron: [u64; 2],
    shape: [usize; 4],
    kinds: [crate::layer::DelayKind; 2],
    values: Vec<u64>,
}

impl Snapshot {
    fn parts<'a>(layer: &'a RecLayer) -> [&'a [f64]; 4] {
        [layer.ff.weights, layer.ff.delays, layer.rec.weights, layer.rec.delays]
    }

    fn matches(&self, n: &Neuron, layer: &RecLayer) -> bool {
        let parts = Self::parts(layer);
        self.neuron == [n.tau_m.to_bits(), n.tau_s.to_bits()]
            && self.shape == [layer.ff.n_out, layer.ff.n_in, layer.rec.n_out, layer.rec.n_in]
            && self.kinds == [layer.ff.kind, layer.rec.kind]
            && self.values.len() == parts.iter().map(|p| p.len()).sum::<usize>()
            && parts.iter().flat_map(|p| p.iter()).zip(&self.values).all(|(x, &y)| x.to_bits() == y)
    }

    fn new(n: &Neuron, layer: &RecLayer) -> Self {
        Self {
            neuron: [n.tau_m.to_bits(), n.tau_s.to_bits()],
            shape: [layer.ff.n_out, layer.ff.n_in, layer.rec.n_out, layer.rec.n_in],
            kinds: [layer.ff.kind, layer.rec.kind],
            values: Self::parts(layer).iter().flat_map(|p| p.iter().map(|x| x.to_bits())).collect(),
        }
    }
}

/// Runs `f` with the layer's [`RecFactors`], recomputed only when the parameters differ (bit for
/// bit) from the previous call on this thread. The per-sample entry points get the once-per-batch
/// cost this way: comparing the parameters is a memory scan, computing the factors two `exp` per
/// synapse.
fn with_factors<R>(n: &Neuron, layer: &RecLayer, f: impl FnOnce(&RecFactors) -> R) -> R {
    FACTORS.with(|cell| {
        let mut cache = cell.borrow_mut();
        if !cache.as_ref().is_some_and(|(snap, _)| snap.matches(n, layer)) {
            *cache = Some((Snapshot::new(n, layer), rec_factors(n, layer)));
        }
        f(&cache.as_ref().expect("just filled").1)
    })
}

/// The window of a time: `origin + b dt <= t < origin + (b + 1) dt`, with the boundaries computed
/// exactly as the windows' own (so membership is consistent under rounding).
#[inline]
pub(crate) fn window_of(t: f64, origin: f64, dt: f64, inv_dt: f64) -> i64 {
    // `t >= origin`, so the cast truncates towards the floor (and saturates at 0 below).
    let mut b = ((t - origin) * inv_dt) as i64;
    while b > 0 && origin + b as f64 * dt > t {
        b -= 1;
    }
    while origin + (b + 1) as f64 * dt <= t {
        b += 1;
    }
    b.max(0)
}

/// Scans a neuron from `st` over its window list to the window end `t_hi` (factors `end_f`),
/// stopping at the first threshold crossing (returned; `st` is left at the start of the interval
/// holding it). Without a crossing `st` ends at its last arrival. The arithmetic is the
/// feed-forward scan's ([`crate::multi::simulate_arr`]).
#[inline]
pub(crate) fn scan(
    m: &MultiNeuron,
    st: &mut State,
    list: &[FArr],
    t_hi: f64,
    end_f: (f64, f64),
    fact: bool,
) -> Option<f64> {
    let n = &m.neuron;
    loop {
        let has = st.pos < list.len();
        let (na, qm, qs) = if has {
            let x = &list[st.pos];
            (x.a, x.fm, x.fs)
        } else {
            (t_hi, end_f.0, end_f.1)
        };
        if st.refr_end > st.t {
            if st.refr_end <= na && (has || st.refr_end < t_hi) {
                st.i *= if fact { st.fs / st.rfs } else { (-(st.refr_end - st.t) * n.inv_tau_s).exp() };
                st.t = st.refr_end;
                st.fm = st.rfm;
                st.fs = st.rfs;
                st.v = 0.0;
            } else if has {
                let x = list[st.pos];
                st.i = st.i * if fact { st.fs / x.fs } else { (-(x.a - st.t) * n.inv_tau_s).exp() } + x.w;
                st.t = x.a;
                st.fm = x.fm;
                st.fs = x.fs;
                st.pos += 1;
            } else {
                return None;
            }
            continue;
        }
        if st.v >= n.theta {
            // Only by rounding, when the previous interval's crossing sat on its end.
            return Some(st.t);
        }
        let len = na - st.t;
        let possible = st.i > 0.0 && st.v.max(0.0) + st.i * n.k_max.min(len) >= n.theta;
        if !possible && !has {
            return None;
        }
        let (em, es) = if fact { m.factor_decays(st.fm, st.fs, qm, qs) } else { n.decays(len) };
        let (ve, ie) = (st.v * em + st.i * n.kernel_from_fast(len, em, es), st.i * es);
        if possible {
            if let Some(s) = crossing_in_interval(n, st.v, st.i, len, ve, ie) {
                return Some(st.t + s);
            }
            if !has {
                return None;
            }
        }
        let x = list[st.pos];
        st.v = ve;
        st.i = ie + x.w;
        st.t = x.a;
        st.fm = x.fm;
        st.fs = x.fs;
        st.pos += 1;
    }
}

/// Whether a neuron may still cross threshold without further input (`V <= max(v, 0) + i K_max`).
#[inline]
fn may_ever_cross(n: &Neuron, st: &State) -> bool {
    st.v >= n.theta || (st.i > 0.0 && st.v.max(0.0) + st.i * n.k_max >= n.theta)
}

/// The next threshold crossing of a neuron without further input (`INFINITY`: none).
pub(crate) fn next_crossing(m: &MultiNeuron, st: &State) -> f64 {
    let n = &m.neuron;
    let (start, v, i) = if st.refr_end > st.t {
        (st.refr_end, 0.0, st.i * (-(st.refr_end - st.t) * n.inv_tau_s).exp())
    } else {
        (st.t, st.v, st.i)
    };
    if v >= n.theta {
        return start;
    }
    first_crossing(n, v, i, f64::INFINITY).map_or(f64::INFINITY, |s| start + s)
}

#[inline]
pub(crate) fn insertion_sort(v: &mut [FArr]) {
    for k in 1..v.len() {
        let x = v[k];
        if v[k - 1].a <= x.a {
            continue;
        }
        let mut p = k;
        while p > 0 && v[p - 1].a > x.a {
            v[p] = v[p - 1];
            p -= 1;
        }
        v[p] = x;
    }
}

/// Sorts a layer's spikes (emitted in time order) by neuron then time, their currents alongside.
pub(crate) fn sort_by_neuron(out: &mut [In], current: &mut [f64]) {
    let mut rows: Vec<(u32, f64, f64)> = out.iter().zip(current.iter()).map(|(&(j, t), &c)| (j, t, c)).collect();
    rows.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    for ((o, c), (j, t, i)) in out.iter_mut().zip(current.iter_mut()).zip(rows) {
        *o = (j, t);
        *c = i;
    }
}

/// Removes the earliest tentative spike of a window from `candidates` and returns it (neuron,
/// time); ties go to the lower neuron index. It is final: no other spike precedes it, and a spike
/// only creates arrivals after itself.
pub(crate) fn take_earliest(candidates: &mut Vec<u32>, crossing: &mut [f64]) -> (usize, f64) {
    let (mut best, mut best_t) = (0, f64::INFINITY);
    for (k, &q) in candidates.iter().enumerate() {
        let tq = crossing[q as usize];
        if tq < best_t || (tq == best_t && q < candidates[best]) {
            best = k;
            best_t = tq;
        }
    }
    let j = candidates.swap_remove(best) as usize;
    crossing[j] = f64::INFINITY;
    (j, best_t)
}

/// Commits neuron `j`'s spike at `tc`: appends it to `out.0` and the current it carries to
/// `out.1` (what the backward pass takes, see [`crate::Spikes::current`]), resets the scanned
/// state there (`V = 0`, the current carried to `tc`, the refractory clamp from `tc` on;
/// `ref_factors`: its decays' factors), makes that state the committed one and puts `j` in
/// `dirty` for the rescan. Returns the spike's factors `exp((tc - base)/tau)` (0 when the decays
/// are not factored).
pub(crate) fn commit_spike(
    m: &MultiNeuron,
    (j, tc): (usize, f64),
    (out, current): (&mut Vec<In>, &mut Vec<f64>),
    (committed, scanned): (&mut [State], &mut [State]),
    dirty: &mut Vec<u32>,
    (base, fact): (f64, bool),
    (ref_fm, ref_fs): (f64, f64),
) -> (f64, f64) {
    let n = &m.neuron;
    let (fm_c, fs_c) =
        if fact { (((tc - base) * n.inv_tau_m).exp(), ((tc - base) * n.inv_tau_s).exp()) } else { (0.0, 0.0) };
    let st = &mut scanned[j];
    st.i *= if fact { st.fs / fs_c } else { (-(tc - st.t) * n.inv_tau_s).exp() };
    st.v = 0.0;
    st.t = tc;
    st.fm = fm_c;
    st.fs = fs_c;
    st.refr_end = tc + m.t_ref;
    st.rfm = fm_c * ref_fm;
    st.rfs = fs_c * ref_fs;
    out.push((j as u32, tc));
    current.push(st.i);
    committed[j] = *st;
    dirty.push(j as u32);
    (fm_c, fs_c)
}

/// Rescans the neurons in `dirty` (a spike's own and the targets it hit inside the window) from
/// their committed states to the window's end `t_hi`, replacing their tentative crossings; empties
/// `dirty`.
pub(crate) fn rescan(
    m: &MultiNeuron,
    dirty: &mut Vec<u32>,
    (committed, scanned): (&[State], &mut [State]),
    lists: &[Vec<FArr>],
    (crossing, candidates): (&mut [f64], &mut Vec<u32>),
    (t_hi, end_f, fact): (f64, (f64, f64), bool),
) {
    for &q in dirty.iter() {
        let q = q as usize;
        if crossing[q] < f64::INFINITY {
            crossing[q] = f64::INFINITY;
            candidates.retain(|&x| x as usize != q);
        }
        let st = &mut scanned[q];
        *st = committed[q];
        if let Some(t2) = scan(m, st, &lists[q], t_hi, end_f, fact) {
            crossing[q] = t2;
            candidates.push(q as u32);
        }
    }
    dirty.clear();
}

/// Forward pass of one recurrent multi-spike layer for one sample. Appends `(neuron, time)` for
/// every spike, sorted by neuron then time, to `out.0` and the current `I(t^-)` at each to
/// `out.1`. Returns `false` if the layer hit `max_spikes`.
///
/// Keeps the layer's [`RecFactors`] and its buffers per thread (recomputing the factors when the
/// parameters change); [`recurrent_forward_with`] takes both from the caller.
pub fn recurrent_forward(m: &MultiNeuron, layer: &RecLayer, inputs: &[In], out: (&mut Vec<In>, &mut Vec<f64>)) -> bool {
    if inputs.is_empty() {
        return true;
    }
    with_factors(&m.neuron, layer, |factors| {
        SCRATCH.with(|s| recurrent_forward_with(m, layer, inputs, factors, out, &mut s.borrow_mut()))
    })
}

/// [`recurrent_forward`] with precomputed factors and the caller's scratch: the binned scan
/// ([`crate::recurrent_binned`]) where it applies (factored decays, a kernel of the difference
/// form), else [`recurrent_forward_windowed`].
pub fn recurrent_forward_with(
    m: &MultiNeuron,
    layer: &RecLayer,
    inputs: &[In],
    factors: &RecFactors,
    (out, current): (&mut Vec<In>, &mut Vec<f64>),
    scratch: &mut RecScratch,
) -> bool {
    if inputs.is_empty() || layer.ff.n_out == 0 {
        return true;
    }
    recurrent_forward_binned(m, layer, inputs, factors, (out, current), scratch)
        .unwrap_or_else(|| recurrent_forward_windowed(m, layer, inputs, factors, (out, current), scratch))
}

/// The binned recurrent forward pass ([`crate::recurrent_binned`]), or `None` (and no output)
/// when the sample cannot take it (delays too long for factors, a kernel not of the difference
/// form, more than 2^32 targets). Public so that tests can hold it against
/// [`recurrent_forward_windowed`].
pub fn recurrent_forward_binned(
    m: &MultiNeuron,
    layer: &RecLayer,
    inputs: &[In],
    factors: &RecFactors,
    (out, current): (&mut Vec<In>, &mut Vec<f64>),
    scratch: &mut RecScratch,
) -> Option<bool> {
    if inputs.is_empty() || layer.ff.n_out == 0 {
        return Some(true);
    }
    crate::recurrent_binned::applies(m, factors, layer.ff.n_out)
        .then(|| crate::recurrent_binned::forward(m, layer, inputs, factors, (out, current), scratch))
}

/// The recurrent forward pass with every arrival scanned one by one in its window (no bins): the
/// path of equal or close time constants and of delays too long for factors; public so that
/// tests can hold the binned scan against it.
pub fn recurrent_forward_windowed(
    m: &MultiNeuron,
    layer: &RecLayer,
    inputs: &[In],
    factors: &RecFactors,
    (out, current): (&mut Vec<In>, &mut Vec<f64>),
    scratch: &mut RecScratch,
) -> bool {
    let n = &m.neuron;
    let n_out = layer.ff.n_out;
    if inputs.is_empty() || n_out == 0 {
        return true;
    }
    let RecScratch {
        ring,
        lists,
        committed,
        scan: scanned,
        touched,
        touched_list,
        crossing,
        candidates,
        dirty,
        order,
        ..
    } = scratch;
    order.clear();
    order.extend_from_slice(inputs);
    order.sort_unstable_by(|a, b| a.1.total_cmp(&b.1));
    let origin = order[0].1;
    let span = order[order.len() - 1].1 - origin;
    let dmax = factors.max_delay;
    let tau_min = n.tau_m.min(n.tau_s);
    // A few feed-forward arrivals per target and window; bounded window and bucket counts.
    let mut dt = if span > 0.0 { WINDOW_ARRIVALS * span / order.len() as f64 } else { tau_min };
    dt = dt.max((span + dmax) / 4e6).max(dmax / 65536.0).min(50.0 * tau_min);
    let inv_dt = 1.0 / dt;
    // A power of two, so that a window's bucket is a mask, not a division, per arrival.
    let nb = ((dmax / dt).ceil() as usize + 3).next_power_of_two();
    let mask = nb - 1;
    let fact = factors.factored;
    let rebase_after = 200.0 * tau_min;
    let (ref_fm, ref_fs) = ((m.t_ref * n.inv_tau_m).exp(), (m.t_ref * n.inv_tau_s).exp());

    ring.resize_with(nb.max(ring.len()), Vec::new);
    for b in ring.iter_mut() {
        b.clear();
    }
    lists.resize_with(n_out, Vec::new);
    for l in lists.iter_mut() {
        l.clear();
    }
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

    let start = out.len();
    let mut base = origin;
    let mut pending = 0usize;
    let mut next_in = 0usize;
    let mut c: i64 = 0;
    let ff_t = &factors.ff_t;
    let rec_t = &factors.rec_t;
    loop {
        let t_lo = origin + c as f64 * dt;
        if t_lo > m.t_end {
            break;
        }
        if pending == 0 {
            // Nothing in flight: jump to the window of the next input or of the earliest crossing
            // a neuron makes on its own (states are not advanced across windows, so this asks
            // the solver instead of stepping through empty windows).
            let mut t_next = order.get(next_in).map_or(f64::INFINITY, |x| x.1);
            for st in committed.iter() {
                if may_ever_cross(n, st) {
                    t_next = t_next.min(next_crossing(m, st));
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
        if fact && t_hi - base > rebase_after {
            // Keep the factors in range: measure them from this window's start from now on.
            let (xm, xs) = ((-(t_lo - base) * n.inv_tau_m).exp(), (-(t_lo - base) * n.inv_tau_s).exp());
            for st in committed.iter_mut() {
                st.fm *= xm;
                st.fs *= xs;
                st.rfm *= xm;
                st.rfs *= xs;
            }
            for b in ring.iter_mut() {
                for p in b.iter_mut() {
                    p.arr.fm *= xm;
                    p.arr.fs *= xs;
                }
            }
            base = t_lo;
        }
        let end_f =
            if fact { (((t_hi - base) * n.inv_tau_m).exp(), ((t_hi - base) * n.inv_tau_s).exp()) } else { (0.0, 0.0) };
        // Input spikes of this window (or earlier) fan out now; their arrivals are not earlier.
        while next_in < order.len() && window_of(order[next_in].1, origin, dt, inv_dt) <= c {
            let (i, t) = order[next_in];
            let (um, us) =
                if fact { (((t - base) * n.inv_tau_m).exp(), ((t - base) * n.inv_tau_s).exp()) } else { (0.0, 0.0) };
            let r = ff_t.row(i as usize);
            let (w, d, fm, fs) = (&ff_t.w[r.clone()], &ff_t.d[r.clone()], &ff_t.fm[r.clone()], &ff_t.fs[r]);
            for q in 0..n_out {
                if w[q] == 0.0 {
                    continue;
                }
                let a = t + d[q];
                if a > m.t_end {
                    continue;
                }
                let b = window_of(a, origin, dt, inv_dt);
                let arr = FArr { a, w: w[q], fm: um * fm[q], fs: us * fs[q] };
                let bucket = &mut ring[b as usize & mask];
                bucket.push(Pending { arr, target: q as u32 });
                prefetch_tail(bucket);
                pending += 1;
            }
            next_in += 1;
        }
        // This window's arrivals, per target, in time order.
        let bucket = &mut ring[c as usize & mask];
        pending -= bucket.len();
        for p in bucket.drain(..) {
            let q = p.target as usize;
            if !touched[q] {
                touched[q] = true;
                touched_list.push(q as u32);
            }
            lists[q].push(p.arr);
        }
        for &q in touched_list.iter() {
            insertion_sort(&mut lists[q as usize]);
        }
        // Tentative scans: every neuron with arrivals, and every other one that may cross.
        for q in 0..n_out {
            if !touched[q] {
                let st = &committed[q];
                if !(st.v >= n.theta || (st.i > 0.0 && st.v.max(0.0) + st.i * n.k_max.min(t_hi - st.t) >= n.theta)) {
                    continue;
                }
                touched[q] = true;
                touched_list.push(q as u32);
            }
            let st = &mut scanned[q];
            *st = committed[q];
            st.pos = 0;
            if let Some(tc) = scan(m, st, &lists[q], t_hi, end_f, fact) {
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
                commit_spike(m, (j, tc), (out, current), (committed, scanned), dirty, (base, fact), (ref_fm, ref_fs));
            // Fan out; arrivals inside this window join their target's list at once.
            let (um, us) = (fm_c, fs_c);
            let r = rec_t.row(j);
            let (w, d, fm, fs) = (&rec_t.w[r.clone()], &rec_t.d[r.clone()], &rec_t.fm[r.clone()], &rec_t.fs[r]);
            for q in 0..n_out {
                if w[q] == 0.0 {
                    continue;
                }
                let a = tc + d[q];
                if a > m.t_end {
                    continue;
                }
                let arr = FArr { a, w: w[q], fm: um * fm[q], fs: us * fs[q] };
                let b = window_of(a, origin, dt, inv_dt);
                if b > c {
                    let bucket = &mut ring[b as usize & mask];
                    bucket.push(Pending { arr, target: q as u32 });
                    prefetch_tail(bucket);
                    pending += 1;
                    continue;
                }
                let list = &mut lists[q];
                let mut p = list.len();
                list.push(arr);
                while p > 0 && list[p - 1].a > a {
                    list[p] = list[p - 1];
                    p -= 1;
                }
                list[p] = arr;
                if !touched[q] {
                    touched[q] = true;
                    touched_list.push(q as u32);
                }
                if q != j {
                    dirty.push(q as u32);
                }
            }
            // The spiking neuron (after its reset) and the targets hit inside the window.
            rescan(m, dirty, (committed, scanned), lists, (crossing, candidates), (t_hi, end_f, fact));
        }
        // The window is final for everyone who took part.
        for &q in touched_list.iter() {
            let q = q as usize;
            committed[q] = scanned[q];
            committed[q].pos = 0;
            lists[q].clear();
            touched[q] = false;
        }
        touched_list.clear();
        c += 1;
    }
    sort_by_neuron(&mut out[start..], &mut current[start..]);
    true
}

/// Backward pass of one recurrent multi-spike layer for one sample.
///
/// `outputs` sorted by neuron then time, `current` their currents as the forward pass recorded
/// them (empty when not recorded; used without a refractory time), `gout[k] = dL/dt` of
/// `outputs[k]` from outside the layer. The gradient buffers are `gw = [ff (n_out x n_in) | rec (n_out x n_out)]`, `gd` the
/// same; `gin` gets `dL/dt` of each input spike. Takes the linear forms of
/// [`crate::recurrent_linear`] where they apply (factored decays, a kernel of the difference
/// form), else [`recurrent_backward_per_arrival`].
#[allow(clippy::too_many_arguments)]
pub fn recurrent_backward_with(
    m: &MultiNeuron,
    layer: &RecLayer,
    inputs: &[In],
    outputs: &[In],
    current: &[f64],
    gout: &[f64],
    factors: &RecFactors,
    grads: (&mut [f64], &mut [f64], &mut [f64]),
    scratch: &mut RecScratch,
) {
    backward_impl(m, layer, (inputs, outputs, current), gout, factors, grads, scratch, Path::Any);
}

/// [`recurrent_backward_with`] on the linear forms only: `false` (and no gradient) when the sample
/// cannot take them. Public so that tests can hold it against [`recurrent_backward_per_arrival`].
#[allow(clippy::too_many_arguments)]
pub fn recurrent_backward_linear(
    m: &MultiNeuron,
    layer: &RecLayer,
    inputs: &[In],
    outputs: &[In],
    current: &[f64],
    gout: &[f64],
    factors: &RecFactors,
    grads: (&mut [f64], &mut [f64], &mut [f64]),
    scratch: &mut RecScratch,
) -> bool {
    backward_impl(m, layer, (inputs, outputs, current), gout, factors, grads, scratch, Path::Linear)
}

/// The recurrent backward pass with every arrival's adjoint evaluated on its own (decays from
/// factors or `exp`, the kernel per arrival): the path of equal or close time constants and of
/// delays too long for factors.
#[allow(clippy::too_many_arguments)]
pub fn recurrent_backward_per_arrival(
    m: &MultiNeuron,
    layer: &RecLayer,
    inputs: &[In],
    outputs: &[In],
    current: &[f64],
    gout: &[f64],
    factors: &RecFactors,
    grads: (&mut [f64], &mut [f64], &mut [f64]),
    scratch: &mut RecScratch,
) {
    backward_impl(m, layer, (inputs, outputs, current), gout, factors, grads, scratch, Path::PerArrival);
}

/// Which backward path to take.
#[derive(Clone, Copy, PartialEq)]
enum Path {
    Any,
    Linear,
    PerArrival,
}

/// The backward passes; returns whether the linear forms were taken.
#[allow(clippy::too_many_arguments)]
fn backward_impl(
    m: &MultiNeuron,
    layer: &RecLayer,
    (inputs, outputs, current): (&[In], &[In], &[f64]),
    gout: &[f64],
    factors: &RecFactors,
    grads: (&mut [f64], &mut [f64], &mut [f64]),
    scratch: &mut RecScratch,
    path: Path,
) -> bool {
    let (gw, gd, gin) = grads;
    let n = &m.neuron;
    let ff = &layer.ff;
    let n_out = ff.n_out;
    let n_in_spikes = inputs.len();
    if outputs.is_empty() {
        return path == Path::Linear && crate::recurrent_linear::applies(m, factors.factored);
    }
    let RecScratch { own, owner, events, gsrc, um, us, hm, hs, q_ref, .. } = scratch;
    own.clear();
    let mut k = 0;
    for j in 0..n_out {
        let start = k;
        while k < outputs.len() && outputs[k].0 as usize == j {
            k += 1;
        }
        own.push_neuron(m, (start..k).map(|q| (outputs[q].1, (n_in_spikes + q) as u32)));
    }
    debug_assert_eq!(k, outputs.len(), "outputs sorted by neuron, ids < n_out");
    // Factored decays when every factor stays in range.
    let fold = |it: &mut dyn Iterator<Item = f64>| {
        it.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), t| (a.min(t), b.max(t)))
    };
    let (ti0, ti1) = fold(&mut inputs.iter().map(|x| x.1));
    let (to0, to1) = fold(&mut outputs.iter().map(|x| x.1));
    let t0 = ti0.min(to0);
    let t_far = (ti1.max(to1) + factors.max_delay).max(to1 + m.t_ref);
    let fact = factors.factored && (t_far - t0) * n.inv_tau_m.max(n.inv_tau_s) < MAX_FACTOR_SPAN;
    own.finish(m, fact.then_some(t0));
    let factor = |x: &[In], vm: &mut Vec<f64>, vs: &mut Vec<f64>| {
        vm.clear();
        vs.clear();
        if fact {
            vm.extend(x.iter().map(|&(_, t)| ((t - t0) * n.inv_tau_m).exp()));
            vs.extend(x.iter().map(|&(_, t)| ((t - t0) * n.inv_tau_s).exp()));
        }
    };
    factor(inputs, um, us);
    factor(outputs, hm, hs);
    gsrc.clear();
    gsrc.resize(n_in_spikes, 0.0);
    gsrc.extend_from_slice(gout);
    // Without a refractory time the own events are the spikes (in the outputs' order), whose
    // currents the forward pass may have recorded.
    let recorded = (current.len() == outputs.len() && m.t_ref == 0.0).then_some(current);
    let linear = crate::recurrent_linear::applies(m, fact);
    if linear && path != Path::PerArrival {
        crate::recurrent_linear::backward(m, layer, inputs, (outputs, recorded), factors, (gw, gd, gin), scratch);
        return true;
    }
    if path == Path::Linear {
        return false;
    }

    // Currents at every own event: recorded, or summed over the feed-forward arrivals target by
    // target and the recurrent ones spike by spike.
    match recorded {
        Some(current) => own.cur[..current.len()].copy_from_slice(current),
        None => {
            let rec_t = &factors.rec_t;
            for j in 0..n_out {
                let end = own.off[j + 1];
                if own.off[j] == end {
                    continue;
                }
                let row = j * ff.n_in;
                for (r, &(i, t)) in inputs.iter().enumerate() {
                    let i = i as usize;
                    let a = t + ff.delay(j, i);
                    let g = own.interval(j, a);
                    if g < end {
                        let es = if fact {
                            us[r] * factors.ff.fs[row + i] * own.inv_fs[g]
                        } else {
                            (-(own.time[g] - a) * n.inv_tau_s).exp()
                        };
                        own.cur[g] += ff.weights[row + i] * es;
                    }
                }
            }
            for (q, &(i, t)) in outputs.iter().enumerate() {
                let r = rec_t.row(i as usize);
                let (w, d, fs) = (&rec_t.w[r.clone()], &rec_t.d[r.clone()], &rec_t.fs[r]);
                for p in 0..n_out {
                    let a = t + d[p];
                    let g = own.interval(p, a);
                    if g < own.off[p + 1] {
                        let es =
                            if fact { hs[q] * fs[p] * own.inv_fs[g] } else { (-(own.time[g] - a) * n.inv_tau_s).exp() };
                        own.cur[g] += w[p] * es;
                    }
                }
            }
            for j in 0..n_out {
                own.currents(m, j);
            }
        }
    }

    let rec_t = &factors.rec_t;
    // All own events in reverse time order; each spike pulls its recurrent arrivals' adjoints.
    owner.clear();
    for j in 0..n_out {
        owner.extend(std::iter::repeat_n(j as u32, own.off[j + 1] - own.off[j]));
    }
    events.clear();
    events.extend(0..own.time.len() as u32);
    events.sort_unstable_by(|&a, &b| own.time[b as usize].total_cmp(&own.time[a as usize]).then(b.cmp(&a)));
    q_ref.clear();
    q_ref.resize(n_out, 0.0);
    let off_rec = n_out * ff.n_in;
    for &g in events.iter() {
        let g = g as usize;
        let j = owner[g] as usize;
        let after = own.after(m, g, own.off[j + 1]);
        let src = own.src[g];
        if src == REF_END {
            own.jump(m, g, after, 0.0, &mut q_ref[j]);
            continue;
        }
        let q = src as usize - n_in_spikes;
        let (i, t) = outputs[q];
        let r = rec_t.row(i as usize);
        let (w, d, fm, fs) = (&rec_t.w[r.clone()], &rec_t.d[r.clone()], &rec_t.fm[r.clone()], &rec_t.fs[r]);
        let mut pulled = 0.0;
        for p in 0..n_out {
            let a = t + d[p];
            let gp = own.interval(p, a);
            if gp >= own.off[p + 1] {
                continue;
            }
            let s = own.time[gp] - a;
            let (em, es) =
                if fact { (hm[q] * fm[p] * own.inv_fm[gp], hs[q] * fs[p] * own.inv_fs[gp]) } else { n.decays(s) };
            let (lv, li) = own.adjoint_at(m, gp, s, em, es);
            let syn = off_rec + p * n_out + i as usize;
            gw[syn] += li;
            let ga = w[p] * (li * n.inv_tau_s - lv);
            gd[syn] += ga;
            pulled += ga;
        }
        gsrc[src as usize] += pulled;
        let gs = gsrc[src as usize];
        own.jump(m, g, after, gs, &mut q_ref[j]);
    }

    // Feed-forward arrivals, now that every adjoint is known.
    for j in 0..n_out {
        let end = own.off[j + 1];
        if own.off[j] == end {
            continue;
        }
        let row = j * ff.n_in;
        for (r, &(i, t)) in inputs.iter().enumerate() {
            let i = i as usize;
            let a = t + ff.delay(j, i);
            let g = own.interval(j, a);
            if g >= end {
                continue;
            }
            let s = own.time[g] - a;
            let (em, es) = if fact {
                (um[r] * factors.ff.fm[row + i] * own.inv_fm[g], us[r] * factors.ff.fs[row + i] * own.inv_fs[g])
            } else {
                n.decays(s)
            };
            let (lv, li) = own.adjoint_at(m, g, s, em, es);
            gw[row + i] += li;
            let ga = ff.weights[row + i] * (li * n.inv_tau_s - lv);
            gd[row + i] += ga;
            gsrc[r] += ga;
        }
    }
    for (g, x) in gin.iter_mut().zip(&gsrc[..n_in_spikes]) {
        *g += x;
    }
    false
}

/// [`recurrent_backward_with`] with per-thread factors and buffers (see [`recurrent_forward`]).
#[allow(clippy::too_many_arguments)]
pub fn recurrent_backward(
    m: &MultiNeuron,
    layer: &RecLayer,
    inputs: &[In],
    outputs: &[In],
    current: &[f64],
    gout: &[f64],
    grads: (&mut [f64], &mut [f64], &mut [f64]),
) {
    if outputs.is_empty() {
        return;
    }
    with_factors(&m.neuron, layer, |factors| {
        SCRATCH.with(|s| {
            recurrent_backward_with(m, layer, inputs, outputs, current, gout, factors, grads, &mut s.borrow_mut())
        })
    })
}
