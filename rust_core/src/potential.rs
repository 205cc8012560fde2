//! The membrane potential `V(t)` of one neuron at chosen times, exactly, from its events: the
//! arrivals `(time, weight)` of its input spikes (source time plus the synapse's effective delay)
//! and, for a multi-spike neuron, its own spike times (each resets `V` to 0 and clamps it there
//! for `t_ref`). No time grid: between events the state `(V, I)` evolves in closed form
//! ([`Neuron::evolve`]); at an arrival `I` jumps by the weight.
//!
//! This is for looking at a network (`delgrad inspect`), not for training: the passes never need
//! `V`. Spikes are inputs here, not outputs: the potential is what the recorded spikes imply, so
//! that a plot shows `V` reaching `theta` exactly where the network spiked.
//!
//! `V` is left-continuous: at a spike time it is the value just before the reset (`theta` for a
//! spike the engine produced), and 0 just after.

use crate::error::{param_err, shape_err, spikes_err, Result};
use crate::layer::LayerRef;
use crate::neuron::Neuron;
use crate::ttfs::In;

/// Appends the arrivals at neuron `target` of `layer` caused by the source spikes `sources`
/// (`(source neuron, time)`): `(time + d_target,source, w_target,source)`; synapses of weight 0
/// carry nothing and are left out. `what` names the connection in messages.
pub fn arrivals_into(
    layer: &LayerRef,
    target: usize,
    sources: &[In],
    what: &str,
    out: &mut Vec<(f64, f64)>,
) -> Result<()> {
    if target >= layer.n_out {
        return Err(shape_err(format!(
            "{what}: target neuron {target} is out of range (the layer has {})",
            layer.n_out
        )));
    }
    for (row, &(i, t)) in sources.iter().enumerate() {
        let i = i as usize;
        if i >= layer.n_in {
            return Err(spikes_err(format!(
                "{what}: source spike {row} comes from neuron {i}, but the layer has {} inputs",
                layer.n_in
            )));
        }
        if !t.is_finite() {
            return Err(spikes_err(format!("{what}: source spike {row} has time {t} (must be finite)")));
        }
        let w = layer.weight(target, i);
        if w != 0.0 {
            out.push((t + layer.delay(target, i), w));
        }
    }
    Ok(())
}

/// `V` at each of `times` (any order; the result is aligned with it) for a neuron at rest before
/// its first arrival, driven by `arrivals` `(time, weight)` (any order; sorted by time on return)
/// and reset by `resets` (its own spike times, any order; empty for a TTFS neuron or a
/// leaky-integrator readout, which never reset), with `V` held at 0 for `t_ref` after each reset.
pub fn potential(
    n: &Neuron,
    arrivals: &mut [(f64, f64)],
    resets: &[f64],
    t_ref: f64,
    times: &[f64],
) -> Result<Vec<f64>> {
    if !(t_ref.is_finite() && t_ref >= 0.0) {
        return Err(param_err(format!("potential: t_ref must be finite and >= 0, got {t_ref}")));
    }
    if let Some(k) = arrivals.iter().position(|(a, w)| !(a.is_finite() && w.is_finite())) {
        let (a, w) = arrivals[k];
        return Err(spikes_err(format!("potential: arrival {k} is (time {a}, weight {w}); both must be finite")));
    }
    if let Some(k) = resets.iter().position(|t| !t.is_finite()) {
        return Err(spikes_err(format!("potential: spike {k} has time {} (must be finite)", resets[k])));
    }
    if let Some(k) = times.iter().position(|t| !t.is_finite()) {
        return Err(param_err(format!("potential: time {k} is {} (must be finite)", times[k])));
    }
    arrivals.sort_by(|a, b| a.0.total_cmp(&b.0));
    // One time-ordered list of events; at equal times the order does not matter (an arrival
    // changes only I, a reset only V).
    let mut events: Vec<(f64, Event)> = arrivals.iter().map(|&(a, w)| (a, Event::Arrival(w))).collect();
    events.extend(resets.iter().map(|&t| (t, Event::Reset)));
    events.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    let mut order: Vec<usize> = (0..times.len()).collect();
    order.sort_unstable_by(|&a, &b| times[a].total_cmp(&times[b]));

    let mut out = vec![0.0; times.len()];
    let mut state = State { t: f64::NEG_INFINITY, v: 0.0, i: 0.0, clamp_end: f64::NEG_INFINITY };
    let mut next = 0;
    for k in order {
        let t = times[k];
        // Events strictly before t: V is left-continuous at a reset at t.
        while next < events.len() && events[next].0 < t {
            let (te, event) = events[next];
            state.advance(n, te);
            match event {
                Event::Arrival(w) => state.i += w,
                Event::Reset => {
                    state.v = 0.0;
                    state.clamp_end = te + t_ref;
                }
            }
            next += 1;
        }
        out[k] = state.at(n, t).0;
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy)]
enum Event {
    Arrival(f64),
    Reset,
}

/// `(V, I)` at time `t` (after every event up to `t`), and the end of the current clamp.
#[derive(Debug, Clone, Copy)]
struct State {
    t: f64,
    v: f64,
    i: f64,
    clamp_end: f64,
}

