//! The one batch driver. Samples are independent, so a batch is cut into fixed chunks of
//! consecutive samples processed in parallel (rayon); each chunk runs a stack of per-sample
//! [`Kernel`]s (a TTFS layer, a multi-spike layer, a readout), and the chunks' results are joined
//! in chunk order: outputs per layer by concatenation, gradients by summing the per-chunk sums
//! in order. Chunk boundaries depend only on the batch size, so results do not depend on the
//! number of threads. A new neuron model is a new [`Kernel`]; batching, cancellation, joins and
//! reductions stay here.
//!
//! Data-parallel training adds one level above chunks: a batch cut into *shards* (consecutive
//! samples) whose gradients are summed by the caller in shard order. [`backward_shards`] returns
//! one finished gradient per shard, each bit for bit what [`backward`] gives for the batch made
//! of that shard alone (the shard is cut into chunks by its own size), while all shards' chunks
//! run in one parallel call. So a process computing every shard and several processes each
//! computing some of them add the same numbers in the same order.

use std::collections::BTreeMap;
use std::ops::Range;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Instant;

use rayon::prelude::*;

use crate::batch::Input;
use crate::cancel::{Cancel, Checkpoint, POLL_INTERVAL};
use crate::error::{shape_err, spikes_err, Error, Result};
use crate::spikes::Spikes;
use crate::ttfs::In;

/// How a batch is cut into chunks. The split is part of the numerics (gradient sums are added
/// per chunk), so each kernel keeps the policy its results were pinned with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPolicy {
    /// Batches smaller than this run as one chunk on the calling thread.
    pub serial_below: usize,
    /// The smallest chunk (a batch is cut into at most 64 chunks of at least this many samples).
    pub min_size: usize,
}

impl ChunkPolicy {
    /// TTFS samples take microseconds: waking rayon's workers costs more than a small batch, and
    /// on a loaded machine it can cost milliseconds of scheduling latency (what a hardware loop
    /// of small batches notices).
    pub const FAST_SAMPLES: Self = Self { serial_below: 64, min_size: 16 };
    /// A multi-spike sample can take milliseconds, so even small batches are split.
    pub const SLOW_SAMPLES: Self = Self { serial_below: 0, min_size: 4 };

    /// The chunks of `n` samples, in order.
    pub fn chunks(self, n: usize) -> Vec<Range<usize>> {
        if n < self.serial_below {
            return std::iter::once(0..n).collect();
        }
        let size = n.div_ceil(64).max(self.min_size);
        (0..n).step_by(size).map(|s| s..(s + size).min(n)).collect()
    }
}

/// `f` over the chunks of `n` samples; results in chunk order. One chunk runs on the calling
/// thread; several run on rayon's pool while the calling thread waits, calling the token's poll
/// hook (if any) every [`POLL_INTERVAL`]. The first error in chunk order is returned.
pub fn map_chunks<T: Send>(
    policy: ChunkPolicy,
    n: usize,
    cancel: &Cancel,
    f: impl Fn(Range<usize>, &mut Checkpoint) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    map_ranges(policy.chunks(n), false, cancel, f)
}

/// `f` over `ranges` (chunks), in parallel unless there is one range or `serial`; results in
/// the order of `ranges`. See [`map_chunks`].
fn map_ranges<T: Send>(
    ranges: Vec<Range<usize>>,
    serial: bool,
    cancel: &Cancel,
    f: impl Fn(Range<usize>, &mut Checkpoint) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    cancel.check()?;
    if ranges.len() <= 1 || serial {
        let mut checkpoint = Checkpoint::caller(cancel);
        return ranges.into_iter().map(|r| f(r, &mut checkpoint)).collect();
    }
    let run = || -> Vec<Result<T>> { ranges.into_par_iter().map(|r| f(r, &mut Checkpoint::worker(cancel))).collect() };
    let parts = if cancel.has_poll() { on_pool_polling(cancel, run) } else { run() };
    parts.into_iter().collect()
}

