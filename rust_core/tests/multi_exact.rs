//! The multi-spike core (issue 4) against an independent dense-stepping simulation, its EventProp
//! gradients against central finite differences (weights, delays, input times; feed-forward,
//! deep, recurrent; with and without refractory time; tau ratios 1, 2, 1.5), the leaky-integrator
//! readout losses, and the cross-check against the TTFS (DelGrad) gradients.

use delgrad_core::multi::{bucket_fill, bucket_sort, FArr, SortBuf};
use delgrad_core::multi_network::{self, MultiLayer, MultiNetwork};
use delgrad_core::readout::{cross_entropy, Readout, ReadoutKind};
use delgrad_core::{layer_backward, layer_forward, DelayKind, LayerRef, MultiNeuron, Neuron, SpikeTable, Spikes};

mod common;
use common::Rng;

// ---------------------------------------------------------------- independent reference

/// Free evolution from the textbook formulas (not the core's code).
fn evolve_ref(tm: f64, ts: f64, v: f64, i: f64, s: f64) -> (f64, f64) {
    let k = if tm == ts { s * (-s / tm).exp() } else { tm * ts / (tm - ts) * ((-s / tm).exp() - (-s / ts).exp()) };
    (v * (-s / tm).exp() + i * k, i * (-s / ts).exp())
}

/// Dense-stepping simulation of one layer (feed-forward inputs `ff[j] = [(arrival, w)]`, optional
/// recurrent weights/delays `rec = (w, d)` `(n, n)`): a grid of `dt`, exact integration within
/// each step, bisection on the first crossing of any neuron. Returns every neuron's spike times
/// and the smallest distance of a grid-sampled local maximum of V below theta from theta.
#[allow(clippy::type_complexity)]
fn reference_layer(
    tm: f64,
    ts: f64,
    theta: f64,
    t_ref: f64,
    ff: &[Vec<(f64, f64)>],
    rec: Option<(&[f64], &[f64])>,
) -> (Vec<Vec<f64>>, f64) {
    let n = ff.len();
    let dt = 2e-3;
    let mut pending: Vec<Vec<(f64, f64)>> = ff.to_vec();
    let mut v = vec![0.0; n];
    let mut cur = vec![0.0; n];
    let mut refr = vec![f64::NEG_INFINITY; n];
    let mut spikes = vec![Vec::new(); n];
    let mut hist = vec![(f64::NEG_INFINITY, 0.0); n]; // (V two samples ago, V one sample ago)
    let mut near = f64::INFINITY;
    let all: Vec<f64> = ff.iter().flatten().map(|x| x.0).collect();
    if all.is_empty() {
        return (spikes, near);
    }
    let mut t = all.iter().cloned().fold(f64::INFINITY, f64::min);
    let mut t_stop = all.iter().cloned().fold(f64::MIN, f64::max) + 40.0 * tm.max(ts);
    // apply arrivals at t
    let apply = |t: f64, pending: &mut Vec<Vec<(f64, f64)>>, cur: &mut Vec<f64>| {
        for j in 0..pending.len() {
            pending[j].retain(|&(a, w)| {
                if a <= t {
                    cur[j] += w;
                    false
                } else {
                    true
                }
            });
        }
    };
    apply(t, &mut pending, &mut cur);
    let mut steps = 0usize;
    while t < t_stop {
        let mut te = t + dt;
        for j in 0..n {
            for &(a, _) in &pending[j] {
                te = te.min(a);
            }
            if refr[j] > t {
                te = te.min(refr[j]);
            }
        }
        // Earliest crossing in (t, te].
        let mut first: Option<(f64, usize)> = None;
        for j in 0..n {
            if refr[j] > t {
                continue;
            }
            let (ve, _) = evolve_ref(tm, ts, v[j], cur[j], te - t);
            if ve >= theta {
                let (mut lo, mut hi) = (0.0, te - t);
                for _ in 0..200 {
                    let mid = 0.5 * (lo + hi);
                    if evolve_ref(tm, ts, v[j], cur[j], mid).0 >= theta {
                        hi = mid
                    } else {
                        lo = mid
                    }
                }
                let tc = t + hi;
                if first.is_none_or(|(f, _)| tc < f) {
                    first = Some((tc, j));
                }
            }
        }
        let target = first.map_or(te, |f| f.0);
        for j in 0..n {
            if refr[j] > t {
                cur[j] *= (-(target - t) / ts).exp();
            } else {
                (v[j], cur[j]) = evolve_ref(tm, ts, v[j], cur[j], target - t);
            }
        }
        t = target;
        if let Some((tc, j)) = first {
            spikes[j].push(tc);
            v[j] = 0.0;
            refr[j] = tc + t_ref;
            if let Some((w, d)) = rec {
                for m in 0..n {
                    if w[m * n + j] != 0.0 {
                        pending[m].push((tc + d[m * n + j], w[m * n + j]));
                        t_stop = t_stop.max(tc + d[m * n + j] + 40.0 * tm.max(ts));
                    }
                }
            }
            hist[j] = (f64::NEG_INFINITY, 0.0);
        } else {
            apply(t, &mut pending, &mut cur);
            if first.is_none() {
                for j in 0..n {
                    let (pp, p) = hist[j];
                    if p >= pp && v[j] < p && refr[j] <= t {
                        near = near.min((theta - p).abs());
                    }
                    hist[j] = (p, v[j]);
                }
            }
        }
        steps += 1;
        assert!(steps < 50_000_000, "reference did not terminate");
    }
    (spikes, near)
}

// ---------------------------------------------------------------- helpers

fn table(inputs: &[(u32, u32, f64)]) -> SpikeTable {
    SpikeTable::from_vecs(
        inputs.iter().map(|x| x.0).collect(),
        inputs.iter().map(|x| x.1).collect(),
        inputs.iter().map(|x| x.2).collect(),
    )
    .unwrap()
}

fn random_inputs(rng: &mut Rng, n_samples: usize, n_in: usize, per_channel: usize, span: f64) -> Vec<(u32, u32, f64)> {
    let mut v = Vec::new();
    for s in 0..n_samples {
        for i in 0..n_in {
            for _ in 0..per_channel {
                v.push((s as u32, i as u32, rng.uniform(0.0, span)));
            }
        }
    }
    v
}

/// A network description with all parameters flat, for finite differences.
#[derive(Clone)]
struct Case {
    tm: f64,
    ts: f64,
    t_ref: f64,
    n_in: usize,
    sizes: Vec<usize>,
    rec: Vec<bool>,
    /// (n_out, kind, t_end) of an LI readout on the last layer, with cross-entropy on label 0.
    readout: Option<(usize, ReadoutKind, f64)>,
    inputs: Vec<(u32, u32, f64)>,
    n_samples: usize,
    /// Per layer: ff weights, ff delays, rec weights, rec delays (empty when absent); then the
    /// readout's weights and delays.
    params: Vec<Vec<f64>>,
}

impl Case {
    fn new(rng: &mut Rng, tm: f64, t_ref: f64, n_in: usize, sizes: &[usize], rec: &[bool], w: (f64, f64)) -> Self {
        let mut params = Vec::new();
        let mut prev = n_in;
        for (l, &n) in sizes.iter().enumerate() {
            params.push(rng.vec(n * prev, w.0, w.1));
            params.push(rng.vec(n * prev, 0.0, 1.0));
            if rec[l] {
                params.push(rng.vec(n * n, -0.8, 0.6));
                params.push(rng.vec(n * n, 0.1, 1.0));
            } else {
                params.push(Vec::new());
                params.push(Vec::new());
            }
            prev = n;
        }
        Case {
            tm,
            ts: 1.0,
            t_ref,
            n_in,
            sizes: sizes.to_vec(),
            rec: rec.to_vec(),
            readout: None,
            inputs: random_inputs(rng, 2, n_in, 4, 4.0),
            n_samples: 2,
            params,
        }
    }

    fn with_readout(mut self, rng: &mut Rng, n_out: usize, kind: ReadoutKind, t_end: f64) -> Self {
        let n_h = *self.sizes.last().unwrap();
        self.params.push(rng.vec(n_out * n_h, -1.0, 1.0));
        self.params.push(rng.vec(n_out * n_h, 0.0, 1.0));
        self.readout = Some((n_out, kind, t_end));
        self
    }

