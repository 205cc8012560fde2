//! The spike-count regulariser of mlGeNN's EventProp compiler, which the SHD/SSC recipe of
//! Mészáros, Knight & Nowotny (2025) trains with, as a `dL/dt` of each hidden spike.
//!
//! mlGeNN, at each spike `t_k` of hidden neuron `j` in the backward pass, subtracts
//!
//! ```text
//! c_j = strength (N_j - nu B) / B^2      (strength_above when N_j > nu B, else strength_below)
//! ```
//!
//! from `lambda_V`, `N_j` being the neuron's spikes over the batch of `B` samples and `nu` the
//! target count per sample. Its `lambda_V` is `-dL/dV`, so this adds `c_j` to `dL/dV(t_k^-)`.
//! Just before a spike `V = theta` pins the spike's time: a change `dV` there moves the spike by
//! `-dV / V'(t_k^-)`, so adding `c` to `dL/dV(t_k^-)` is adding
//!
//! ```text
//! -c V'(t_k^-) = -c (I(t_k^-) - theta / tau_m)
//! ```
//!
//! to `dL/dt_k`. That is what this module returns, from the currents the forward pass records.
//! A count has no gradient: this is a pull on the spike times, not the gradient of a loss, and
//! it is applied only when a pipeline asks for it. Its weight gradient is `sum_k c_j
//! dV(t_k^-)/dw` with the spike times held fixed (`tests/test_spike_count.py` checks it against
//! that, from the independent reference model's closed form).
//!
//! A batch cut into shards (data-parallel training) takes each shard's mean count per sample
//! for `N_j / B`, so that every worker count gives the same bits; with one shard it is mlGeNN's.

use crate::error::{param_err, shape_err, Result};
use crate::neuron::Neuron;
use crate::spikes::Spikes;

/// The regulariser's settings: `target` spikes per neuron and sample (mlGeNN's `reg_nu_upper`),
/// and the strengths above and below it (`reg_lambda_upper`, `reg_lambda_lower`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpikeCount {
    pub target: f64,
    pub above: f64,
    pub below: f64,
}

impl SpikeCount {
    pub fn new(target: f64, above: f64, below: f64) -> Result<Self> {
        for (name, x) in [("target", target), ("strength above", above), ("strength below", below)] {
            if !(x.is_finite() && x >= 0.0) {
                return Err(param_err(format!("spike-count regulariser: {name} must be finite and >= 0, got {x}")));
            }
        }
        Ok(Self { target, above, below })
    }