/// `f` over `ranges` as [`map_ranges`] runs it, but each result goes to `take` in the order of
/// `ranges` as soon as it and every one before it are done, and at most a few results per
/// thread are computed and not yet taken. A chunk's gradient sums are megabytes for a wide
/// multi-spike layer (10 MB for 700 inputs and 512 recurrent neurons) and a batch has up to 64
/// chunks per shard: kept until the last chunk is done they took most of a training step's
/// memory. Taken in order, the sums are added exactly as before. The first error in range order
/// is returned, and no range after it is started.
fn for_each_ordered<T: Send>(
    ranges: Vec<Range<usize>>,
    serial: bool,
    cancel: &Cancel,
    f: impl Fn(Range<usize>, &mut Checkpoint) -> Result<T> + Sync,
    mut take: impl FnMut(usize, T),
) -> Result<()> {
    cancel.check()?;
    if ranges.len() <= 1 || serial {
        let mut checkpoint = Checkpoint::caller(cancel);
        for (k, range) in ranges.into_iter().enumerate() {
            take(k, f(range, &mut checkpoint)?);
        }
        return Ok(());
    }
    if rayon::current_thread_index().is_some() {
        // Inside a pool job, waiting here for other jobs could starve the pool: keep them all.
        for (k, part) in map_ranges(ranges, false, cancel, f)?.into_iter().enumerate() {
            take(k, part);
        }
        return Ok(());
    }
    let n = ranges.len();
    let window = 2 * rayon::current_num_threads() + 2;
    let (send, receive) = mpsc::channel();
    let f = &f;
    rayon::in_place_scope(|scope| {
        let spawn = |k: usize| {
            let (send, range) = (send.clone(), ranges[k].clone());
            scope.spawn(move |_| {
                let result = catch_unwind(AssertUnwindSafe(|| f(range, &mut Checkpoint::worker(cancel))));
                // The receiver is gone only after an earlier range failed; this result is not needed.
                let _ = send.send((k, result));
            });
        };
        let mut next_spawn = n.min(window);
        (0..next_spawn).for_each(spawn);
        let mut done = BTreeMap::new();
        let mut next_take = 0;
        let mut last_poll = Instant::now();
        while next_take < n {
            match receive.recv_timeout(POLL_INTERVAL) {
                Ok((k, result)) => {
                    done.insert(k, result);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => unreachable!("this thread holds a sender"),
            }
            if cancel.has_poll() && last_poll.elapsed() >= POLL_INTERVAL {
                // The hook takes the GIL; the pool's jobs read only the flag.
                cancel.poll();
                last_poll = Instant::now();
            }
            while let Some(result) = done.remove(&next_take) {
                match result {
                    Ok(Ok(part)) => take(next_take, part),
                    Ok(Err(e)) => return Err(e),
                    Err(panic) => resume_unwind(panic),
                }
                next_take += 1;
                if next_spawn < n {
                    spawn(next_spawn);
                    next_spawn += 1;
                }
            }
        }
        Ok(())
    })
}

/// Runs `job` on rayon's pool and waits for it on the calling thread, polling `cancel` meanwhile.
fn on_pool_polling<R: Send>(cancel: &Cancel, job: impl FnOnce() -> R + Send) -> R {
    // On a pool thread, waiting here could starve the job of the thread it was queued on.
    if rayon::current_thread_index().is_some() {
        return job();
    }
    let slot: Mutex<Option<std::thread::Result<R>>> = Mutex::new(None);
    let ready = Condvar::new();
    rayon::in_place_scope(|scope| {
        scope.spawn(|_| {
            let result = catch_unwind(AssertUnwindSafe(job));
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(result);
            ready.notify_one();
        });
        let mut guard = slot.lock().unwrap_or_else(PoisonError::into_inner);
        while guard.is_none() {
            let (g, wait) = ready.wait_timeout(guard, POLL_INTERVAL).unwrap_or_else(PoisonError::into_inner);
            guard = g;
            if guard.is_none() && wait.timed_out() {
                // The hook takes the GIL: do not hold the slot meanwhile.
                drop(guard);
                cancel.poll();
                guard = slot.lock().unwrap_or_else(PoisonError::into_inner);
            }
        }
    });
    match slot.into_inner().unwrap_or_else(PoisonError::into_inner) {
        Some(Ok(r)) => r,
        Some(Err(panic)) => resume_unwind(panic),
        None => unreachable!("the scope waits for the job"),
    }
}

/// Where a stack's per-sample inputs come from: an input batch (rows of a spike table) or the
/// output of another stack.
pub trait Source: Sync {
    fn n_samples(&self) -> usize;
    /// Rows in all; input gradients are returned per row.
    fn n_rows(&self) -> usize;
    /// The events of sample `s` (`out` is cleared first).
    fn events(&self, s: usize, out: &mut Vec<In>);
    /// The events of sample `s` and the rows they come from.
    fn rows_events(&self, s: usize, rows: &mut Vec<usize>, out: &mut Vec<In>);
}

impl Source for Input<'_> {
    fn n_samples(&self) -> usize {
        Input::n_samples(self)
    }
    fn n_rows(&self) -> usize {
        self.table.len()
    }
    fn events(&self, s: usize, out: &mut Vec<In>) {
        let (neuron, time) = (self.table.neuron(), self.table.time());
        out.clear();
        out.extend(self.rows(s).map(|r| (neuron[r], time[r])));
    }
    fn rows_events(&self, s: usize, rows: &mut Vec<usize>, out: &mut Vec<In>) {
        let (neuron, time) = (self.table.neuron(), self.table.time());
        rows.clear();
        rows.extend(self.rows(s));
        out.clear();
        out.extend(rows.iter().map(|&r| (neuron[r], time[r])));
    }
}