    fn neuron(&self) -> MultiNeuron {
        MultiNeuron::new(Neuron::new(self.tm, self.ts, 1.0).unwrap(), self.t_ref, f64::INFINITY).unwrap()
    }

    fn net<'a>(&self, p: &'a [Vec<f64>]) -> MultiNetwork<'a> {
        let mut layers = Vec::new();
        let mut prev = self.n_in;
        for (l, &n) in self.sizes.iter().enumerate() {
            let ff = LayerRef::new(n, prev, &p[4 * l], DelayKind::Synaptic, &p[4 * l + 1], "ff").unwrap();
            let rec = self.rec[l]
                .then(|| LayerRef::new(n, n, &p[4 * l + 2], DelayKind::Synaptic, &p[4 * l + 3], "rec").unwrap());
            layers.push(MultiLayer { ff, rec });
            prev = n;
        }
        MultiNetwork::new(self.neuron(), layers).unwrap()
    }

    fn readout<'a>(&self, p: &'a [Vec<f64>]) -> Option<Readout<'a>> {
        let (n_out, kind, t_end) = self.readout?;
        let l = 4 * self.sizes.len();
        let n_h = *self.sizes.last().unwrap();
        let layer = LayerRef::new(n_out, n_h, &p[l], DelayKind::Synaptic, &p[l + 1], "readout").unwrap();
        Some(Readout { layer, kind, t_end })
    }

    /// Per-spike loss weight (depends on neuron and on the spike's rank within its neuron).
    fn spike_weights(sp: &Spikes) -> Vec<f64> {
        let mut out = Vec::with_capacity(sp.len());
        let mut prev = (u32::MAX, usize::MAX);
        let mut rank = 0;
        for s in 0..sp.n_samples() {
            for k in sp.range(s) {
                let key = (sp.neuron[k], s);
                rank = if key == prev { rank + 1 } else { 0 };
                prev = key;
                out.push(
                    (0.3 + 0.4 * sp.neuron[k] as f64) * (1.0 - 0.25 * rank as f64) * if s == 1 { -0.7 } else { 1.0 },
                );
            }
        }
        out
    }

    /// Loss and the spike structure (number of spikes of every neuron of every layer).
    fn loss(&self, p: &[Vec<f64>], inputs: &[(u32, u32, f64)]) -> (f64, Vec<usize>) {
        let net = self.net(p);
        let spikes = net.forward_table(&table(inputs), self.n_samples).unwrap();
        let structure: Vec<usize> =
            spikes.iter().flat_map(|sp| sp.neuron.iter().map(|&j| j as usize).chain([usize::MAX])).collect();
        let last = spikes.last().unwrap();
        let loss = match self.readout(p) {
            None => Self::spike_weights(last).iter().zip(&last.time).map(|(c, t)| c * t).sum(),
            Some(r) => {
                let y = r.forward(&net.neuron.neuron, last).unwrap();
                cross_entropy(&y, r.layer.n_out, &vec![0; self.n_samples]).unwrap().0
            }
        };
        (loss, structure)
    }

    /// Analytic gradient in the layout of `params`, and `dL/dt` of each input row.
    fn grad(&self) -> (Vec<Vec<f64>>, Vec<f64>, usize) {
        let p = &self.params;
        let net = self.net(p);
        let tab = table(&self.inputs);
        let spikes = net.forward_table(&tab, self.n_samples).unwrap();
        let last = spikes.last().unwrap();
        let mut out = Vec::new();
        let gout = match self.readout(p) {
            None => Self::spike_weights(last),
            Some(r) => {
                let y = r.forward(&net.neuron.neuron, last).unwrap();
                let (_, dy, _) = cross_entropy(&y, r.layer.n_out, &vec![0; self.n_samples]).unwrap();
                let (g, gin) = r.backward(&net.neuron.neuron, last, &dy).unwrap();
                out.push(g.weights);
                out.push(g.delays);
                gin
            }
        };
        let g = net.backward_table(&tab, self.n_samples, &spikes, &gout).unwrap();
        let mut layers = Vec::new();
        for (l, lg) in g.layers.into_iter().enumerate() {
            layers.push(lg.weights);
            layers.push(lg.delays);
            match &g.rec[l] {
                Some(r) => {
                    layers.push(r.weights.clone());
                    layers.push(r.delays.clone());
                }
                None => {
                    layers.push(Vec::new());
                    layers.push(Vec::new());
                }
            }
        }
        layers.extend(out);
        let n_spikes = spikes.iter().map(|s| s.len()).sum();
        (layers, g.inputs, n_spikes)
    }

    /// Compares every gradient entry with central differences. Entries where the spike structure
    /// changes under the perturbation, or where two step sizes disagree (a discontinuity or a
    /// near-tangent crossing nearby), are skipped. Returns (checked, skipped).
    fn check(&self, label: &str) -> (usize, usize) {
        let (g, gin, _) = self.grad();
        let (_, s0) = self.loss(&self.params, &self.inputs);
        let h = 1e-6;
        let (mut checked, mut skipped) = (0, 0);
        let fd = |f: &dyn Fn(f64) -> (f64, Vec<usize>)| -> Option<f64> {
            let mut est = Vec::new();
            for hh in [h, 4.0 * h] {
                let (lp, sp) = f(hh);
                let (lm, sm) = f(-hh);
                if sp != s0 || sm != s0 {
                    return None;
                }
                est.push((lp - lm) / (2.0 * hh));
            }
            ((est[0] - est[1]).abs() <= 1e-4 * (1.0 + est[0].abs())).then_some(est[0])
        };
        for (q, block) in self.params.iter().enumerate() {
            let is_delay = q % 2 == 1;
            for k in 0..block.len() {
                if is_delay && block[k] < 8.0 * h {
                    continue;
                }
                let f = |e: f64| {
                    let mut p = self.params.clone();
                    p[q][k] += e;
                    self.loss(&p, &self.inputs)
                };
                match fd(&f) {
                    Some(num) => {
                        let got = g[q][k];
                        assert!(
                            (got - num).abs() <= 2e-5 * (1.0 + num.abs()),
                            "{label}: block {q} entry {k}: eventprop {got} vs fd {num}"
                        );
                        checked += 1;
                    }
                    None => skipped += 1,
                }
            }
        }
        for r in 0..self.inputs.len() {
            let f = |e: f64| {
                let mut inp = self.inputs.clone();
                inp[r].2 += e;
                self.loss(&self.params, &inp)
            };
            match fd(&f) {
                Some(num) => {
                    assert!(
                        (gin[r] - num).abs() <= 2e-5 * (1.0 + num.abs()),
                        "{label}: input row {r}: eventprop {} vs fd {num}",
                        gin[r]
                    );
                    checked += 1;
                }
                None => skipped += 1,
            }
        }
        (checked, skipped)
    }
}

/// Runs `check` over several seeds and insists that most entries were really checked and that
/// the networks were really multi-spike.
fn run_cases(label: &str, seeds: u64, make: impl Fn(&mut Rng) -> Case) {
    let (mut checked, mut skipped, mut multi) = (0, 0, 0);
    for seed in 0..seeds {
        let mut rng = Rng(seed * 7919 + 13);
        let case = make(&mut rng);
        let spikes = case.net(&case.params).forward_table(&table(&case.inputs), case.n_samples).unwrap();
        // count neurons with more than one spike
        for sp in &spikes {
            for s in 0..sp.n_samples() {
                let r = sp.range(s);
                multi += sp.neuron[r.clone()].windows(2).filter(|w| w[0] == w[1]).count();
            }
        }
        let (c, s) = case.check(&format!("{label} seed {seed}"));
        checked += c;
        skipped += s;
    }
    eprintln!("{label}: {checked} entries checked, {skipped} skipped, {multi} repeat spikes");
    assert!(checked > 4 * skipped, "{label}: too many skipped ({checked} checked, {skipped} skipped)");
    assert!(multi > 0, "{label}: no neuron spiked twice");
}

