//! The batch driver on its own: a toy kernel (a delay line) shows what a new neuron model has to
//! write, and checks the driver's joins, reductions, chunking and cancellation.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use delgrad_core::driver::{self, ChunkPolicy, Kernel};
use delgrad_core::{Cancel, Error, SpikeSet, SpikeTable, Spikes};

/// Every input spike comes out `delay` later; the single parameter is `delay`
/// (`dL/d delay = sum of dL/dt_out`), and `dL/dt_in = dL/dt_out`. Optionally slow.
struct DelayLine {
    delay: f64,
    sleep: Duration,
}

impl Kernel for DelayLine {
    type Scratch = ();
    type Grad = f64;

    fn grad_len(&self) -> usize {
        1
    }

    fn forward(&self, inputs: &[(u32, f64)], out: &mut Vec<(u32, f64)>, _: &mut Vec<f64>, _: &mut ()) -> bool {
        std::thread::sleep(self.sleep);
        out.extend(inputs.iter().map(|&(j, t)| (j, t + self.delay)));
        true
    }

    fn backward(
        &self,
        _inputs: &[(u32, f64)],
        _outputs: &[(u32, f64)],
        _current: &[f64],
        grad_out: &[f64],
        grads: (&mut [f64], &mut [f64], &mut [f64]),
        _: &mut (),
    ) {
        let (gw, _, gin) = grads;
        gw[0] += grad_out.iter().sum::<f64>();
        gin.copy_from_slice(grad_out);
    }

    fn finish(&self, weights: Vec<f64>, _delays: Vec<f64>) -> f64 {
        weights[0]
    }
}

/// `n` samples, sample `s` with `s % 4` spikes, rows in reverse sample order (so grouping
/// permutes them).
fn set(n: usize) -> SpikeSet {
    let (mut sample, mut neuron, mut time) = (Vec::new(), Vec::new(), Vec::new());
    for s in (0..n).rev() {
        for k in 0..s % 4 {
            sample.push(s as u32);
            neuron.push(k as u32);
            time.push(s as f64 + 0.1 * k as f64);
        }
    }
    SpikeSet::new(SpikeTable::from_vecs(sample, neuron, time).unwrap(), n).unwrap()
}

#[test]
fn chunks_cover_the_batch_in_order() {
    for policy in [ChunkPolicy::FAST_SAMPLES, ChunkPolicy::SLOW_SAMPLES] {
        for n in [0, 1, 3, 63, 64, 65, 1000, 5001] {
            let chunks = policy.chunks(n);
            let mut next = 0;
            for c in &chunks {
                assert_eq!(c.start, next);
                assert!(c.end > c.start || n == 0);
                next = c.end;
            }
            assert_eq!(next, n);
            assert!(chunks.len() <= 64);
        }
    }
    assert_eq!(ChunkPolicy::FAST_SAMPLES.chunks(63).len(), 1);
}

#[test]
fn a_new_kernel_gets_joins_and_reductions_from_the_driver() {
    let n = 500; // many chunks under either policy
    let set = set(n);
    let input = set.input(None).unwrap();
    let stack = [DelayLine { delay: 0.5, sleep: Duration::ZERO }, DelayLine { delay: 2.0, sleep: Duration::ZERO }];
    for policy in [ChunkPolicy::FAST_SAMPLES, ChunkPolicy::SLOW_SAMPLES] {
        let out = driver::forward(&stack, &input, policy, &Cancel::new()).unwrap();
        assert_eq!(out.len(), 2);
        for (layer, shift) in out.iter().zip([0.5, 2.5]) {
            assert_eq!(layer.n_samples(), n);
            for s in 0..n {
                let r = layer.range(s);
                assert_eq!(r.len(), s % 4);
                for (k, row) in r.enumerate() {
                    assert_eq!(layer.neuron[row], k as u32);
                    assert_eq!(layer.time[row], s as f64 + 0.1 * k as f64 + shift);
                }
            }
        }
        let last: &Spikes = &out[1];
        let grad: Vec<f64> = (0..last.len()).map(|r| r as f64).collect();
        let (grads, gin) = driver::backward(&stack, &input, &out, &grad, policy, &Cancel::new()).unwrap();
        let total: f64 = grad.iter().sum();
        assert_eq!(grads, vec![total, total]);
        // dL/dt of each input row is the gradient of the output spike it became.
        let (table_sample, table_time) = (set.table.sample(), set.table.time());
        for (row, g) in gin.iter().enumerate() {
            let s = table_sample[row] as usize;
            let k = ((table_time[row] - s as f64) / 0.1).round() as usize;
            assert_eq!(*g, (last.range(s).start + k) as f64);
        }
    }
}

