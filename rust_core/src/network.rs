//! Feed-forward TTFS networks over whole batches: a stack of [`TtfsKernel`]s run by the batch
//! driver ([`crate::driver`]).

use crate::batch::Input;
pub use crate::batch::SpikeSet;
use crate::cancel::Cancel;
use crate::driver::{self, ChunkPolicy, Kernel};
use crate::error::{param_err, shape_err, spikes_err, Result};
use crate::layer::{LayerGrad, LayerRef};
use crate::neuron::Neuron;
use crate::spikes::{SpikeTable, Spikes};
use crate::ttfs::{self, In, Scratch};

#[derive(Debug, Clone)]
pub struct Network<'a> {
    pub neuron: Neuron,
    pub layers: Vec<LayerRef<'a>>,
    /// Floor on `V'(T)` in the gradient formulas. Exact spike times never go below it except at
    /// a tangency; recorded (hardware) times can sit where the host's model has `V' <= 0`, and
    /// a larger floor bounds what those spikes contribute.
    pub min_slope: f64,
}

/// Gradients of a loss for every layer and for every input spike row.
#[derive(Debug, Clone, PartialEq)]
pub struct NetGrad {
    pub layers: Vec<LayerGrad>,
    /// `dL/dt` of each row of the input table, in the table's row order.
    pub inputs: Vec<f64>,
}

/// One TTFS layer as a per-sample kernel: the layer, its neuron, and what the scan needs once
/// per batch.
pub struct TtfsKernel<'a> {
    neuron: Neuron,
    layer: LayerRef<'a>,
    prepared: ttfs::Prepared,
    min_slope: f64,
}

impl<'a> TtfsKernel<'a> {
    pub fn new(neuron: &Neuron, layer: LayerRef<'a>, min_slope: f64) -> Self {
        Self { neuron: *neuron, layer, prepared: ttfs::prepare(neuron, &layer), min_slope }
    }
}

impl Kernel for TtfsKernel<'_> {
    type Scratch = Scratch;
    type Grad = LayerGrad;

    fn grad_len(&self) -> usize {
        self.layer.n_out * self.layer.n_in
    }

    fn forward(&self, inputs: &[In], out: &mut Vec<In>, _current: &mut Vec<f64>, scratch: &mut Scratch) -> bool {
        ttfs::layer_forward(&self.neuron, &self.layer, inputs, &self.prepared, out, scratch);
        true
    }

    fn backward(
        &self,
        inputs: &[In],
        outputs: &[In],
        _current: &[f64],
        grad_out: &[f64],
        grads: (&mut [f64], &mut [f64], &mut [f64]),
        scratch: &mut Scratch,
    ) {
        let factors = self.prepared.factors.as_ref();
        ttfs::layer_backward(
            &self.neuron,
            &self.layer,
            inputs,
            outputs,
            grad_out,
            factors,
            self.min_slope,
            grads,
            scratch,
        );
    }

    fn finish(&self, weights: Vec<f64>, delays: Vec<f64>) -> LayerGrad {
        LayerGrad { weights, delays: self.layer.reduce_delay_grad(&delays) }
    }
}

impl<'a> Network<'a> {
    pub fn new(neuron: Neuron, layers: Vec<LayerRef<'a>>) -> Result<Self> {
        if layers.is_empty() {
            return Err(shape_err("network: needs at least one layer"));
        }
        for (l, w) in layers.windows(2).enumerate() {
            if w[1].n_in != w[0].n_out {
                return Err(shape_err(format!(
                    "network: layer {} has n_in = {} but layer {l} has n_out = {}",
                    l + 1,
                    w[1].n_in,
                    w[0].n_out
                )));
            }
        }
        Ok(Self { neuron, layers, min_slope: ttfs::SLOPE_FLOOR })
    }

    /// Sets the floor on `V'(T)` used by `backward` (see the field).
    pub fn with_min_slope(mut self, min_slope: f64) -> Result<Self> {
        if !(min_slope.is_finite() && min_slope > 0.0) {
            return Err(param_err(format!("min_slope must be finite and > 0, got {min_slope}")));
        }
        self.min_slope = min_slope;
        Ok(self)
    }

    pub fn n_in(&self) -> usize {
        self.layers[0].n_in
    }

    fn check_input(&self, input: &Input) -> Result<()> {
        // Per-row ids were checked when the set was built; only the width is network-specific,
        // and the set knows its largest id, so the rows are only scanned to name the culprit.
        let n_in = self.n_in();
        if input.n_channels <= n_in {
            return Ok(());
        }
        let t = input.table;
        if let Some(r) = t.neuron().iter().position(|&j| j as usize >= n_in) {
            return Err(spikes_err(format!(
                "spikes: neuron id {} at row {r} is out of range (the network has {n_in} inputs)",
                t.neuron()[r]
            )));
        }
        Ok(())
    }

    /// Spikes of every layer for every sample of a table.
    pub fn forward_table(&self, table: &SpikeTable, n_samples: usize) -> Result<Vec<Spikes>> {
        self.forward_table_with(table, n_samples, &Cancel::new())
    }

    pub fn forward_table_with(&self, table: &SpikeTable, n_samples: usize, cancel: &Cancel) -> Result<Vec<Spikes>> {
        let set = SpikeSet::new(table.clone(), n_samples)?;
        self.forward_with(&set.input(None)?, cancel)
    }