// ---------------------------------------------------------------- forward vs reference

fn check_forward_layer(seed: u64, tm: f64, t_ref: f64, recurrent: bool) -> bool {
    let mut rng = Rng(seed);
    let (n_in, n) = (4, 3);
    let inputs = random_inputs(&mut rng, 1, n_in, 4, 5.0);
    let w = rng.vec(n * n_in, -1.0, 4.0);
    let d = rng.vec(n * n_in, 0.0, 1.0);
    let rw = rng.vec(n * n, -0.8, 0.6);
    let rd = rng.vec(n * n, 0.1, 1.0);
    let m = MultiNeuron::new(Neuron::new(tm, 1.0, 1.0).unwrap(), t_ref, f64::INFINITY).unwrap();
    let ff = LayerRef::new(n, n_in, &w, DelayKind::Synaptic, &d, "ff").unwrap();
    let rec = recurrent.then(|| LayerRef::new(n, n, &rw, DelayKind::Synaptic, &rd, "rec").unwrap());
    let out = multi_network::layer_forward(&m, MultiLayer { ff, rec }, &table(&inputs), 1).unwrap();
    let arr: Vec<Vec<(f64, f64)>> = (0..n)
        .map(|j| inputs.iter().map(|&(_, i, t)| (t + d[j * n_in + i as usize], w[j * n_in + i as usize])).collect())
        .collect();
    let (want, near) = reference_layer(tm, 1.0, 1.0, t_ref, &arr, recurrent.then_some((&rw[..], &rd[..])));
    if near < 1e-6 {
        return false;
    }
    for (j, want_j) in want.iter().enumerate() {
        let got: Vec<f64> = (0..out.len()).filter(|&k| out.neuron[k] == j as u32).map(|k| out.time[k]).collect();
        assert_eq!(
            got.len(),
            want_j.len(),
            "seed {seed} tm {tm} t_ref {t_ref} rec {recurrent} neuron {j}: {got:?} vs {want_j:?}"
        );
        for (g, r) in got.iter().zip(want_j) {
            assert!(
                (g - r).abs() < 1e-9,
                "seed {seed} tm {tm} t_ref {t_ref} rec {recurrent} neuron {j}: core {g}, reference {r}"
            );
        }
    }
    true
}

#[test]
fn forward_matches_reference_feed_forward() {
    let mut n = 0;
    for seed in 0..12 {
        for tm in [1.0, 2.0, 1.5, 0.7] {
            for t_ref in [0.0, 0.3] {
                n += check_forward_layer(seed, tm, t_ref, false) as usize;
            }
        }
    }
    assert!(n > 80, "only {n} cases were well conditioned");
}

#[test]
fn forward_matches_reference_recurrent() {
    let mut n = 0;
    for seed in 100..110 {
        for tm in [1.0, 2.0, 1.5] {
            for t_ref in [0.0, 0.3] {
                n += check_forward_layer(seed, tm, t_ref, true) as usize;
            }
        }
    }
    assert!(n > 45, "only {n} cases were well conditioned");
}

#[test]
fn recurrent_with_zero_recurrent_weights_equals_feed_forward() {
    let mut rng = Rng(5);
    let (n_in, n) = (5, 4);
    let inputs = random_inputs(&mut rng, 3, n_in, 5, 5.0);
    let w = rng.vec(n * n_in, -1.0, 4.0);
    let d = rng.vec(n * n_in, 0.0, 1.0);
    let rw = vec![0.0; n * n];
    let rd = vec![0.5; n * n];
    for tm in [1.0, 2.0, 1.5] {
        let m = MultiNeuron::new(Neuron::new(tm, 1.0, 1.0).unwrap(), 0.2, f64::INFINITY).unwrap();
        let ff = LayerRef::new(n, n_in, &w, DelayKind::Synaptic, &d, "ff").unwrap();
        let rec = LayerRef::new(n, n, &rw, DelayKind::Synaptic, &rd, "rec").unwrap();
        let a = multi_network::layer_forward(&m, MultiLayer { ff, rec: None }, &table(&inputs), 3).unwrap();
        let b = multi_network::layer_forward(&m, MultiLayer { ff, rec: Some(rec) }, &table(&inputs), 3).unwrap();
        assert_eq!(a.neuron, b.neuron);
        assert_eq!(a.offsets, b.offsets);
        for (x, y) in a.time.iter().zip(&b.time) {
            assert!((x - y).abs() < 1e-10, "{x} vs {y}");
        }
        assert!(a.len() > 3 * n, "too few spikes: {}", a.len());
    }
}

// ---------------------------------------------------------------- gradients vs finite differences

#[test]
fn gradients_feed_forward_single_layer() {
    for (tm, t_ref) in [(1.0, 0.0), (2.0, 0.0), (1.5, 0.0), (2.0, 0.4), (1.5, 0.25), (1.0, 0.3)] {
        run_cases(&format!("ff tm={tm} t_ref={t_ref}"), 4, |rng| {
            Case::new(rng, tm, t_ref, 3, &[3], &[false], (-1.0, 4.0))
        });
    }
}

#[test]
fn gradients_feed_forward_two_layers() {
    for (tm, t_ref) in [(2.0, 0.0), (1.5, 0.3), (1.0, 0.0)] {
        run_cases(&format!("ff2 tm={tm} t_ref={t_ref}"), 3, |rng| {
            Case::new(rng, tm, t_ref, 3, &[4, 2], &[false, false], (-0.5, 4.0))
        });
    }
}

#[test]
fn gradients_recurrent() {
    // tau_m = 4 tau_s: the polynomial solver and the power decays in the binned forward pass.
    for (tm, t_ref) in [(2.0, 0.0), (1.5, 0.3), (1.0, 0.2), (2.0, 0.5), (4.0, 0.0), (4.0, 0.3)] {
        run_cases(&format!("rec tm={tm} t_ref={t_ref}"), 4, |rng| {
            Case::new(rng, tm, t_ref, 3, &[3], &[true], (-1.0, 4.0))
        });
    }
}

#[test]
fn gradients_recurrent_then_feed_forward() {
    run_cases("rec+ff", 3, |rng| Case::new(rng, 2.0, 0.2, 3, &[3, 2], &[true, false], (-0.5, 4.0)));
}

#[test]
fn gradients_readout_max() {
    for (tm, t_ref) in [(2.0, 0.0), (1.5, 0.2), (1.0, 0.0)] {
        run_cases(&format!("max readout tm={tm}"), 3, |rng| {
            Case::new(rng, tm, t_ref, 3, &[3], &[false], (-1.0, 4.0)).with_readout(rng, 3, ReadoutKind::Max, 8.0)
        });
    }
}

#[test]
fn gradients_readout_exp_mean() {
    for (tm, t_ref) in [(2.0, 0.0), (1.5, 0.2), (1.0, 0.0)] {
        run_cases(&format!("exp-mean readout tm={tm}"), 3, |rng| {
            Case::new(rng, tm, t_ref, 3, &[3], &[false], (-1.0, 4.0)).with_readout(
                rng,
                3,
                ReadoutKind::ExpMean { tau_w: 6.0 },
                6.0,
            )
        });
    }
}

#[test]
fn gradients_recurrent_with_readout() {
    run_cases("rec + exp-mean readout", 3, |rng| {
        Case::new(rng, 2.0, 0.2, 3, &[3], &[true], (-1.0, 4.0)).with_readout(
            rng,
            2,
            ReadoutKind::ExpMean { tau_w: 5.0 },
            7.0,
        )
    });
}

// ---------------------------------------------------------------- readout values

