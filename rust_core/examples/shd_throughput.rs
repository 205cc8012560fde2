//! Throughput of the multi-spike EventProp core on an SHD-sized problem:
//! 700 inputs with thousands of spikes per sample over 1 s, 256 hidden LIF neurons with
//! synaptic delays up to 150 ms, a 20-class leaky-integrator readout (exp-weighted mean voltage,
//! cross-entropy). Times in ms, tau_m = 20, tau_s = 5, theta = 1.
//!
//! A synaptic event is one spike arriving at one target: per sample
//! `input spikes x 256 + hidden spikes x 20`. The rate printed is those events divided by the
//! wall time of forward + backward (each event counted once, not once per pass).
//!
//! Run: `cargo run --release -p delgrad-core --example shd_throughput [batch] [spikes_per_sample] [reps]`

use std::time::Instant;

use delgrad_core::multi_network::{MultiLayer, MultiNetwork};
use delgrad_core::readout::{cross_entropy, Readout, ReadoutKind};
use delgrad_core::{DelayKind, LayerRef, MultiNeuron, Neuron, SpikeSet, SpikeTable};

#[path = "../tests/common/mod.rs"]
mod common;
use common::Rng;

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|x| x.parse::<f64>().ok()))
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let batch: usize = args.get(1).and_then(|x| x.parse().ok()).unwrap_or(64);
    let per_sample: usize = args.get(2).and_then(|x| x.parse().ok()).unwrap_or(5000);
    let reps: usize = args.get(3).and_then(|x| x.parse().ok()).unwrap_or(3);
    let (n_in, n_h, n_out) = (700usize, 256usize, 20usize);
    let t_trial = 1000.0;
    let mut rng = Rng(1);

    // Inputs: each sample has `per_sample` spikes; channels and times uniform (SHD's are
    // clustered in channels and time, which only helps the sort).
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

    let (mu, sd) = (0.0015, 0.02);
    let half = 3f64.sqrt() * sd;
    let w1: Vec<f64> = (0..n_h * n_in).map(|_| rng.uniform(mu - half, mu + half)).collect();
    let d1: Vec<f64> = (0..n_h * n_in).map(|_| rng.uniform(0.0, 150.0)).collect();
    let w2: Vec<f64> = (0..n_out * n_h).map(|_| rng.uniform(-0.05, 0.05)).collect();
    let d2: Vec<f64> = vec![0.0; 0];

    let neuron = Neuron::new(20.0, 5.0, 1.0).unwrap();
    let m = MultiNeuron::new(neuron, 0.0, t_trial).unwrap();
    let ff = LayerRef::new(n_h, n_in, &w1, DelayKind::Synaptic, &d1, "hidden").unwrap();
    let net = MultiNetwork::new(m, vec![MultiLayer { ff, rec: None }]).unwrap();
    let ro_layer = LayerRef::new(n_out, n_h, &w2, DelayKind::None, &d2, "readout").unwrap();
    let readout = Readout { layer: ro_layer, kind: ReadoutKind::ExpMean { tau_w: t_trial }, t_end: t_trial };
    let labels: Vec<i64> = (0..batch as i64).map(|s| s % n_out as i64).collect();

    println!(
        "SHD-sized multi-spike EventProp: batch {batch}, {per_sample} input spikes/sample, {n_in}-{n_h}-{n_out}, \
         synaptic delays U(0, 150) ms, tau_m 20 ms, tau_s 5 ms, {} rayon threads",
        rayon::current_num_threads()
    );
    let mut best = 0.0_f64;
    for rep in 0..reps {
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
        let events = (set.table.len() * n_h + hidden.len() * n_out) as f64;
        let total = (t3 - t0).as_secs_f64();
        let rate = events / total;
        best = best.max(rate);
        println!(
            "rep {rep}: hidden spikes/sample {:.0} ({:.1} Hz/neuron), synaptic events {:.3e}, loss {loss:.4}; \
             forward {:.3} s, readout fwd+bwd {:.3} s, backward {:.3} s; {:.1} M synaptic events/s (|dW| {:.3e})",
            hidden.len() as f64 / batch as f64,
            hidden.len() as f64 / batch as f64 / n_h as f64 / (t_trial / 1000.0),
            events,
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (t3 - t2).as_secs_f64(),
            rate / 1e6,
            g.layers[0].weights.iter().map(|x| x * x).sum::<f64>().sqrt(),
        );
    }
    println!("best: {:.1} M synaptic events/s; peak RSS {:.0} MB", best / 1e6, peak_rss_mb());
}