impl Source for Spikes {
    fn n_samples(&self) -> usize {
        Spikes::n_samples(self)
    }
    fn n_rows(&self) -> usize {
        self.len()
    }
    fn events(&self, s: usize, out: &mut Vec<In>) {
        let r = self.range(s);
        out.clear();
        out.extend(self.neuron[r.clone()].iter().copied().zip(self.time[r].iter().copied()));
    }
    fn rows_events(&self, s: usize, rows: &mut Vec<usize>, out: &mut Vec<In>) {
        rows.clear();
        rows.extend(self.range(s));
        self.events(s, out);
    }
}

/// The per-sample computation of one layer. Its output is a list of events `(index, value)`:
/// spikes `(neuron, time)` for a spiking layer, one `(class, value)` per class for a readout.
pub trait Kernel: Sync {
    /// Reusable buffers, one set per chunk, shared by the layers of a stack.
    type Scratch: Default + Send;
    /// The layer's gradient as returned to the caller.
    type Grad;

    /// Entries of each of the two per-chunk gradient buffers (weights, per-synapse delays).
    fn grad_len(&self) -> usize;

    /// One sample: appends the layer's output events for `inputs` to the empty `out`, and, for a
    /// kernel that records them, each event's current to the empty `current` (see
    /// [`Spikes::current`]; left empty otherwise). Returns `false` when the sample cannot be
    /// computed (see [`Kernel::forward_error`]).
    fn forward(&self, inputs: &[In], out: &mut Vec<In>, current: &mut Vec<f64>, scratch: &mut Self::Scratch) -> bool;

    /// The error for a sample whose `forward` returned `false`.
    fn forward_error(&self, layer: usize, sample: usize) -> Error {
        Error::Parameter(format!("layer {layer} cannot be computed for sample {sample}"))
    }

    /// The rows of `outputs` (this layer's recorded output) that `dL/d(output)` has for sample
    /// `s`. A readout overrides it: its gradient has one entry per class.
    fn grad_rows(&self, outputs: &Spikes, s: usize) -> Range<usize> {
        outputs.range(s)
    }

    /// One sample: accumulates `dL/dw` and the per-synapse `dL/dd` into `grads.0`, `grads.1`
    /// (`grad_len` entries each) and `dL/d(input event)` into `grads.2`, given `outputs`, their
    /// recorded `current`s (empty when not recorded) and `grad_out = dL/d(output event)`.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        inputs: &[In],
        outputs: &[In],
        current: &[f64],
        grad_out: &[f64],
        grads: (&mut [f64], &mut [f64], &mut [f64]),
        scratch: &mut Self::Scratch,
    );

    /// The layer's gradient from the batch sums of the two buffers.
    fn finish(&self, weights: Vec<f64>, delays: Vec<f64>) -> Self::Grad;
}