#[test]
fn readout_values_match_dense_evaluation() {
    let mut rng = Rng(77);
    let n = Neuron::new(2.0, 1.0, 1.0).unwrap();
    let (n_h, n_out) = (4, 3);
    let w = rng.vec(n_out * n_h, -1.0, 1.0);
    let d = rng.vec(n_out * n_h, 0.0, 1.0);
    let mut sp = Spikes { offsets: vec![0], ..Default::default() };
    for j in 0..n_h {
        let mut ts: Vec<f64> = (0..3).map(|_| rng.uniform(0.0, 5.0)).collect();
        ts.sort_by(f64::total_cmp);
        for t in ts {
            sp.neuron.push(j as u32);
            sp.time.push(t);
        }
    }
    sp.offsets.push(sp.neuron.len());
    let t_end = 6.0;
    let layer = LayerRef::new(n_out, n_h, &w, DelayKind::Synaptic, &d, "r").unwrap();
    let v = |c: usize, t: f64| -> f64 {
        (0..sp.len())
            .map(|k| {
                let i = sp.neuron[k] as usize;
                let a = sp.time[k] + d[c * n_h + i];
                if a < t {
                    w[c * n_h + i] * evolve_ref(2.0, 1.0, 0.0, 1.0, t - a).0
                } else {
                    0.0
                }
            })
            .sum()
    };
    let max = Readout { layer, kind: ReadoutKind::Max, t_end }.forward(&n, &sp).unwrap();
    let mean = Readout { layer, kind: ReadoutKind::ExpMean { tau_w: 3.0 }, t_end }.forward(&n, &sp).unwrap();
    let steps = 600_000;
    for c in 0..n_out {
        let mut mx = f64::NEG_INFINITY;
        let mut integral = 0.0;
        for q in 0..=steps {
            let t = t_end * q as f64 / steps as f64;
            let x = v(c, t);
            mx = mx.max(x);
            let wq = if q == 0 || q == steps { 0.5 } else { 1.0 };
            integral += wq * (-t / 3.0).exp() * x * t_end / steps as f64;
        }
        assert!(max[c] >= mx - 1e-12 && max[c] - mx < 1e-7, "class {c}: max {} vs dense {mx}", max[c]);
        assert!((mean[c] - integral / t_end).abs() < 1e-8, "class {c}: mean {} vs dense {}", mean[c], integral / t_end);
    }
}

// ---------------------------------------------------------------- EventProp == DelGrad

#[test]
fn eventprop_equals_ttfs_gradients_when_each_neuron_spikes_once() {
    let mut compared = 0;
    for seed in 0..40u64 {
        let mut rng = Rng(1000 + seed);
        for tm in [1.0, 2.0, 1.5] {
            let (n_in, n) = (4, 3);
            let inputs = random_inputs(&mut rng, 2, n_in, 2, 3.0);
            let w = rng.vec(n * n_in, -0.5, 2.0);
            let d = rng.vec(n * n_in, 0.0, 1.0);
            let neuron = Neuron::new(tm, 1.0, 1.0).unwrap();
            // A long refractory time makes the first spike the only one.
            let m = MultiNeuron::new(neuron, 1e3, f64::INFINITY).unwrap();
            let ff = LayerRef::new(n, n_in, &w, DelayKind::Synaptic, &d, "ff").unwrap();
            let tab = table(&inputs);
            let multi = multi_network::layer_forward(&m, MultiLayer { ff, rec: None }, &tab, 2).unwrap();
            let ttfs = layer_forward(&neuron, ff, &tab, 2).unwrap();
            assert_eq!(multi.neuron, ttfs.neuron);
            for (a, b) in multi.time.iter().zip(&ttfs.time) {
                assert!((a - b).abs() < 1e-9, "seed {seed}: multi {a} vs ttfs {b}");
            }
            if multi.is_empty() {
                continue;
            }
            let g: Vec<f64> = (0..multi.len()).map(|k| 0.5 + 0.3 * k as f64).collect();
            let out = SpikeTable::from_vecs(multi.sample_column(), multi.neuron.clone(), multi.time.clone()).unwrap();
            let (gm, gmr, gim) =
                multi_network::layer_backward(&m, MultiLayer { ff, rec: None }, &tab, 2, &out, &g).unwrap();
            assert!(gmr.is_none());
            let (gt, git) = layer_backward(&neuron, ff, &tab, 2, &out, &g).unwrap();
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()));
            for k in 0..gm.weights.len() {
                assert!(
                    close(gm.weights[k], gt.weights[k]),
                    "dW[{k}]: eventprop {} vs ttfs {}",
                    gm.weights[k],
                    gt.weights[k]
                );
                assert!(
                    close(gm.delays[k], gt.delays[k]),
                    "dD[{k}]: eventprop {} vs ttfs {}",
                    gm.delays[k],
                    gt.delays[k]
                );
            }
            for k in 0..gim.len() {
                assert!(close(gim[k], git[k]), "dt[{k}]: eventprop {} vs ttfs {}", gim[k], git[k]);
            }
            compared += 1;
        }
    }
    assert!(compared > 60, "only {compared} cases compared");
}

#[test]
fn batch_results_do_not_depend_on_the_sample_split() {
    // The same samples, once as one batch and once one by one.
    let mut rng = Rng(42);
    let case = Case::new(&mut rng, 1.5, 0.2, 3, &[4], &[true], (-1.0, 4.0));
    let net = case.net(&case.params);
    let all = net.forward_table(&table(&case.inputs), 2).unwrap();
    for s in 0..2u32 {
        let one: Vec<(u32, u32, f64)> = case.inputs.iter().filter(|x| x.0 == s).map(|x| (0, x.1, x.2)).collect();
        let single = net.forward_table(&table(&one), 1).unwrap();
        let r = all[0].range(s as usize);
        assert_eq!(&all[0].time[r.clone()], &single[0].time[..]);
        assert_eq!(&all[0].neuron[r], &single[0].neuron[..]);
    }
}

#[test]
fn runaway_recurrent_activity_is_an_error_not_a_hang() {
    // Strong mutual excitation without refractoriness: the rate grows without bound.
    let w = [3.0, 3.0];
    let d = [0.0, 0.0];
    let rw = [2.0, 2.0, 2.0, 2.0];
    let rd = [0.1, 0.1, 0.1, 0.1];
    let mut m = MultiNeuron::new(Neuron::new(2.0, 1.0, 1.0).unwrap(), 0.0, f64::INFINITY).unwrap();
    m.max_spikes = 10_000;
    let ff = LayerRef::new(2, 1, &w, DelayKind::Synaptic, &d, "ff").unwrap();
    let rec = LayerRef::new(2, 2, &rw, DelayKind::Synaptic, &rd, "rec").unwrap();
    let err =
        multi_network::layer_forward(&m, MultiLayer { ff, rec: Some(rec) }, &table(&[(0, 0, 0.0)]), 1).unwrap_err();
    assert!(err.to_string().contains("max_spikes"), "{err}");
    // With a trial end the same network is fine.
    m.t_end = 1.0;
    let out = multi_network::layer_forward(&m, MultiLayer { ff, rec: Some(rec) }, &table(&[(0, 0, 0.0)]), 1).unwrap();
    assert!(!out.is_empty() && out.time.iter().all(|&t| t <= 1.0));
}

// ---------------------------------------------------------------- larger fan-in (bucket sort, factored sweeps)

/// `bucket_fill` against a plain sort of the same records, over calls that share one
/// `SortBuf` (as a worker thread's scratch does): sizes up and down, spread and clustered
/// times (the crowded fallback), records dropped by the filter, and `bucket_sort` on the
/// same buffers in between.
#[test]
fn bucket_fill_sorts_like_a_comparison_sort() {
    let mut sb: SortBuf<FArr> = SortBuf::default();
    let mut out = Vec::new();
    for (case, &(n, clustered)) in
        [(5000, false), (60, false), (3000, true), (7000, false), (49, true), (200, false)].iter().enumerate()
    {
        let u = Rng(case as u64 + 1).vec(2 * n, 0.0, 1.0);
        let times: Vec<f64> =
            (0..n).map(|r| if clustered { 3.0 + (u[r] * 4.0).floor() * 1e-3 } else { 100.0 * u[r] }).collect();
        let (lo, hi) = times.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &t| (a.min(t), b.max(t)));
        // Keep about 90 % of the records; the weight records the input row.
        let items = (0..n).filter(|&r| u[n + r] < 0.9).map(|r| FArr { a: times[r], w: r as f64, fm: 1.0, fs: 1.0 });
        let mut want: Vec<FArr> = items.clone().collect();
        want.sort_by(|x, y| x.a.total_cmp(&y.a).then(x.w.total_cmp(&y.w)));
        bucket_fill(n, lo, hi, &mut sb, &mut out, items, |x| x.a);
        assert_eq!(out.len(), want.len(), "case {case}: record count");
        assert!(out.windows(2).all(|w| w[0].a <= w[1].a), "case {case}: not sorted by time");
        let mut got = out.clone();
        got.sort_by(|x, y| x.a.total_cmp(&y.a).then(x.w.total_cmp(&y.w)));
        assert!(got.iter().zip(&want).all(|(g, w)| g.a == w.a && g.w == w.w), "case {case}: records differ");
        let mut v: Vec<FArr> = want.iter().rev().copied().collect();
        bucket_sort(&mut v, &mut sb, |x| x.a);
        assert!(v.windows(2).all(|w| w[0].a <= w[1].a), "case {case}: bucket_sort");
    }
}

