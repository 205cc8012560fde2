//! One SHD-sized EventProp step (issue 14), feed-forward or recurrent, timed per pass:
//! 700 inputs, `spikes` input spikes per sample (channel and time uniform over 1 s), 256 hidden
//! multi-spike LIF neurons (tau_m 20 ms, tau_s 5 ms, theta 1, trial 1 s) with synaptic delays
//! U(0, 150) ms, optionally all-to-all recurrent weights (uniform, mean 0, std `rec_std`) with
//! synaptic delays U(0, 150) ms, a 20-class exp-weighted mean-voltage readout, cross-entropy,
//! EventProp backward for every weight and delay.
//!
//! A synaptic event is one spike arriving at one target: per sample
//! `input spikes x 256 + hidden spikes x 256 (recurrent only) + hidden spikes x 20`; each event is
//! counted once per step (not once per pass). Uses only the public batch API, so the same file
//! builds against older commits for side-by-side runs.
//!
//! Run: `cargo run --release -p delgrad-core --example shd_step -- BATCH SPIKES REPS REC_STD W_MEAN
//! HIDDEN REC_DELAY W_STD` (`REC_STD` 0 = feed-forward; `W_MEAN` the input weights' mean, 0.0015 by
//! default, sets the hidden rate; `HIDDEN` 256, `REC_DELAY` the largest recurrent delay, 150 ms,
//! `W_STD` the input weights' std, 0.02 by default; `pipelines/shd.toml`'s start is
//! `REC_STD 0.001 W_MEAN 0.0015 HIDDEN 512 REC_DELAY 0 W_STD 0.0005`). Prints one line per
//! repetition and a `median` line.

use std::time::Instant;

use delgrad_core::multi_network::{MultiLayer, MultiNetwork};
use delgrad_core::readout::{cross_entropy, Readout, ReadoutKind};
use delgrad_core::{DelayKind, LayerRef, MultiNeuron, Neuron, SpikeSet, SpikeTable};

#[path = "../tests/common/mod.rs"]
mod common;
use common::Rng;

