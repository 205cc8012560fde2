//! delgrad-core: exact, event-based spike times and gradients for spiking neural networks.
//!
//! Pure Rust, no Python. Where to find things:
//! - [`neuron`]: the model (`dV/dt = -V/tau_m + I`, `dI/dt = -I/tau_s`), its PSP kernel and
//!   closed-form free evolution;
//! - [`solver`]: the spike-time solver (Lambert W, quadratic, bracketed Newton);
//! - [`ttfs`]: time-to-first-spike layers for one sample, forward scan and IFT gradients;
//! - [`layer`]: weights and the three delay parametrisations;
//! - [`network`]: feed-forward networks over whole batches, parallel over samples;
//! - [`spikes`]: Arrow spike tables in, grouped spikes out;
//! - [`multi`]: multi-spike LIF (reset, refractory) forward simulation, feed-forward and recurrent;
//! - [`eventprop`]: the EventProp adjoint backward pass with delay gradients;
//! - [`readout`]: the leaky-integrator readout (max / exponentially weighted mean voltage);
//! - [`multi_network`]: multi-spike networks over whole batches;
//! - [`frames`]: spike tables as Arrow IPC streams (the hardware protocol's body frames);
//! - [`chip`]: a neuromorphic chip's input/output stage (event clock, window, replication).

// `!(x > 0.0)` is meant: it is also true for NaN, which must take the "no spike" path.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

pub mod adjoint;
pub mod chip;
pub mod error;
pub mod eventprop;
pub mod frames;
pub mod layer;
pub mod loss;
pub mod multi;
pub mod multi_network;
pub mod network;
pub mod neuron;
pub mod readout;
pub mod recurrent;
pub mod solver;
pub mod spikes;
pub mod ttfs;

pub use error::{Error, FrameCode, Result};
pub use layer::{DelayKind, LayerGrad, LayerRef};
pub use multi::MultiNeuron;
pub use multi_network::{MultiGrad, MultiLayer, MultiNetwork};
pub use network::{Input, NetGrad, Network, SpikeSet};
pub use neuron::Neuron;
pub use readout::{Readout, ReadoutKind};
pub use spikes::{SpikeTable, Spikes};

/// Forward pass of a single layer: the output spikes of every sample.
pub fn layer_forward(neuron: &Neuron, layer: LayerRef, input: &SpikeTable, n_samples: usize) -> Result<Spikes> {
    let net = Network::new(*neuron, vec![layer])?;
    Ok(net.forward_table(input, n_samples)?.pop().expect("one layer"))
}

/// Backward pass of a single layer. `out` are the layer's output spikes (any row order) and
/// `grad[k]` is `dL/dt` of row `k` of `out`. Returns the parameter gradients and `dL/dt` of each
/// row of `input`.
pub fn layer_backward(
    neuron: &Neuron,
    layer: LayerRef,
    input: &SpikeTable,
    n_samples: usize,
    out: &SpikeTable,
    grad: &[f64],
) -> Result<(LayerGrad, Vec<f64>)> {
    if grad.len() != out.len() {
        return Err(error::shape_err(format!(
            "layer_backward: grad has {} entries but out has {} rows",
            grad.len(),
            out.len()
        )));
    }
    out.validate("out", n_samples, layer.n_out)?;
    // Checked here, before reordering, so that a message names the caller's row.
    if let Some(k) = grad.iter().position(|g| !g.is_finite()) {
        return Err(error::spikes_err(format!("grad: entry {k} (row {k} of out) is {} (must be finite)", grad[k])));
    }
    let (spikes, perm) = Spikes::from_table(out, n_samples);
    let grad_sorted: Vec<f64> = perm.iter().map(|&r| grad[r]).collect();
    let net = Network::new(*neuron, vec![layer])?;
    let mut g = net.backward_table(input, n_samples, &[spikes], &grad_sorted)?;
    Ok((g.layers.pop().expect("one layer"), g.inputs))
}