#[test]
fn a_cancelled_token_stops_the_call() {
    let set = set(200);
    let input = set.input(None).unwrap();
    let stack = [DelayLine { delay: 1.0, sleep: Duration::ZERO }];
    let cancel = Cancel::new();
    cancel.cancel();
    for policy in [ChunkPolicy::FAST_SAMPLES, ChunkPolicy::SLOW_SAMPLES] {
        assert_eq!(driver::forward(&stack, &input, policy, &cancel).unwrap_err(), Error::Interrupted);
    }
}

/// The poll hook runs on the calling thread while the work runs, and cancels it when it says so:
/// calls of several seconds stop soon after, whether their chunks run on rayon's pool (2000
/// samples of 2 ms) or as one chunk on the calling thread (60 samples of 60 ms).
#[test]
fn the_poll_hook_stops_a_long_call_on_both_paths() {
    for (n, policy, sleep_ms) in [(2000, ChunkPolicy::SLOW_SAMPLES, 2), (60, ChunkPolicy::FAST_SAMPLES, 60)] {
        let stack = [DelayLine { delay: 1.0, sleep: Duration::from_millis(sleep_ms) }];
        let set = set(n);
        let input = set.input(None).unwrap();
        let polls = AtomicUsize::new(0);
        let caller = std::thread::current().id();
        let poll = || {
            assert_eq!(std::thread::current().id(), caller, "the hook runs on the calling thread");
            polls.fetch_add(1, Ordering::Relaxed) >= 2
        };
        let cancel = Cancel::with_poll(&poll);
        let start = Instant::now();
        let result = driver::forward(&stack, &input, policy, &cancel);
        let took = start.elapsed();
        assert_eq!(result.unwrap_err(), Error::Interrupted);
        assert_eq!(polls.load(Ordering::Relaxed), 3);
        assert!(took < Duration::from_millis(1000), "took {took:?}");
    }
}

/// `backward_shards` computes every shard in one call, and each shard's gradient is bit for bit
/// what `backward` gives for the batch made of that shard alone (chunked by its own size), for
/// shards that span several chunks and for values whose sums depend on the order of addition.
#[test]
fn each_shard_gets_the_gradient_of_its_own_batch() {
    let n = 300;
    let set = set(n);
    let input = set.input(None).unwrap();
    let stack = [DelayLine { delay: 0.5, sleep: Duration::ZERO }, DelayLine { delay: 2.0, sleep: Duration::ZERO }];
    let cancel = Cancel::new();
    for policy in [ChunkPolicy::FAST_SAMPLES, ChunkPolicy::SLOW_SAMPLES] {
        let out = driver::forward(&stack, &input, policy, &cancel).unwrap();
        let grad: Vec<f64> = (0..out[1].len()).map(|r| if r % 7 == 0 { 1e16 } else { 0.1 * r as f64 }).collect();
        let shards = [100, 90, 70, 40];
        let (per_shard, gin) = driver::backward_shards(&stack, &input, &out, &grad, policy, &shards, &cancel).unwrap();
        let (_, whole_gin) = driver::backward(&stack, &input, &out, &grad, policy, &cancel).unwrap();
        assert_eq!(gin, whole_gin);
        let mut start = 0;
        for (k, &size) in shards.iter().enumerate() {
            let ids: Vec<u32> = (start as u32..(start + size) as u32).collect();
            let alone = set.input(Some(&ids)).unwrap();
            let alone_out = driver::forward(&stack, &alone, policy, &cancel).unwrap();
            let rows = out[1].offsets[start]..out[1].offsets[start + size];
            let (g, _) = driver::backward(&stack, &alone, &alone_out, &grad[rows], policy, &cancel).unwrap();
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&per_shard[k]), bits(&g), "shard {k}");
            start += size;
        }
        let err = driver::backward_shards(&stack, &input, &out, &grad, policy, &[100, 100], &cancel).unwrap_err();
        assert!(err.to_string().contains("add up to the batch's 300 samples"), "{err}");
    }
}
