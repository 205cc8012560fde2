//! The neuron model as a caller names it (`mode = "ttfs"` or `"multi"`), and the calls that
//! depend on the mode: single layers on spike tables and recorded spikes.

use crate::cancel::Cancel;
use crate::error::{param_err, shape_err, spikes_err, Result};
use crate::layer::{LayerGrad, LayerRef};
use crate::multi::MultiNeuron;
use crate::multi_network::{check_multi_spikes, MultiLayer, MultiNetwork};
use crate::network::{check_spikes, Network};
use crate::neuron::Neuron;
use crate::spikes::{SpikeTable, Spikes};

/// A neuron with its mode: time-to-first-spike (DelGrad) or multi-spike with reset (EventProp).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Model {
    Ttfs(Neuron),
    Multi(MultiNeuron),
}

/// The modes by name.
pub const MODES: [&str; 2] = ["ttfs", "multi"];

/// `Ok` for a mode's name; an error naming `what` otherwise.
pub fn check_mode(what: &str, mode: &str) -> Result<()> {
    if MODES.contains(&mode) {
        Ok(())
    } else {
        Err(unknown_mode(what, mode))
    }
}

fn unknown_mode(what: &str, mode: &str) -> crate::Error {
    param_err(format!("{what}: unknown mode '{mode}' (available: 'ttfs', 'multi')"))
}

impl Model {
    /// `mode` `"ttfs"` (then `t_ref = 0` and `t_end = inf`, a TTFS neuron spikes once) or
    /// `"multi"` (refractory time `t_ref`, trial end `t_end`).
    pub fn new(neuron: Neuron, mode: &str, t_ref: f64, t_end: f64) -> Result<Self> {
        match mode {
            "ttfs" => {
                if t_ref != 0.0 || t_end != f64::INFINITY {
                    return Err(param_err(
                        "neuron: t_ref and t_end belong to mode='multi' (a TTFS neuron spikes once)",
                    ));
                }
                Ok(Self::Ttfs(neuron))
            }
            "multi" => Ok(Self::Multi(MultiNeuron::new(neuron, t_ref, t_end)?)),
            _ => Err(unknown_mode("neuron", mode)),
        }
    }

    pub fn neuron(&self) -> &Neuron {
        match self {
            Self::Ttfs(n) => n,
            Self::Multi(m) => &m.neuron,
        }
    }

    pub fn mode(&self) -> &'static str {
        match self {
            Self::Ttfs(_) => "ttfs",
            Self::Multi(_) => "multi",
        }
    }

    pub fn t_ref(&self) -> f64 {
        match self {
            Self::Ttfs(_) => 0.0,
            Self::Multi(m) => m.t_ref,
        }
    }

    pub fn t_end(&self) -> f64 {
        match self {
            Self::Ttfs(_) => f64::INFINITY,
            Self::Multi(m) => m.t_end,
        }
    }

    /// The TTFS neuron, or an error naming the call `what` for a multi-spike neuron.
    pub fn ttfs(&self, what: &str) -> Result<Neuron> {
        match self {
            Self::Ttfs(n) => Ok(*n),
            Self::Multi(_) => Err(param_err(format!(
                "{what}: this call is for TTFS networks; for mode='multi' use multi_network_forward / \
                 multi_network_backward"
            ))),
        }
    }

    /// The multi-spike neuron, or an error naming the call `what` for a TTFS neuron.
    pub fn multi(&self, what: &str) -> Result<MultiNeuron> {
        match self {
            Self::Multi(m) => Ok(*m),
            Self::Ttfs(_) => Err(param_err(format!("{what}: the neuron must have mode='multi'"))),
        }
    }

    /// Forward pass of one layer: the output spikes of every sample of `input`.
    pub fn layer_forward(
        &self,
        layer: LayerRef,
        input: &SpikeTable,
        n_samples: usize,
        cancel: &Cancel,
    ) -> Result<Spikes> {
        let mut out = match self {
            Self::Ttfs(n) => Network::new(*n, vec![layer])?.forward_table_with(input, n_samples, cancel)?,
            Self::Multi(m) => MultiNetwork::new(*m, vec![MultiLayer { ff: layer, rec: None }])?
                .forward_table_with(input, n_samples, cancel)?,
        };
        Ok(out.pop().expect("one layer"))
    }

    /// Backward pass of one layer. `out` are the layer's output spikes (any row order) and
    /// `grad[k]` is `dL/dt` of row `k` of `out`. Returns the parameter gradients and `dL/dt`
    /// of each row of `input`.
    pub fn layer_backward(
        &self,
        layer: LayerRef,
        input: &SpikeTable,
        n_samples: usize,
        out: &SpikeTable,
        grad: &[f64],
        cancel: &Cancel,
    ) -> Result<(LayerGrad, Vec<f64>)> {
        let (spikes, grad) = sorted_output(out, grad, n_samples, layer.n_out)?;
        match self {
            Self::Ttfs(n) => {
                let mut g =
                    Network::new(*n, vec![layer])?.backward_table_with(input, n_samples, &[spikes], &grad, cancel)?;
                Ok((g.layers.pop().expect("one layer"), g.inputs))
            }
            Self::Multi(m) => {
                let net = MultiNetwork::new(*m, vec![MultiLayer { ff: layer, rec: None }])?;
                let mut g = net.backward_table_with(input, n_samples, &[spikes], &grad, cancel)?;
                Ok((g.layers.pop().expect("one layer"), g.inputs))
            }
        }
    }
}

/// A layer's output table in the grouped, sorted form of the backward pass, with its gradient
/// rows reordered alike. Checked first, so that a message names the caller's row.
pub(crate) fn sorted_output(
    out: &SpikeTable,
    grad: &[f64],
    n_samples: usize,
    n_out: usize,
) -> Result<(Spikes, Vec<f64>)> {
    if grad.len() != out.len() {
        return Err(shape_err(format!(
            "layer_backward: grad has {} entries but out has {} rows",
            grad.len(),
            out.len()
        )));
    }
    out.validate("out", n_samples, n_out)?;
    if let Some(k) = grad.iter().position(|g| !g.is_finite()) {
        return Err(spikes_err(format!("grad: entry {k} (row {k} of out) is {} (must be finite)", grad[k])));
    }
    let (spikes, perm) = Spikes::from_table(out, n_samples)?;
    Ok((spikes, perm.iter().map(|&r| grad[r]).collect()))
}

/// Spikes of one layer recorded elsewhere (hardware), checked as the backward pass of `mode`
/// needs them: ids below `n_neurons`, finite times, and for TTFS one spike per neuron.
pub fn recorded_spikes(
    table: &SpikeTable,
    n_samples: usize,
    n_neurons: usize,
    mode: &str,
    what: &str,
) -> Result<Spikes> {
    check_mode(what, mode)?;
    table.validate(what, n_samples, n_neurons)?;
    let (spikes, _) = Spikes::from_table(table, n_samples)?;
    if mode == "multi" {
        check_multi_spikes(&spikes, n_samples, n_neurons, what)?;
    } else {
        check_spikes(&spikes, n_samples, n_neurons, what)?;
    }
    Ok(spikes)
}