/// The output events of every layer of a stack, for every sample of `source`.
pub fn forward<K: Kernel>(
    kernels: &[K],
    source: &impl Source,
    policy: ChunkPolicy,
    cancel: &Cancel,
) -> Result<Vec<Spikes>> {
    let parts = map_chunks(policy, source.n_samples(), cancel, |range, checkpoint| {
        let mut scratch = K::Scratch::default();
        let mut outs: Vec<Spikes> = kernels.iter().map(|_| Spikes { offsets: vec![0], ..Default::default() }).collect();
        let mut cur: Vec<In> = Vec::new();
        let mut next: Vec<In> = Vec::new();
        let mut current: Vec<f64> = Vec::new();
        for s in range {
            checkpoint.check()?;
            source.events(s, &mut cur);
            for (l, (kernel, out)) in kernels.iter().zip(outs.iter_mut()).enumerate() {
                next.clear();
                current.clear();
                if !kernel.forward(&cur, &mut next, &mut current, &mut scratch) {
                    return Err(kernel.forward_error(l, s));
                }
                // A layer's currents are kept only while every sample so far recorded them all.
                if current.len() == next.len() && out.current.len() == out.time.len() {
                    out.current.extend_from_slice(&current);
                } else {
                    out.current.clear();
                    out.current.shrink_to_fit();
                }
                for &(j, t) in &next {
                    out.neuron.push(j);
                    out.time.push(t);
                }
                out.offsets.push(out.neuron.len());
                std::mem::swap(&mut cur, &mut next);
            }
        }
        Ok(outs)
    })?;
    Ok(concat_layers(kernels.len(), parts))
}

/// Gradients of every layer of a stack and `dL/d(event)` of every row of `source` (rows of
/// unselected samples get 0), given the output events of every layer (`outputs`, from
/// [`forward`] or recorded) and `grad_out`, `dL/d(output)` of the last layer (rows as
/// [`Kernel::grad_rows`] says). The caller checks that the shapes fit.
pub fn backward<K: Kernel>(
    kernels: &[K],
    source: &impl Source,
    outputs: &[Spikes],
    grad_out: &[f64],
    policy: ChunkPolicy,
    cancel: &Cancel,
) -> Result<(Vec<K::Grad>, Vec<f64>)> {
    let n = source.n_samples();
    let (mut grads, gin) = backward_shards(kernels, source, outputs, grad_out, policy, &[n], cancel)?;
    Ok((grads.pop().expect("one shard"), gin))
}

/// The batch's consecutive shards of `shards[k]` samples as ranges; an error unless they cover
/// the `n` samples exactly.
pub fn shard_ranges(shards: &[usize], n: usize) -> Result<Vec<Range<usize>>> {
    let total: usize = shards.iter().sum();
    if total != n || (n > 0 && shards.contains(&0)) {
        return Err(shape_err(format!(
            "shards: sizes {shards:?} must be positive and add up to the batch's {n} samples (they add up to {total})"
        )));
    }
    let mut start = 0;
    Ok(shards
        .iter()
        .map(|&size| {
            start += size;
            start - size..start
        })
        .collect())
}

/// Per shard, the gradient of every layer; and `dL/d(event)` of every row of the batch.
pub type ShardGrads<G> = (Vec<Vec<G>>, Vec<f64>);

/// [`backward`] of a batch cut into consecutive shards of `shards[k]` samples: one gradient per
/// shard (each what [`backward`] returns for that shard as a batch of its own: the shard is cut
/// into chunks by `policy` on its own size, and its chunks' sums are added in chunk order), and
/// `dL/d(event)` of every row. Every shard's chunks run in one parallel map; a batch below
/// `policy.serial_below` runs on the calling thread, as [`map_chunks`] would run it.
pub fn backward_shards<K: Kernel>(
    kernels: &[K],
    source: &impl Source,
    outputs: &[Spikes],
    grad_out: &[f64],
    policy: ChunkPolicy,
    shards: &[usize],
    cancel: &Cancel,
) -> Result<ShardGrads<K::Grad>> {
    backward_shards_with(kernels, source, outputs, grad_out, &[], policy, shards, cancel)
}