    /// `dL/dt` of every spike of one layer (`n_neurons` wide), row for row, for a batch of
    /// `batch_size` samples of which `spikes` hold consecutive shards of `shards[k]` samples.
    /// `what` names the layer in errors.
    pub fn grad(
        &self,
        neuron: &Neuron,
        spikes: &Spikes,
        n_neurons: usize,
        shards: &[usize],
        batch_size: usize,
        what: &str,
    ) -> Result<Vec<f64>> {
        let ranges = crate::driver::shard_ranges(shards, spikes.n_samples())?;
        if batch_size < spikes.n_samples() {
            return Err(shape_err(format!(
                "spike-count regulariser: batch_size {batch_size} is smaller than the {} samples given",
                spikes.n_samples()
            )));
        }
        if spikes.current.len() != spikes.len() {
            return Err(param_err(format!(
                "spike-count regulariser: {what} has no recorded currents (spikes read from a table or from \
                 hardware); it needs the current at each spike, which the multi-spike forward pass records"
            )));
        }
        let mut grad = vec![0.0; spikes.len()];
        let mut counts = vec![0usize; n_neurons];
        let mut pull = vec![0.0; n_neurons];
        let slope_offset = neuron.theta / neuron.tau_m;
        for shard in ranges {
            let rows = spikes.offsets[shard.start]..spikes.offsets[shard.end];
            counts.iter_mut().for_each(|c| *c = 0);
            for &j in &spikes.neuron[rows.clone()] {
                let Some(count) = counts.get_mut(j as usize) else {
                    return Err(shape_err(format!(
                        "spike-count regulariser: {what} has a spike of neuron {j}, beyond its {n_neurons} neurons"
                    )));
                };
                *count += 1;
            }
            let n = shard.len().max(1) as f64;
            for (c, &count) in pull.iter_mut().zip(&counts) {
                let excess = count as f64 / n - self.target;
                let strength = if excess > 0.0 { self.above } else { self.below };
                *c = strength * excess / batch_size as f64;
            }
            for k in rows {
                grad[k] = -pull[spikes.neuron[k] as usize] * (spikes.current[k] - slope_offset);
            }
        }
        Ok(grad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spikes(per_sample: &[&[(u32, f64, f64)]]) -> Spikes {
        let mut s = Spikes { offsets: vec![0], ..Default::default() };
        for sample in per_sample {
            for &(j, t, i) in *sample {
                s.neuron.push(j);
                s.time.push(t);
                s.current.push(i);
            }
            s.offsets.push(s.neuron.len());
        }
        s
    }

    #[test]
    fn mlgenn_s_jump_as_a_pull_on_the_spike_times() {
        let n = Neuron::new(20.0, 5.0, 1.0).unwrap();
        // Neuron 0 fires 3 times over 2 samples (1.5 per sample), neuron 1 once (0.5).
        let sp = spikes(&[&[(0, 1.0, 0.2), (0, 2.0, 0.3), (1, 3.0, 0.1)], &[(0, 4.0, 0.4)]]);
        let reg = SpikeCount::new(1.0, 2.0, 3.0).unwrap();
        let g = reg.grad(&n, &sp, 2, &[2], 4, "hidden").unwrap();
        // c = strength (N / n - nu) / B: the shard's mean count (n = 2 samples: 1.5 and 0.5),
        // the whole batch's size (B = 4; these 2 samples are part of it).
        let c0 = 2.0 * (1.5 - 1.0) / 4.0;
        let c1 = 3.0 * (0.5 - 1.0) / 4.0;
        let want = [-c0 * (0.2 - 0.05), -c0 * (0.3 - 0.05), -c1 * (0.1 - 0.05), -c0 * (0.4 - 0.05)];
        for (a, b) in g.iter().zip(want) {
            assert!((a - b).abs() < 1e-15, "{a} vs {b}");
        }
        // Too many spikes pull them later (dL/dt < 0 where V rises), too few earlier.
        assert!(g[0] < 0.0 && g[2] > 0.0);
    }

    #[test]
    fn shards_take_their_own_mean_counts() {
        let n = Neuron::new(20.0, 5.0, 1.0).unwrap();
        let sp = spikes(&[&[(0, 1.0, 0.2), (0, 2.0, 0.3)], &[]]);
        let reg = SpikeCount::new(0.5, 1.0, 1.0).unwrap();
        let whole = reg.grad(&n, &sp, 1, &[2], 2, "hidden").unwrap();
        let split = reg.grad(&n, &sp, 1, &[1, 1], 2, "hidden").unwrap();
        // One shard: mean 1 per sample; the first alone: 2 per sample.
        assert!((whole[0] - -(1.0 - 0.5) / 2.0 * 0.15).abs() < 1e-15);
        assert!((split[0] - -(2.0 - 0.5) / 2.0 * 0.15).abs() < 1e-15);
    }

    #[test]
    fn bad_settings_and_missing_currents_are_errors_that_say_so() {
        let n = Neuron::new(20.0, 5.0, 1.0).unwrap();
        assert!(SpikeCount::new(f64::NAN, 1.0, 1.0).unwrap_err().to_string().contains("target"));
        assert!(SpikeCount::new(1.0, -1.0, 1.0).unwrap_err().to_string().contains("strength above"));
        let mut sp = spikes(&[&[(0, 1.0, 0.2)]]);
        sp.current.clear();
        let reg = SpikeCount::new(1.0, 1.0, 1.0).unwrap();
        let e = reg.grad(&n, &sp, 1, &[1], 1, "layer 0 spikes").unwrap_err().to_string();
        assert!(e.contains("layer 0 spikes") && e.contains("recorded currents"), "{e}");
        let sp = spikes(&[&[(0, 1.0, 0.2)]]);
        assert!(reg.grad(&n, &sp, 1, &[2], 2, "x").is_err(), "shards must cover the samples");
        assert!(reg.grad(&n, &sp, 1, &[1], 0, "x").unwrap_err().to_string().contains("batch_size"));
        assert!(reg.grad(&n, &sp, 0, &[1], 1, "x").unwrap_err().to_string().contains("neuron 0"));
    }
}