impl State {
    /// `(V, I)` at `to >= t` without further events: clamped at `V = 0` until `clamp_end`
    /// (`I` decays meanwhile), free evolution after.
    fn at(&self, n: &Neuron, to: f64) -> (f64, f64) {
        if self.t == f64::NEG_INFINITY || to <= self.t {
            return (self.v, self.i);
        }
        if self.clamp_end > self.t {
            let decay_i = |s: f64| self.i * (-s / n.tau_s).exp();
            if to <= self.clamp_end {
                return (0.0, decay_i(to - self.t));
            }
            return n.evolve(0.0, decay_i(self.clamp_end - self.t), to - self.clamp_end);
        }
        n.evolve(self.v, self.i, to - self.t)
    }

    fn advance(&mut self, n: &Neuron, to: f64) {
        (self.v, self.i) = self.at(n, to);
        self.t = to;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::DelayKind;

    #[test]
    fn superposition_without_resets() {
        let n = Neuron::new(2.0, 1.0, 1.0).unwrap();
        let mut arr = [(0.5, 1.2), (0.1, -0.3), (1.7, 0.8)];
        let times = [3.0, -1.0, 0.1, 0.5, 1.0, 2.5];
        let v = potential(&n, &mut arr, &[], 0.0, &times).unwrap();
        assert_eq!(arr[0], (0.1, -0.3), "sorted by time on return");
        for (t, got) in times.iter().zip(&v) {
            let want: f64 = arr.iter().map(|&(a, w)| w * n.kernel(t - a)).sum();
            assert!((got - want).abs() < 1e-14, "t {t}: {got} vs {want}");
        }
    }

    #[test]
    fn reset_and_clamp() {
        let n = Neuron::new(2.0, 1.0, 1.0).unwrap();
        let v = potential(&n, &mut [(0.0, 3.0)], &[1.0], 0.5, &[1.0, 1.2, 1.5, 2.0]).unwrap();
        assert!(v[0] > 0.0, "left limit at the reset keeps the pre-reset value");
        assert_eq!(&v[1..3], &[0.0, 0.0]);
        let i_15 = 3.0 * (-1.5_f64).exp();
        assert!((v[3] - i_15 * n.kernel(0.5)).abs() < 1e-14);
    }

    #[test]
    fn delays_per_kind_and_errors() {
        let w = [1.0, 2.0, 0.0, 4.0];
        let d = [0.5, 0.25];
        let axonal = LayerRef::new(2, 2, &w, DelayKind::Axonal, &d, "l").unwrap();
        let dendritic = LayerRef::new(2, 2, &w, DelayKind::Dendritic, &d, "l").unwrap();
        let mut out = Vec::new();
        arrivals_into(&axonal, 0, &[(0, 1.0), (1, 2.0)], "c", &mut out).unwrap();
        assert_eq!(out, vec![(1.5, 1.0), (2.25, 2.0)]);
        out.clear();
        arrivals_into(&dendritic, 1, &[(0, 1.0), (1, 2.0)], "c", &mut out).unwrap();
        assert_eq!(out, vec![(2.25, 4.0)], "weight 0 carries nothing");
        assert!(arrivals_into(&axonal, 2, &[], "c", &mut out).is_err());
        assert!(arrivals_into(&axonal, 0, &[(2, 1.0)], "c", &mut out).is_err());
        assert!(potential(&Neuron::new(2.0, 1.0, 1.0).unwrap(), &mut [(f64::NAN, 1.0)], &[], 0.0, &[0.0]).is_err());
    }

    /// Arrivals of a small pseudo-random drive (a fixed LCG, no dependency).
    fn drive(seed: u64, count: usize) -> Vec<(f64, f64)> {
        let mut x = seed;
        let mut uniform = move || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 11) as f64 / (1u64 << 53) as f64
        };
        (0..count).map(|_| (10.0 * uniform(), 1.6 * uniform() - 0.3)).collect()
    }

    #[test]
    fn theta_at_every_spike_of_the_engines() {
        for (tau_m, tau_s) in [(2.0, 1.0), (1.0, 1.0), (1.5, 1.0)] {
            let n = Neuron::new(tau_m, tau_s, 1.0).unwrap();
            for seed in 0..20 {
                let mut arr = drive(seed, 30);
                arr.sort_by(|a, b| a.0.total_cmp(&b.0));
                // Multi-spike: V reaches theta at every spike and stays below it in between.
                let m = crate::multi::MultiNeuron::new(n, 0.2, f64::INFINITY).unwrap();
                let mut spikes = Vec::new();
                assert!(crate::multi::simulate(&m, &arr, &mut spikes));
                let at = potential(&n, &mut arr, &spikes, m.t_ref, &spikes).unwrap();
                for (t, v) in spikes.iter().zip(&at) {
                    assert!((v - 1.0).abs() < 1e-9, "tau_m {tau_m} seed {seed}: V({t}) = {v}");
                }
                let grid: Vec<f64> = (0..4000).map(|k| k as f64 * 5e-3).collect();
                let v = potential(&n, &mut arr, &spikes, m.t_ref, &grid).unwrap();
                assert!(v.iter().all(|&v| v < 1.0 + 1e-9), "a crossing the engine did not produce");
                // TTFS: the first crossing, no reset.
                let with_tag: Vec<(f64, f64, ())> = arr.iter().map(|&(a, w)| (a, w, ())).collect();
                if let Some(t) = crate::ttfs::first_spike(&n, &with_tag) {
                    let v = potential(&n, &mut arr, &[], 0.0, &[t]).unwrap()[0];
                    assert!((v - 1.0).abs() < 1e-9, "TTFS tau_m {tau_m} seed {seed}: V({t}) = {v}");
                }
            }
        }
    }
}