/// [`backward_shards`] with `dL/d(output)` of inner layers from outside the stack as well
/// (`layer_grad[l]`, one entry per row of `outputs[l]`; absent or `None`: nothing), added to
/// what the layer above passes down: a regulariser's pull on hidden spikes
/// ([`crate::spike_count`]).
#[allow(clippy::too_many_arguments)]
pub fn backward_shards_with<K: Kernel>(
    kernels: &[K],
    source: &impl Source,
    outputs: &[Spikes],
    grad_out: &[f64],
    layer_grad: &[Option<Vec<f64>>],
    policy: ChunkPolicy,
    shards: &[usize],
    cancel: &Cancel,
) -> Result<ShardGrads<K::Grad>> {
    assert_eq!(outputs.len(), kernels.len(), "one output per layer");
    for (l, g) in layer_grad.iter().enumerate() {
        if let Some(g) = g {
            assert_eq!(g.len(), outputs[l].len(), "one entry per row of layer {l}'s output");
        }
    }
    let n = source.n_samples();
    let n_layers = kernels.len();
    let (top, last) = (kernels.last().expect("at least one layer"), outputs.last().expect("at least one layer"));
    // Every chunk of every shard, in order, and the shard each belongs to.
    let mut ranges = Vec::new();
    let mut owner = Vec::new();
    for (k, shard) in shard_ranges(shards, n)?.into_iter().enumerate() {
        for chunk in policy.chunks(shard.len()) {
            ranges.push(shard.start + chunk.start..shard.start + chunk.end);
            owner.push(k);
        }
    }
    struct Part {
        gw: Vec<Vec<f64>>,
        gd: Vec<Vec<f64>>,
        gin: Vec<(usize, f64)>,
    }
    // Each shard's sums start at 0 and take its chunks' sums in chunk order, as `backward`'s do.
    let zeros = || -> Vec<Vec<f64>> { kernels.iter().map(|k| vec![0.0; k.grad_len()]).collect() };
    let mut sums_w: Vec<Vec<Vec<f64>>> = shards.iter().map(|_| zeros()).collect();
    let mut sums_d: Vec<Vec<Vec<f64>>> = shards.iter().map(|_| zeros()).collect();
    let mut gin = vec![0.0; source.n_rows()];
    let take = |chunk: usize, part: Part| {
        let k = owner[chunk];
        for l in 0..n_layers {
            add(&mut sums_w[k][l], &part.gw[l]);
            add(&mut sums_d[k][l], &part.gd[l]);
        }
        for (r, g) in part.gin {
            gin[r] = g;
        }
    };
    for_each_ordered(
        ranges,
        n < policy.serial_below,
        cancel,
        |range, checkpoint| {
            let mut scratch = K::Scratch::default();
            let mut part = Part {
                gw: kernels.iter().map(|k| vec![0.0; k.grad_len()]).collect(),
                gd: kernels.iter().map(|k| vec![0.0; k.grad_len()]).collect(),
                gin: Vec::new(),
            };
            let mut rows: Vec<usize> = Vec::new();
            let mut inputs: Vec<In> = Vec::new();
            let mut outs: Vec<In> = Vec::new();
            let mut g_cur: Vec<f64> = Vec::new();
            let mut g_in: Vec<f64> = Vec::new();
            for s in range {
                checkpoint.check()?;
                g_cur.clear();
                g_cur.extend_from_slice(&grad_out[top.grad_rows(last, s)]);
                for l in (0..n_layers).rev() {
                    if let Some(Some(extra)) = layer_grad.get(l) {
                        for (g, x) in g_cur.iter_mut().zip(&extra[kernels[l].grad_rows(&outputs[l], s)]) {
                            *g += x;
                        }
                    }
                    if l == 0 {
                        source.rows_events(s, &mut rows, &mut inputs);
                    } else {
                        outputs[l - 1].events(s, &mut inputs);
                    }
                    outputs[l].events(s, &mut outs);
                    g_in.clear();
                    g_in.resize(inputs.len(), 0.0);
                    let grads = (&mut part.gw[l][..], &mut part.gd[l][..], &mut g_in[..]);
                    kernels[l].backward(&inputs, &outs, outputs[l].current_of(s), &g_cur, grads, &mut scratch);
                    std::mem::swap(&mut g_cur, &mut g_in);
                }
                part.gin.extend(rows.iter().copied().zip(g_cur.iter().copied()));
            }
            Ok(part)
        },
        take,
    )?;
    let grads = sums_w
        .into_iter()
        .zip(sums_d)
        .map(|(gw, gd)| kernels.iter().zip(gw.into_iter().zip(gd)).map(|(k, (w, d))| k.finish(w, d)).collect())
        .collect();
    Ok((grads, gin))
}

/// A backward's recorded spikes: one table per layer of the network.
pub(crate) fn check_layer_count(n_layers: usize, spikes: &[Spikes]) -> Result<()> {
    if spikes.len() != n_layers {
        return Err(shape_err(format!(
            "backward: got spikes of {} layers for a network of {n_layers} layers",
            spikes.len()
        )));
    }
    Ok(())
}