#[test]
fn forward_matches_reference_many_arrivals() {
    let mut n_ok = 0;
    for seed in 0..4u64 {
        for (tm, t_ref) in [(2.0, 0.0), (1.5, 0.2), (1.0, 0.0), (4.0, 0.1)] {
            let mut rng = Rng(500 + seed);
            let (n_in, n) = (30, 3);
            let inputs = random_inputs(&mut rng, 1, n_in, 4, 6.0);
            let w = rng.vec(n * n_in, -0.3, 1.2);
            let d = rng.vec(n * n_in, 0.0, 1.5);
            let m = MultiNeuron::new(Neuron::new(tm, 1.0, 1.0).unwrap(), t_ref, f64::INFINITY).unwrap();
            let ff = LayerRef::new(n, n_in, &w, DelayKind::Synaptic, &d, "ff").unwrap();
            let out = multi_network::layer_forward(&m, MultiLayer { ff, rec: None }, &table(&inputs), 1).unwrap();
            let arr: Vec<Vec<(f64, f64)>> = (0..n)
                .map(|j| {
                    inputs.iter().map(|&(_, i, t)| (t + d[j * n_in + i as usize], w[j * n_in + i as usize])).collect()
                })
                .collect();
            let (want, near) = reference_layer(tm, 1.0, 1.0, t_ref, &arr, None);
            if near < 1e-6 {
                continue;
            }
            for (j, want_j) in want.iter().enumerate() {
                let got: Vec<f64> =
                    (0..out.len()).filter(|&k| out.neuron[k] == j as u32).map(|k| out.time[k]).collect();
                assert_eq!(got.len(), want_j.len(), "seed {seed} tm {tm} neuron {j}: {got:?} vs {want_j:?}");
                for (g, r) in got.iter().zip(want_j) {
                    assert!((g - r).abs() < 1e-9, "seed {seed} tm {tm} neuron {j}: core {g}, reference {r}");
                }
            }
            assert!(out.len() > 10, "too few spikes ({})", out.len());
            n_ok += 1;
        }
    }
    assert!(n_ok >= 12, "only {n_ok} well-conditioned cases");
}

#[test]
fn gradients_many_arrivals() {
    for (tm, t_ref) in [(2.0, 0.0), (1.5, 0.2), (4.0, 0.0)] {
        run_cases(&format!("fan-in 30 tm={tm} t_ref={t_ref}"), 2, |rng| {
            Case::new(rng, tm, t_ref, 30, &[3], &[false], (-0.3, 1.2)).with_readout(
                rng,
                2,
                ReadoutKind::ExpMean { tau_w: 5.0 },
                8.0,
            )
        });
    }
}

#[test]
fn readout_with_per_source_delays_equals_synaptic_form() {
    // Axonal delays take the shared per-spike path; the same delays written per synapse take the
    // general one. Values and gradients must agree.
    let mut rng = Rng(9);
    let n = Neuron::new(2.0, 1.0, 1.0).unwrap();
    let (n_h, n_out) = (5, 3);
    let w = rng.vec(n_out * n_h, -1.0, 1.0);
    let dax = rng.vec(n_h, 0.0, 1.0);
    let dsyn: Vec<f64> = (0..n_out * n_h).map(|k| dax[k % n_h]).collect();
    let mut sp = Spikes { offsets: vec![0], ..Default::default() };
    for s in 0..2 {
        for j in 0..n_h {
            for _ in 0..3 {
                sp.neuron.push(j as u32);
                sp.time.push(rng.uniform(-0.5, 5.0));
            }
            let r = sp.time.len() - 3..sp.time.len();
            sp.time[r].sort_by(f64::total_cmp);
        }
        sp.offsets.push(sp.neuron.len());
        let _ = s;
    }
    let kind = ReadoutKind::ExpMean { tau_w: 4.0 };
    let a = Readout { layer: LayerRef::new(n_out, n_h, &w, DelayKind::Axonal, &dax, "a").unwrap(), kind, t_end: 6.0 };
    let b =
        Readout { layer: LayerRef::new(n_out, n_h, &w, DelayKind::Synaptic, &dsyn, "b").unwrap(), kind, t_end: 6.0 };
    let (ya, yb) = (a.forward(&n, &sp).unwrap(), b.forward(&n, &sp).unwrap());
    for (x, y) in ya.iter().zip(&yb) {
        assert!((x - y).abs() < 1e-13, "{x} vs {y}");
    }
    let dy: Vec<f64> = (0..ya.len()).map(|k| 0.3 - 0.1 * k as f64).collect();
    let (ga, gia) = a.backward(&n, &sp, &dy).unwrap();
    let (gb, gib) = b.backward(&n, &sp, &dy).unwrap();
    for (x, y) in ga.weights.iter().zip(&gb.weights).chain(gia.iter().zip(&gib)) {
        assert!((x - y).abs() < 1e-13, "{x} vs {y}");
    }
    let gd_syn_summed: Vec<f64> = (0..n_h).map(|i| (0..n_out).map(|c| gb.delays[c * n_h + i]).sum()).collect();
    for (x, y) in ga.delays.iter().zip(&gd_syn_summed) {
        assert!((x - y).abs() < 1e-13, "{x} vs {y}");
    }
}

/// The recurrent forward pass over a long trial (its exp-free factors are re-based every 200
/// time constants) and with a delay too long for factors (every decay takes `exp`), against the
/// dense reference.
#[test]
fn recurrent_forward_matches_reference_over_long_trials_and_long_delays() {
    let mut checked = 0;
    for (seed, span, long_delay) in [(0u64, 900.0, false), (1, 900.0, false), (2, 20.0, true), (3, 20.0, true)] {
        let mut rng = Rng(700 + seed);
        let (n_in, n) = (4, 3);
        let inputs = random_inputs(&mut rng, 1, n_in, 6, span);
        let w = rng.vec(n * n_in, 0.5, 4.0);
        let mut d = rng.vec(n * n_in, 0.0, 1.0);
        if long_delay {
            d[0] = 400.0;
        }
        let rw = rng.vec(n * n, -0.8, 0.6);
        let rd = rng.vec(n * n, 0.1, 1.0);
        let m = MultiNeuron::new(Neuron::new(2.0, 1.0, 1.0).unwrap(), 0.2, f64::INFINITY).unwrap();
        let ff = LayerRef::new(n, n_in, &w, DelayKind::Synaptic, &d, "ff").unwrap();
        let rec = LayerRef::new(n, n, &rw, DelayKind::Synaptic, &rd, "rec").unwrap();
        let out = multi_network::layer_forward(&m, MultiLayer { ff, rec: Some(rec) }, &table(&inputs), 1).unwrap();
        let arr: Vec<Vec<(f64, f64)>> = (0..n)
            .map(|j| inputs.iter().map(|&(_, i, t)| (t + d[j * n_in + i as usize], w[j * n_in + i as usize])).collect())
            .collect();
        let (want, near) = reference_layer(2.0, 1.0, 1.0, 0.2, &arr, Some((&rw[..], &rd[..])));
        if near < 1e-6 {
            continue;
        }
        for (j, want_j) in want.iter().enumerate() {
            let got: Vec<f64> = (0..out.len()).filter(|&k| out.neuron[k] == j as u32).map(|k| out.time[k]).collect();
            assert_eq!(got.len(), want_j.len(), "seed {seed} neuron {j}: {got:?} vs {want_j:?}");
            for (g, r) in got.iter().zip(want_j) {
                assert!((g - r).abs() < 1e-9, "seed {seed} neuron {j}: core {g}, reference {r}");
            }
        }
        if long_delay {
            assert!(out.time.iter().any(|&t| t > 390.0), "seed {seed}: the long delay produced no late spike");
        } else {
            assert!(out.time.iter().any(|&t| t > 600.0), "seed {seed}: no spike late in the trial");
        }
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} well-conditioned cases");
}

