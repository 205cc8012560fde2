//! delgrad-core: exact, event-based spike times and gradients for spiking neural networks.
//!
//! Pure Rust, no Python. Where to find things:
//! - [`neuron`]: the model (`dV/dt = -V/tau_m + I`, `dI/dt = -I/tau_s`), its PSP kernel and
//!   closed-form free evolution;
//! - [`solver`]: the spike-time solver (Lambert W, quadratic, bracketed Newton);
//! - [`ttfs`]: time-to-first-spike layers for one sample, forward scan and IFT gradients;
//! - [`layer`]: weights and the three delay parametrisations;
//! - [`driver`]: the one batch driver (chunks over samples, rayon, deterministic joins and
//!   reductions) and the per-sample [`driver::Kernel`] trait every layer kind implements;
//! - [`cancel`]: cooperative cancellation of long calls (Ctrl-C from Python);
//! - [`batch`]: input spike sets and the batches selected from them;
//! - [`network`]: feed-forward TTFS networks (TTFS kernels on the driver);
//! - [`model`]: the neuron model by mode (`ttfs`, `multi`) and the calls that dispatch on it;
//! - [`spikes`]: Arrow spike tables in, grouped spikes out;
//! - [`multi`]: multi-spike LIF (reset, refractory) forward simulation, feed-forward and recurrent;
//! - [`binned`]: the feed-forward multi-spike scan over time bins (no sorted arrivals);
//! - [`eventprop`]: the EventProp adjoint backward pass with delay gradients;
//! - [`recurrent`]: recurrent multi-spike layers in time windows with per-target pending arrivals;
//! - [`adjoint`]: the EventProp adjoint as a piecewise closed form over a neuron's own events;
//! - [`readout`]: the leaky-integrator readout (max / exponentially weighted mean voltage);
//! - [`multi_network`]: multi-spike networks over whole batches;
//! - [`frames`]: spike tables as Arrow IPC streams (the hardware protocol's body frames);
//! - [`chip`]: a neuromorphic chip's input/output stage (event clock, window, replication);
//! - [`potential`]: a neuron's membrane potential at chosen times from its events (for plots).

// `!(x > 0.0)` is meant: it is also true for NaN, which must take the "no spike" path.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

pub mod adjoint;
pub mod batch;
pub mod binned;
pub mod cancel;
pub mod chip;
pub mod driver;
pub mod error;
pub mod eventprop;
pub mod frames;
pub mod layer;
pub mod loss;
pub mod model;
pub mod multi;
pub mod multi_network;
pub mod network;
pub mod neuron;
pub mod potential;
pub mod readout;
pub mod recurrent;
mod recurrent_binned;
mod recurrent_linear;
pub mod solver;
pub mod spike_count;
pub mod spikes;
pub mod ttfs;

pub use batch::{Input, SpikeSet};
pub use cancel::Cancel;
pub use error::{Error, FrameCode, Result};
pub use layer::{DelayKind, LayerGrad, LayerRef};
pub use model::Model;
pub use multi::MultiNeuron;
pub use multi_network::{MultiGrad, MultiLayer, MultiNetwork};
pub use network::{NetGrad, Network};
pub use neuron::Neuron;
pub use readout::{Readout, ReadoutKind};
pub use spike_count::SpikeCount;
pub use spikes::{SpikeTable, Spikes};

/// Forward pass of a single TTFS layer: the output spikes of every sample.
pub fn layer_forward(neuron: &Neuron, layer: LayerRef, input: &SpikeTable, n_samples: usize) -> Result<Spikes> {
    Model::Ttfs(*neuron).layer_forward(layer, input, n_samples, &Cancel::new())
}

/// Backward pass of a single TTFS layer. `out` are the layer's output spikes (any row order)
/// and `grad[k]` is `dL/dt` of row `k` of `out`. Returns the parameter gradients and `dL/dt` of
/// each row of `input`.
pub fn layer_backward(
    neuron: &Neuron,
    layer: LayerRef,
    input: &SpikeTable,
    n_samples: usize,
    out: &SpikeTable,
    grad: &[f64],
) -> Result<(LayerGrad, Vec<f64>)> {
    Model::Ttfs(*neuron).layer_backward(layer, input, n_samples, out, grad, &Cancel::new())
}