    /// Gradients for a table of input spikes; see [`Network::backward`].
    pub fn backward_table(
        &self,
        table: &SpikeTable,
        n_samples: usize,
        spikes: &[Spikes],
        grad_out: &[f64],
    ) -> Result<NetGrad> {
        self.backward_table_with(table, n_samples, spikes, grad_out, &Cancel::new())
    }

    pub fn backward_table_with(
        &self,
        table: &SpikeTable,
        n_samples: usize,
        spikes: &[Spikes],
        grad_out: &[f64],
        cancel: &Cancel,
    ) -> Result<NetGrad> {
        let set = SpikeSet::new(table.clone(), n_samples)?;
        self.backward_with(&set.input(None)?, spikes, grad_out, cancel)
    }

    fn kernels(&self) -> Vec<TtfsKernel<'a>> {
        self.layers.iter().map(|l| TtfsKernel::new(&self.neuron, *l, self.min_slope)).collect()
    }

    /// Spikes of every layer for every sample of the batch.
    pub fn forward(&self, input: &Input) -> Result<Vec<Spikes>> {
        self.forward_with(input, &Cancel::new())
    }

    /// [`Network::forward`], stopped with `Error::Interrupted` when `cancel` is set.
    pub fn forward_with(&self, input: &Input, cancel: &Cancel) -> Result<Vec<Spikes>> {
        self.check_input(input)?;
        driver::forward(&self.kernels(), input, ChunkPolicy::FAST_SAMPLES, cancel)
    }

    /// Gradients given the spikes of every layer (computed by `forward`, or recorded on
    /// hardware) and `dL/dt` of each spike of the last layer.
    pub fn backward(&self, input: &Input, spikes: &[Spikes], grad_out: &[f64]) -> Result<NetGrad> {
        self.backward_with(input, spikes, grad_out, &Cancel::new())
    }

    /// [`Network::backward`], stopped with `Error::Interrupted` when `cancel` is set.
    pub fn backward_with(
        &self,
        input: &Input,
        spikes: &[Spikes],
        grad_out: &[f64],
        cancel: &Cancel,
    ) -> Result<NetGrad> {
        let (mut layers, inputs) = self.backward_shards(input, spikes, grad_out, &[input.n_samples()], cancel)?;
        Ok(NetGrad { layers: layers.pop().expect("one shard"), inputs })
    }

    /// [`Network::backward_with`] for a batch cut into consecutive shards of `shards[k]`
    /// samples: the layers' gradients of each shard as a batch of its own
    /// ([`driver::backward_shards`]), and `dL/dt` of each input row.
    pub fn backward_shards(
        &self,
        input: &Input,
        spikes: &[Spikes],
        grad_out: &[f64],
        shards: &[usize],
        cancel: &Cancel,
    ) -> Result<(Vec<Vec<LayerGrad>>, Vec<f64>)> {
        self.check_input(input)?;
        let n_samples = input.n_samples();
        driver::check_layer_count(self.layers.len(), spikes)?;
        for (l, (sp, layer)) in spikes.iter().zip(&self.layers).enumerate() {
            check_spikes(sp, n_samples, layer.n_out, &format!("layer {l} spikes"))?;
        }
        driver::check_grad_out(spikes.last().expect("at least one layer"), grad_out)?;
        driver::backward_shards(&self.kernels(), input, spikes, grad_out, ChunkPolicy::FAST_SAMPLES, shards, cancel)
    }

    /// [`Network::backward_shards`] given `dL/dT` on the output layer's first spike times, dense
    /// `(n_samples, n_out)` row-major (entries of silent neurons are ignored).
    pub fn backward_first_times(
        &self,
        input: &Input,
        spikes: &[Spikes],
        grad_times: &[f64],
        shards: &[usize],
        cancel: &Cancel,
    ) -> Result<(Vec<Vec<LayerGrad>>, Vec<f64>)> {
        let n_out = self.layers.last().expect("at least one layer").n_out;
        let n_samples = input.n_samples();
        if grad_times.len() != n_samples * n_out {
            return Err(shape_err(format!(
                "grad_times has {} entries, expected (n_samples, n_out) = ({n_samples}, {n_out})",
                grad_times.len()
            )));
        }
        driver::check_layer_count(self.layers.len(), spikes)?;
        let last = spikes.last().expect("at least one layer");
        check_spikes(last, n_samples, n_out, &format!("layer {} spikes", self.layers.len() - 1))?;
        let rows = last.gather(grad_times, n_out);
        self.backward_shards(input, spikes, &rows, shards, cancel)
    }
}

/// A layer's spikes as the backward pass needs them: ids in range, finite times, at most one
/// spike per neuron and sample (TTFS).
pub fn check_spikes(sp: &Spikes, n_samples: usize, n_out: usize, what: &str) -> Result<()> {
    if sp.n_samples() != n_samples {
        return Err(shape_err(format!("{what}: cover {} samples, expected {n_samples}", sp.n_samples())));
    }
    for s in 0..n_samples {
        let r = sp.range(s);
        let mut prev: Option<u32> = None;
        for k in r {
            let j = sp.neuron[k];
            if j as usize >= n_out {
                return Err(spikes_err(format!(
                    "{what}: neuron id {j} of sample {s} is out of range (the layer has {n_out} neurons)"
                )));
            }
            if !sp.time[k].is_finite() {
                return Err(spikes_err(format!("{what}: time of neuron {j} in sample {s} is {}", sp.time[k])));
            }
            if prev == Some(j) {
                return Err(spikes_err(format!(
                    "{what}: neuron {j} spikes more than once in sample {s}; a TTFS neuron has one spike"
                )));
            }
            prev = Some(j);
        }
    }
    Ok(())
}