/// A backward's `grad_out`: one finite `dL/dt` per spike of the last layer (`last`).
pub(crate) fn check_grad_out(last: &Spikes, grad_out: &[f64]) -> Result<()> {
    if grad_out.len() != last.len() {
        return Err(shape_err(format!(
            "backward: grad has {} entries but the output layer has {} spikes",
            grad_out.len(),
            last.len()
        )));
    }
    if let Some(k) = grad_out.iter().position(|g| !g.is_finite()) {
        return Err(spikes_err(format!("grad: entry {k} is {} (must be finite)", grad_out[k])));
    }
    Ok(())
}

pub(crate) fn add(acc: &mut [f64], x: &[f64]) {
    for (a, b) in acc.iter_mut().zip(x) {
        *a += b;
    }
}

/// Per-chunk outputs of every layer (chunks in sample order) joined into one `Spikes` per layer.
pub(crate) fn concat_layers(n_layers: usize, parts: impl IntoIterator<Item = Vec<Spikes>>) -> Vec<Spikes> {
    let mut per_layer: Vec<Vec<Spikes>> = (0..n_layers).map(|_| Vec::new()).collect();
    for part in parts {
        for (l, sp) in part.into_iter().enumerate() {
            per_layer[l].push(sp);
        }
    }
    per_layer.into_iter().map(Spikes::concat).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    fn singles(n: usize) -> Vec<Range<usize>> {
        (0..n).map(|k| k..k + 1).collect()
    }

    fn window() -> usize {
        2 * rayon::current_num_threads() + 2
    }

    /// Results finish out of order (every fifth range is slow) but are taken in range order, and
    /// no more than the window are ever finished and waiting (all of them, before).
    #[test]
    fn results_are_taken_in_order_with_a_bounded_number_waiting() {
        let n = 4 * window();
        let finished = AtomicUsize::new(0);
        let (mut taken, mut most_waiting) = (Vec::new(), 0);
        let work = |range: Range<usize>, _: &mut Checkpoint| {
            std::thread::sleep(Duration::from_millis(if range.start.is_multiple_of(5) { 20 } else { 1 }));
            finished.fetch_add(1, Ordering::SeqCst);
            Ok(range.start)
        };
        for_each_ordered(singles(n), false, &Cancel::new(), work, |k, value| {
            assert_eq!(k, value);
            taken.push(k);
            most_waiting = most_waiting.max(finished.load(Ordering::SeqCst) - taken.len() + 1);
        })
        .unwrap();
        assert_eq!(taken, (0..n).collect::<Vec<_>>());
        assert!(most_waiting <= window(), "{most_waiting} results waited; the window is {}", window());
    }

    /// The first error in range order wins, even when a later range fails first; nothing after
    /// it is taken, and ranges beyond the window past it are never started.
    #[test]
    fn the_first_error_in_range_order_is_returned() {
        let n = 200;
        let started = AtomicUsize::new(0);
        let mut taken = 0;
        let work = |range: Range<usize>, _: &mut Checkpoint| {
            started.fetch_add(1, Ordering::SeqCst);
            match range.start {
                3 => {
                    std::thread::sleep(Duration::from_millis(30));
                    Err(shape_err("range 3"))
                }
                5 => Err(shape_err("range 5")),
                _ => Ok(()),
            }
        };
        let err = for_each_ordered(singles(n), false, &Cancel::new(), work, |_, ()| taken += 1).unwrap_err();
        assert_eq!(err, shape_err("range 3"));
        assert_eq!(taken, 3);
        assert!(started.load(Ordering::SeqCst) <= 3 + window(), "{} ranges started", started.load(Ordering::SeqCst));
        let serial = for_each_ordered(singles(n), true, &Cancel::new(), work, |_, ()| {}).unwrap_err();
        assert_eq!(serial, shape_err("range 3"));
    }

    /// A panic in a range reaches the caller as that panic (the pool and the caller go on).
    #[test]
    fn a_panic_in_a_range_reaches_the_caller() {
        let work = |range: Range<usize>, _: &mut Checkpoint| {
            if range.start == 2 {
                panic!("range 2 failed");
            }
            Ok(())
        };
        let caught =
            catch_unwind(AssertUnwindSafe(|| for_each_ordered(singles(20), false, &Cancel::new(), work, |_, ()| {})));
        let payload = caught.unwrap_err();
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"range 2 failed"));
        let mut taken = 0;
        for_each_ordered(singles(20), false, &Cancel::new(), |_, _| Ok(()), |_, ()| taken += 1).unwrap();
        assert_eq!(taken, 20);
    }
}