// ---------------------------------------------------------------- binned scan (issue 14)

/// One target's arrivals `(time, weight)` sorted by time (the sorted scan's input).
fn sorted_arrivals(inputs: &[(u32, u32, f64)], w: &[f64], d: &[f64], n_in: usize, j: usize) -> Vec<(f64, f64)> {
    let mut arr: Vec<(f64, f64)> =
        inputs.iter().map(|&(_, i, t)| (t + d[j * n_in + i as usize], w[j * n_in + i as usize])).collect();
    arr.sort_by(|a, b| a.0.total_cmp(&b.0));
    arr
}

/// The binned feed-forward scan (every bin that may cross simulated exactly, crossings, resets and
/// refractory ends inside bins, the clamp spanning many bins, t_end inside a bin, negative
/// weights, arrivals at equal times) against the sorted exact scan (`multi::simulate`) on many
/// arrivals, and against the dense reference where that is well conditioned.
#[test]
fn binned_scan_matches_sorted_scan_and_reference() {
    let (n_in, n) = (40, 3);
    let (mut spikes, mut multi, mut vs_reference) = (0, 0, 0);
    for seed in 0..3u64 {
        for tm in [2.0, 4.0, 1.5, 0.7] {
            for t_ref in [0.0, 0.25, 2.0] {
                for t_end in [f64::INFINITY, 17.3] {
                    let mut rng = Rng(900 + seed);
                    let mut inputs = random_inputs(&mut rng, 1, n_in, 15, 30.0);
                    let w = rng.vec(n * n_in, -0.3, 0.6);
                    let mut d = rng.vec(n * n_in, 0.0, 3.0);
                    // Equal arrival times: channel 1 repeats some of channel 0's spikes through
                    // the same delays.
                    let copies: Vec<(u32, u32, f64)> =
                        inputs.iter().filter(|x| x.1 == 0).take(6).map(|&(s, _, t)| (s, 1, t)).collect();
                    inputs.extend(copies);
                    for j in 0..n {
                        d[j * n_in + 1] = d[j * n_in];
                    }
                    let neuron = Neuron::new(tm, 1.0, 1.0).unwrap();
                    let m = MultiNeuron::new(neuron, t_ref, t_end).unwrap();
                    let ff = LayerRef::new(n, n_in, &w, DelayKind::Synaptic, &d, "ff").unwrap();
                    let out =
                        multi_network::layer_forward(&m, MultiLayer { ff, rec: None }, &table(&inputs), 1).unwrap();
                    let arr: Vec<Vec<(f64, f64)>> = (0..n).map(|j| sorted_arrivals(&inputs, &w, &d, n_in, j)).collect();
                    let label = format!("seed {seed} tm {tm} t_ref {t_ref} t_end {t_end}");
                    let got: Vec<Vec<f64>> = (0..n)
                        .map(|j| (0..out.len()).filter(|&k| out.neuron[k] == j as u32).map(|k| out.time[k]).collect())
                        .collect();
                    for j in 0..n {
                        let mut want = Vec::new();
                        assert!(delgrad_core::multi::simulate(&m, &arr[j], &mut want));
                        assert_eq!(got[j].len(), want.len(), "{label} neuron {j}: {:?} vs {want:?}", got[j]);
                        for (g, r) in got[j].iter().zip(&want) {
                            assert!((g - r).abs() < 1e-9, "{label} neuron {j}: binned {g}, sorted {r}");
                        }
                        spikes += want.len();
                        multi += (want.len() > 1) as usize;
                    }
                    if t_end == f64::INFINITY && seed == 0 {
                        let (want, near) = reference_layer(tm, 1.0, 1.0, t_ref, &arr, None);
                        if near < 1e-6 {
                            continue;
                        }
                        for j in 0..n {
                            assert_eq!(got[j].len(), want[j].len(), "{label} neuron {j} vs reference");
                            for (g, r) in got[j].iter().zip(&want[j]) {
                                assert!((g - r).abs() < 1e-9, "{label} neuron {j}: binned {g}, reference {r}");
                            }
                        }
                        vs_reference += 1;
                    }
                }
            }
        }
    }
    assert!(spikes > 1000 && multi > 100, "too little activity: {spikes} spikes, {multi} repeat spikers");
    assert!(vs_reference >= 8, "only {vs_reference} cases against the reference");
}

/// Inputs too sparse for the bins (more bins than the cap) and spans too long for the factors take
/// the sorted scan; both against `multi::simulate`.
#[test]
fn sparse_and_long_samples_take_the_sorted_scan() {
    let (n_in, n) = (3, 2);
    let mut rng = Rng(77);
    let w = rng.vec(n * n_in, 2.5, 4.0);
    let d = rng.vec(n * n_in, 0.0, 1.0);
    let m = MultiNeuron::new(Neuron::new(2.0, 1.0, 1.0).unwrap(), 0.1, f64::INFINITY).unwrap();
    let ff = LayerRef::new(n, n_in, &w, DelayKind::Synaptic, &d, "ff").unwrap();
    // Sample 0: a burst, then one spike 500 time constants later (bins would exceed the cap);
    // sample 1: spread over 800 time constants (no factors).
    let mut inputs = vec![(0, 0, 0.0), (0, 1, 0.1), (0, 2, 0.2), (0, 0, 500.0), (0, 1, 500.1)];
    inputs.extend((0..40).map(|k| (1, (k % 3) as u32, 20.0 * k as f64 + rng.uniform(0.0, 0.3))));
    let out = multi_network::layer_forward(&m, MultiLayer { ff, rec: None }, &table(&inputs), 2).unwrap();
    let mut total = 0;
    for s in 0..2u32 {
        let sample: Vec<(u32, u32, f64)> = inputs.iter().filter(|x| x.0 == s).copied().collect();
        for j in 0..n {
            let arr = sorted_arrivals(&sample, &w, &d, n_in, j);
            let mut want = Vec::new();
            assert!(delgrad_core::multi::simulate(&m, &arr, &mut want));
            let r = out.range(s as usize);
            let got: Vec<f64> = r.filter(|&k| out.neuron[k] == j as u32).map(|k| out.time[k]).collect();
            assert_eq!(got.len(), want.len(), "sample {s} neuron {j}: {got:?} vs {want:?}");
            assert!(got.iter().zip(&want).all(|(g, r)| (g - r).abs() < 1e-9), "sample {s} neuron {j}");
            total += want.len();
        }
    }
    assert!(total > 20, "too few spikes ({total})");
}

