//! Throughput of the TTFS core alone (no Python) on a Yin-Yang-shaped problem: 4 feature
//! channels plus a bias spike, latency-coded into [0.15, 2] tau, a 5-30-3 network with synaptic
//! delays, tau_m = 2 tau_s, the weights and delays of `delgrad.Network.random` (N(1.5, 0.8),
//! N(0.5, 0.8), delays U(0, 0.1)). One step is network forward + exact backward of all weights
//! and delays with a unit gradient on every output spike (the loss is not the point here).
//!
//! `benchmarks/ttfs_throughput.py` measures the whole Python training step; this example shows
//! how much of it is the core, and is the deterministic input for profilers.
//!
//! Run: `cargo run --release -p delgrad-core --example ttfs_throughput [batch] [reps] [hidden]`

use std::time::Instant;

use delgrad_core::{DelayKind, LayerRef, Network, Neuron, SpikeSet, SpikeTable};

#[path = "../tests/common/mod.rs"]
mod common;
use common::Rng;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let batch: usize = args.get(1).and_then(|x| x.parse().ok()).unwrap_or(5000);
    let reps: usize = args.get(2).and_then(|x| x.parse().ok()).unwrap_or(20);
    let n_h: usize = args.get(3).and_then(|x| x.parse().ok()).unwrap_or(30);
    let (n_in, n_out) = (5usize, 3usize);
    let mut rng = Rng(7);

    let (mut s_col, mut n_col, mut t_col) = (Vec::new(), Vec::new(), Vec::new());
    for s in 0..batch {
        let (x, y) = (rng.next(), rng.next());
        for (c, f) in [x, y, 1.0 - x, 1.0 - y].into_iter().enumerate() {
            s_col.push(s as u32);
            n_col.push(c as u32);
            t_col.push(0.15 + (2.0 - 0.15) * f);
        }
        s_col.push(s as u32);
        n_col.push(4);
        t_col.push(0.9);
    }
    let set = SpikeSet::new(SpikeTable::from_vecs(s_col, n_col, t_col).unwrap(), batch).unwrap();
    let input = set.input(None).unwrap();

    let w1: Vec<f64> = (0..n_h * n_in).map(|_| rng.normal(1.5, 0.8)).collect();
    let d1: Vec<f64> = (0..n_h * n_in).map(|_| rng.uniform(0.0, 0.1)).collect();
    let w2: Vec<f64> = (0..n_out * n_h).map(|_| rng.normal(0.5, 0.8)).collect();
    let d2: Vec<f64> = (0..n_out * n_h).map(|_| rng.uniform(0.0, 0.1)).collect();
    let neuron = Neuron::new(2.0, 1.0, 1.0).unwrap();
    let layers = vec![
        LayerRef::new(n_h, n_in, &w1, DelayKind::Synaptic, &d1, "hidden").unwrap(),
        LayerRef::new(n_out, n_h, &w2, DelayKind::Synaptic, &d2, "output").unwrap(),
    ];
    let net = Network::new(neuron, layers).unwrap();

    println!(
        "TTFS core: batch {batch}, {n_in}-{n_h}-{n_out}, synaptic delays, tau_m 2, tau_s 1, theta 1, {} rayon threads",
        rayon::current_num_threads()
    );
    let mut rates = Vec::new();
    for rep in 0..reps {
        let t0 = Instant::now();
        let spikes = net.forward(&input).unwrap();
        let t1 = Instant::now();
        let grad = vec![1.0; spikes[1].len()];
        let g = net.backward(&input, &spikes, &grad).unwrap();
        let t2 = Instant::now();
        let rate = batch as f64 / (t2 - t0).as_secs_f64();
        rates.push(rate);
        if rep == 0 || rep + 1 == reps {
            println!(
                "rep {rep}: hidden spikes/sample {:.2}, output {:.2}; forward {:.2} ms, backward {:.2} ms; {:.0} samples/s (|dW1| {:.4e})",
                spikes[0].len() as f64 / batch as f64,
                spikes[1].len() as f64 / batch as f64,
                (t1 - t0).as_secs_f64() * 1e3,
                (t2 - t1).as_secs_f64() * 1e3,
                rate,
                g.layers[0].weights.iter().map(|x| x * x).sum::<f64>().sqrt(),
            );
        }
    }
    rates.sort_by(|a, b| a.total_cmp(b));
    println!("median {:.0} samples/s, best {:.0} samples/s over {reps} repetitions", rates[reps / 2], rates[reps - 1]);
}