/// User + system CPU seconds of this process so far (from /proc, 10 ms resolution): on a shared
/// machine the CPU time is steadier than the wall time.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |k: usize| fields.get(k).and_then(|x| x.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (ticks(11) + ticks(12)) / 100.0
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |k: usize, default: f64| args.get(k).and_then(|x| x.parse::<f64>().ok()).unwrap_or(default);
    let batch = arg(1, 32.0) as usize;
    let per_sample = arg(2, 8000.0) as usize;
    let reps = arg(3, 3.0) as usize;
    let rec_std = arg(4, 0.0);
    let w_mean = arg(5, 0.0015);
    let n_h = arg(6, 256.0) as usize;
    let rec_delay = arg(7, 150.0);
    let w_std = arg(8, 0.02);
    let (n_in, n_out) = (700usize, 20usize);
    let t_trial = 1000.0;
    let mut rng = Rng(1);

    let (mut s_col, mut n_col, mut t_col) = (Vec::new(), Vec::new(), Vec::new());
    for s in 0..batch {
        let mut v: Vec<(u32, f64)> =
            (0..per_sample).map(|_| ((rng.next() * n_in as f64) as u32, rng.uniform(0.0, t_trial))).collect();
        v.sort_by(|a, b| a.1.total_cmp(&b.1));
        for (i, t) in v {
            s_col.push(s as u32);
            n_col.push(i);
            t_col.push(t);
        }
    }
    let set = SpikeSet::new(SpikeTable::from_vecs(s_col, n_col, t_col).unwrap(), batch).unwrap();
    let input = set.input(None).unwrap();

    let half = 3f64.sqrt() * w_std;
    let w1: Vec<f64> = (0..n_h * n_in).map(|_| rng.uniform(w_mean - half, w_mean + half)).collect();
    let d1: Vec<f64> = (0..n_h * n_in).map(|_| rng.uniform(0.0, 150.0)).collect();
    let rec_half = 3f64.sqrt() * rec_std;
    let wr: Vec<f64> = (0..n_h * n_h).map(|_| rng.uniform(-rec_half, rec_half)).collect();
    let dr: Vec<f64> = (0..n_h * n_h).map(|_| rng.uniform(0.0, rec_delay)).collect();
    let w2: Vec<f64> = (0..n_out * n_h).map(|_| rng.uniform(-0.05, 0.05)).collect();
    let d2: Vec<f64> = Vec::new();

    let neuron = Neuron::new(20.0, 5.0, 1.0).unwrap();
    let m = MultiNeuron::new(neuron, 0.0, t_trial).unwrap();
    let ff = LayerRef::new(n_h, n_in, &w1, DelayKind::Synaptic, &d1, "hidden").unwrap();
    let recurrent = rec_std > 0.0;
    let rec = recurrent.then(|| LayerRef::new(n_h, n_h, &wr, DelayKind::Synaptic, &dr, "rec").unwrap());
    let net = MultiNetwork::new(m, vec![MultiLayer { ff, rec }]).unwrap();
    let ro_layer = LayerRef::new(n_out, n_h, &w2, DelayKind::None, &d2, "readout").unwrap();
    let readout = Readout { layer: ro_layer, kind: ReadoutKind::ExpMean { tau_w: t_trial }, t_end: t_trial };
    let labels: Vec<i64> = (0..batch as i64).map(|s| s % n_out as i64).collect();

    println!(
        "shd_step: batch {batch}, {per_sample} input spikes/sample, {n_in}-{n_h}-{n_out}, {}, input weights \
         mean {w_mean} std {w_std}, synaptic delays U(0, 150) ms, {} rayon threads",
        if recurrent {
            format!("recurrent (std {rec_std}, delays U(0, {rec_delay}) ms)")
        } else {
            "feed-forward".to_string()
        },
        rayon::current_num_threads()
    );
    let (mut fwd, mut bwd, mut per_sample_ms, mut rates) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut cpu_ms = Vec::new();
    for rep in 0..reps {
        let c0 = cpu_seconds();
        let t0 = Instant::now();
        let spikes = net.forward(&input).unwrap();
        let t1 = Instant::now();
        let hidden = &spikes[0];
        let y = readout.forward(&neuron, hidden).unwrap();
        let (loss, dy, _) = cross_entropy(&y, n_out, &labels).unwrap();
        let (_g_ro, g_hidden) = readout.backward(&neuron, hidden, &dy).unwrap();
        let t2 = Instant::now();
        let g = net.backward(&input, &spikes, &g_hidden).unwrap();
        let t3 = Instant::now();
        cpu_ms.push((cpu_seconds() - c0) * 1e3 / batch as f64);
        let fan_out = if recurrent { n_h + n_out } else { n_out };
        let events = (set.table.len() * n_h + hidden.len() * fan_out) as f64;
        let total = (t3 - t0).as_secs_f64();
        fwd.push((t1 - t0).as_secs_f64() * 1e3 / batch as f64);
        bwd.push((t3 - t2).as_secs_f64() * 1e3 / batch as f64);
        per_sample_ms.push(total * 1e3 / batch as f64);
        rates.push(events / total);
        println!(
            "rep {rep}: hidden spikes/sample {:.0}, events/sample {:.3e}, loss {loss:.6}, |dW| {:.6e}; per sample: \
             forward {:.2} ms, backward {:.2} ms, step {:.2} ms, CPU {:.1} ms; {:.1} M synaptic events/s",
            hidden.len() as f64 / batch as f64,
            events / batch as f64,
            g.layers[0].weights.iter().map(|x| x * x).sum::<f64>().sqrt(),
            fwd[rep],
            bwd[rep],
            per_sample_ms[rep],
            cpu_ms[rep],
            rates[rep] / 1e6,
        );
    }
    println!(
        "median: step {:.2} ms/sample, forward {:.2} ms/sample, backward {:.2} ms/sample, CPU {:.1} ms/sample, \
         {:.1} M synaptic events/s",
        median(&mut per_sample_ms),
        median(&mut fwd),
        median(&mut bwd),
        median(&mut cpu_ms),
        median(&mut rates) / 1e6
    );
}