/// Targets spread over threads within a sample give bit for bit the serial results, forward
/// and backward (three blocks of targets, the last one short), on the binned/by-channel path
/// and on the sorted one (equal time constants); with the forward pass's currents and without.
#[test]
fn target_parallel_passes_equal_serial_ones() {
    use delgrad_core::{eventprop, multi};
    let (n_in, n) = (50, 70);
    for (tm, t_ref) in [(2.0, 0.2), (2.0, 0.0), (1.0, 0.2)] {
        let mut rng = Rng(5);
        let inputs: Vec<(u32, f64)> =
            (0..400).map(|_| ((rng.next() * n_in as f64) as u32, rng.uniform(0.0, 40.0))).collect();
        let w = rng.vec(n * n_in, -0.1, 0.25);
        let d = rng.vec(n * n_in, 0.0, 5.0);
        let m = MultiNeuron::new(Neuron::new(tm, 1.0, 1.0).unwrap(), t_ref, 45.0).unwrap();
        let ff = LayerRef::new(n, n_in, &w, DelayKind::Synaptic, &d, "ff").unwrap();
        let f = multi::delay_factors(&m.neuron, &ff);
        let (mut serial, mut parallel) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
        let mut scratch = multi::Scratch::default();
        assert!(multi::layer_forward(&m, &ff, &inputs, Some(&f), (&mut serial.0, &mut serial.1), &mut scratch));
        let into = (&mut parallel.0, &mut parallel.1);
        assert!(multi::layer_forward_parallel(&m, &ff, &inputs, Some(&f), 3, into, &mut Default::default()));
        assert!(serial.0.len() > 100, "tm {tm}: too few spikes ({})", serial.0.len());
        assert_eq!(serial.1.len(), serial.0.len(), "tm {tm}: a current per spike");
        assert_eq!(serial, parallel, "tm {tm}: forward");
        let (serial, current) = serial;
        let gout = rng.vec(serial.len(), -1.0, 1.0);
        let grads = || (vec![0.0; n * n_in], vec![0.0; n * n_in], vec![0.0; inputs.len()]);
        let (mut a, mut b) = (grads(), grads());
        let mut sa = eventprop::Scratch::default();
        let ga = (&mut a.0[..], &mut a.1[..], &mut a.2[..]);
        eventprop::layer_backward(&m, &ff, &inputs, &serial, &current, &gout, Some(&f), ga, &mut sa);
        let mut sb = eventprop::Scratch::default();
        let gb = (&mut b.0[..], &mut b.1[..], &mut b.2[..]);
        eventprop::layer_backward_parallel(&m, &ff, &inputs, &serial, &current, &gout, Some(&f), gb, &mut sb);
        assert!(a.0.iter().any(|&x| x != 0.0) && a.2.iter().any(|&x| x != 0.0), "tm {tm}: no gradient");
        assert_eq!(a, b, "tm {tm}: backward");
        // Without the recorded currents (a trace read from a table) the pass sums them over the
        // arrivals: the same gradients up to rounding.
        let mut c = grads();
        let gc = (&mut c.0[..], &mut c.1[..], &mut c.2[..]);
        eventprop::layer_backward(&m, &ff, &inputs, &serial, &[], &gout, Some(&f), gc, &mut sa);
        for (what, x, y) in [("dW", &a.0, &c.0), ("dD", &a.1, &c.1), ("dt_in", &a.2, &c.2)] {
            let scale = y.iter().fold(1.0_f64, |s, v| s.max(v.abs()));
            for (k, (p, q)) in x.iter().zip(y).enumerate() {
                assert!((p - q).abs() <= 1e-9 * scale, "tm {tm} {what}[{k}]: recorded {p}, summed {q}");
            }
        }
    }
}

/// Degenerate spans on the binned scan: all arrivals at one time (no span at all), and a trial
/// that ends before the first arrival; against `multi::simulate`.
#[test]
fn binned_scan_with_simultaneous_arrivals_and_early_trial_end() {
    let (n_in, n) = (10, 2);
    let w = vec![0.45; n * n_in];
    let d = vec![0.0; n * n_in];
    let ff = LayerRef::new(n, n_in, &w, DelayKind::Synaptic, &d, "ff").unwrap();
    let inputs: Vec<(u32, u32, f64)> = (0..n_in as u32).map(|i| (0, i, 1.0)).collect();
    for (t_end, t_ref) in [(f64::INFINITY, 0.1), (f64::INFINITY, 0.0), (0.5, 0.1), (1.0, 0.0)] {
        let m = MultiNeuron::new(Neuron::new(2.0, 1.0, 1.0).unwrap(), t_ref, t_end).unwrap();
        let out = multi_network::layer_forward(&m, MultiLayer { ff, rec: None }, &table(&inputs), 1).unwrap();
        for j in 0..n {
            let mut want = Vec::new();
            assert!(delgrad_core::multi::simulate(&m, &sorted_arrivals(&inputs, &w, &d, n_in, j), &mut want));
            let got: Vec<f64> = (0..out.len()).filter(|&k| out.neuron[k] == j as u32).map(|k| out.time[k]).collect();
            assert_eq!(got.len(), want.len(), "t_end {t_end} t_ref {t_ref} neuron {j}: {got:?} vs {want:?}");
            assert!(got.iter().zip(&want).all(|(g, r)| (g - r).abs() < 1e-9), "t_end {t_end} neuron {j}");
            if t_end > 1.0 {
                assert!(want.len() >= 2, "t_end {t_end} t_ref {t_ref}: expected repeat spikes, got {want:?}");
            }
        }
    }
}

// ---------------------------------------------------------------- binned recurrent layers (issue 14)

/// One recurrent test layer: inputs (one sample), ff and rec parameters, neuron.
struct RecCase {
    inputs: Vec<(u32, u32, f64)>,
    w: Vec<f64>,
    d: Vec<f64>,
    rw: Vec<f64>,
    rd: Vec<f64>,
    m: MultiNeuron,
}

impl RecCase {
    /// `n_in` channels of 15 spikes over `span` (channel 1 repeats some of channel 0's spikes
    /// through the same delays: equal arrival times), `n` neurons; recurrent delays all 0 when
    /// `zero_rec_delays`.
    #[allow(clippy::too_many_arguments)]
    fn new(
        seed: u64,
        n_in: usize,
        n: usize,
        tm: f64,
        t_ref: f64,
        t_end: f64,
        span: f64,
        zero_rec_delays: bool,
    ) -> Self {
        let mut rng = Rng(1300 + seed);
        let mut inputs = random_inputs(&mut rng, 1, n_in, 15, span);
        let w = rng.vec(n * n_in, -0.3, 0.6);
        let mut d = rng.vec(n * n_in, 0.0, 3.0);
        let copies: Vec<(u32, u32, f64)> =
            inputs.iter().filter(|x| x.1 == 0).take(6).map(|&(s, _, t)| (s, 1, t)).collect();
        inputs.extend(copies);
        for j in 0..n {
            d[j * n_in + 1] = d[j * n_in];
        }
        let rw = rng.vec(n * n, -0.5, 0.5);
        let rd = if zero_rec_delays { vec![0.0; n * n] } else { rng.vec(n * n, 0.0, 3.0) };
        let m = MultiNeuron::new(Neuron::new(tm, 1.0, 1.0).unwrap(), t_ref, t_end).unwrap();
        Self { inputs, w, d, rw, rd, m }
    }

    fn layer(&self, n_in: usize, n: usize) -> (LayerRef<'_>, LayerRef<'_>) {
        let ff = LayerRef::new(n, n_in, &self.w, DelayKind::Synaptic, &self.d, "ff").unwrap();
        let rec = LayerRef::new(n, n, &self.rw, DelayKind::Synaptic, &self.rd, "rec").unwrap();
        (ff, rec)
    }

    fn in_spikes(&self) -> Vec<(u32, f64)> {
        self.inputs.iter().map(|&(_, i, t)| (i, t)).collect()
    }
}

/// The binned recurrent scan (windows without a possible crossing in closed form) against the
/// windowed scan that simulates every arrival, and against the dense reference where that is well
/// conditioned: crossings, resets and refractory ends inside windows, clamps over many windows,
/// `t_end` inside a window, negative weights, equal arrival times, recurrent delays of 0, tau ratios
/// 2, 4 (the polynomial solver), 1.5 and 0.7, and a trial long enough for the factors to be
/// re-based several times.
#[test]
fn recurrent_binned_scan_matches_windowed_scan_and_reference() {
    use delgrad_core::multi::RecLayer;
    use delgrad_core::recurrent::{self, RecScratch};
    let (n_in, n) = (30, 8);
    let (mut spikes, mut multi, mut vs_reference, mut late) = (0, 0, 0, 0);
    for seed in 0..2u64 {
        for tm in [2.0, 4.0, 1.5, 0.7] {
            for t_ref in [0.0, 0.25, 2.0] {
                for (t_end, span) in [(f64::INFINITY, 30.0), (17.3, 30.0), (f64::INFINITY, 600.0)] {
                    for zero_rec_delays in [false, true] {
                        let case = RecCase::new(seed, n_in, n, tm, t_ref, t_end, span, zero_rec_delays);
                        let (ff, rec) = case.layer(n_in, n);
                        let layer = RecLayer { ff, rec };
                        let factors = recurrent::rec_factors(&case.m.neuron, &layer);
                        let inputs = case.in_spikes();
                        let mut scratch = RecScratch::default();
                        let (mut binned, mut windowed) = (Vec::new(), Vec::new());
                        let (mut binned_current, mut windowed_current) = (Vec::new(), Vec::new());
                        let label =
                            format!("seed {seed} tm {tm} t_ref {t_ref} t_end {t_end} span {span} d0 {zero_rec_delays}");
                        let ok = recurrent::recurrent_forward_binned(
                            &case.m,
                            &layer,
                            &inputs,
                            &factors,
                            (&mut binned, &mut binned_current),
                            &mut scratch,
                        );
                        assert_eq!(ok, Some(true), "{label}: the binned scan did not run");
                        assert!(recurrent::recurrent_forward_windowed(
                            &case.m,
                            &layer,
                            &inputs,
                            &factors,
                            (&mut windowed, &mut windowed_current),
                            &mut scratch
                        ));
                        assert_eq!(binned.len(), windowed.len(), "{label}: spike counts");
                        assert_eq!(binned_current.len(), binned.len(), "{label}: a current per spike");
                        for (k, (b, w)) in binned_current.iter().zip(&windowed_current).enumerate() {
                            assert!((b - w).abs() < 1e-9 * w.abs().max(1.0), "{label} spike {k}: current {b} vs {w}");
                        }
                        for (b, w) in binned.iter().zip(&windowed) {
                            assert_eq!(b.0, w.0, "{label}: binned {b:?}, windowed {w:?}");
                            assert!(
                                (b.1 - w.1).abs() < 1e-9,
                                "{label} neuron {}: binned {}, windowed {}",
                                b.0,
                                b.1,
                                w.1
                            );
                        }
                        spikes += binned.len();
                        multi += (0..n as u32).filter(|&j| binned.iter().filter(|x| x.0 == j).count() > 1).count();
                        late += binned.iter().filter(|x| x.1 > 400.0).count();
                        if seed == 0 && t_end == f64::INFINITY && span == 30.0 {
                            let arr: Vec<Vec<(f64, f64)>> =
                                (0..n).map(|j| sorted_arrivals(&case.inputs, &case.w, &case.d, n_in, j)).collect();
                            let (want, near) =
                                reference_layer(tm, 1.0, 1.0, t_ref, &arr, Some((&case.rw[..], &case.rd[..])));
                            if near < 1e-6 {
                                continue;
                            }
                            for (j, want_j) in want.iter().enumerate() {
                                let got: Vec<f64> = binned.iter().filter(|x| x.0 == j as u32).map(|x| x.1).collect();
                                assert_eq!(
                                    got.len(),
                                    want_j.len(),
                                    "{label} neuron {j}: {got:?} vs reference {want_j:?}"
                                );
                                for (g, r) in got.iter().zip(want_j) {
                                    assert!((g - r).abs() < 1e-9, "{label} neuron {j}: binned {g}, reference {r}");
                                }
                            }
                            vs_reference += 1;
                        }
                    }
                }
            }
        }
    }
    assert!(spikes > 3000 && multi > 300, "too little activity: {spikes} spikes, {multi} repeat spikers");
    assert!(late > 100, "too few spikes late in the long trials ({late})");
    assert!(vs_reference >= 6, "only {vs_reference} cases against the reference");
}

/// The recurrent backward pass on the linear forms against the per-arrival one (every arrival's
/// adjoint from its own decays and kernel), on the cases of the binned forward test.
#[test]
fn recurrent_linear_backward_matches_per_arrival_backward() {
    use delgrad_core::multi::RecLayer;
    use delgrad_core::recurrent::{self, RecScratch};
    let (n_in, n) = (30, 8);
    let mut checked = 0;
    for seed in 0..2u64 {
        for tm in [2.0, 4.0, 1.5, 0.7] {
            for t_ref in [0.0, 0.25, 2.0] {
                // 300: factors re-based in the forward pass, one origin in the backward pass; 700:
                // too long for factors, so the linear forms must decline.
                for (t_end, span) in
                    [(f64::INFINITY, 30.0), (17.3, 30.0), (f64::INFINITY, 300.0), (f64::INFINITY, 700.0)]
                {
                    for zero_rec_delays in [false, true] {
                        let case = RecCase::new(seed, n_in, n, tm, t_ref, t_end, span, zero_rec_delays);
                        let (ff, rec) = case.layer(n_in, n);
                        let layer = RecLayer { ff, rec };
                        let factors = recurrent::rec_factors(&case.m.neuron, &layer);
                        let inputs = case.in_spikes();
                        let mut scratch = RecScratch::default();
                        let (mut out, mut current) = (Vec::new(), Vec::new());
                        assert!(recurrent::recurrent_forward_with(
                            &case.m,
                            &layer,
                            &inputs,
                            &factors,
                            (&mut out, &mut current),
                            &mut scratch
                        ));
                        assert_eq!(current.len(), out.len());
                        let mut rng = Rng(seed + 31);
                        let gout = rng.vec(out.len(), -1.0, 1.0);
                        let size = n * n_in + n * n;
                        let grads = || (vec![0.0; size], vec![0.0; size], vec![0.0; inputs.len()]);
                        let label =
                            format!("seed {seed} tm {tm} t_ref {t_ref} t_end {t_end} span {span} d0 {zero_rec_delays}");
                        // The reference: per arrival, currents summed over the arrivals.
                        let mut reference = grads();
                        recurrent::recurrent_backward_per_arrival(
                            &case.m,
                            &layer,
                            &inputs,
                            &out,
                            &[],
                            &gout,
                            &factors,
                            (&mut reference.0, &mut reference.1, &mut reference.2),
                            &mut scratch,
                        );
                        // Linear forms with the currents summed and as the forward pass recorded
                        // them, and per arrival with the recorded ones.
                        for (path, recorded) in [
                            ("linear", &[][..]),
                            ("linear, recorded", &current[..]),
                            ("per arrival, recorded", &current[..]),
                        ] {
                            let mut a = grads();
                            let into = (&mut a.0[..], &mut a.1[..], &mut a.2[..]);
                            if path.starts_with("per arrival") {
                                recurrent::recurrent_backward_per_arrival(
                                    &case.m,
                                    &layer,
                                    &inputs,
                                    &out,
                                    recorded,
                                    &gout,
                                    &factors,
                                    into,
                                    &mut scratch,
                                );
                            } else {
                                let took = recurrent::recurrent_backward_linear(
                                    &case.m,
                                    &layer,
                                    &inputs,
                                    &out,
                                    recorded,
                                    &gout,
                                    &factors,
                                    into,
                                    &mut scratch,
                                );
                                if span > 600.0 {
                                    assert!(
                                        !took || out.is_empty(),
                                        "{label}: the linear forms took an unfactored sample"
                                    );
                                    assert!(a.0.iter().all(|&x| x == 0.0), "{label}: a declined pass left gradients");
                                    continue;
                                }
                                assert!(took, "{label}: the linear forms were not taken");
                            }
                            for (what, x, y) in
                                [("dW", &a.0, &reference.0), ("dD", &a.1, &reference.1), ("dt_in", &a.2, &reference.2)]
                            {
                                let scale = y.iter().fold(1.0_f64, |s, v| s.max(v.abs()));
                                for (k, (p, q)) in x.iter().zip(y.iter()).enumerate() {
                                    assert!(
                                        (p - q).abs() <= 1e-9 * scale,
                                        "{label} {what}[{k}]: {path} {p}, per arrival {q}"
                                    );
                                }
                            }
                        }
                        if span > 600.0 {
                            continue;
                        }
                        checked += reference.0[n * n_in..].iter().any(|&x| x != 0.0) as usize;
                    }
                }
            }
        }
    }
    assert!(checked > 120, "only {checked} cases with a recurrent gradient");
}
