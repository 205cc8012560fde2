//! Multi-spike networks over whole batches (feed-forward and recurrent hidden layers): a stack
//! of [`MultiKernel`]s run by the batch driver ([`crate::driver`]).

use std::cell::RefCell;
use std::sync::Arc;

use crate::batch::{Input, SpikeSet};
use crate::cancel::Cancel;
use crate::driver::{self, ChunkPolicy, Kernel};
use crate::error::{shape_err, spikes_err, Error, Result};
use crate::eventprop;
use crate::layer::{LayerGrad, LayerRef};
use crate::multi::{self, MultiNeuron, RecLayer};
use crate::spike_count::SpikeCount;
use crate::spikes::{SpikeTable, Spikes};
use crate::ttfs::In;

/// One multi-spike layer: feed-forward weights/delays and optional recurrent ones
/// (`rec` is `n_out x n_out`, `rec[j, i]` from neuron `i` to neuron `j` of the same layer).
#[derive(Debug, Clone, Copy)]
pub struct MultiLayer<'a> {
    pub ff: LayerRef<'a>,
    pub rec: Option<LayerRef<'a>>,
}

#[derive(Debug, Clone)]
pub struct MultiNetwork<'a> {
    pub neuron: MultiNeuron,
    pub layers: Vec<MultiLayer<'a>>,
}

/// Gradients of a loss for every layer (feed-forward and recurrent parameters) and for every
/// input spike row.
#[derive(Debug, Clone, PartialEq)]
pub struct MultiGrad {
    pub layers: Vec<LayerGrad>,
    pub rec: Vec<Option<LayerGrad>>,
    /// `dL/dt` of each row of the input table, in the table's row order.
    pub inputs: Vec<f64>,
}

/// A layer's spikes as the multi-spike backward pass needs them: ids in range, finite times,
/// sorted by neuron then time within each sample (as [`Spikes::from_table`] and the forward
/// pass produce them).
pub fn check_multi_spikes(sp: &Spikes, n_samples: usize, n_out: usize, what: &str) -> Result<()> {
    if sp.n_samples() != n_samples {
        return Err(shape_err(format!("{what}: cover {} samples, expected {n_samples}", sp.n_samples())));
    }
    for s in 0..n_samples {
        let mut prev: Option<(u32, f64)> = None;
        for k in sp.range(s) {
            let (j, t) = (sp.neuron[k], sp.time[k]);
            if j as usize >= n_out {
                return Err(spikes_err(format!(
                    "{what}: neuron id {j} of sample {s} is out of range (the layer has {n_out} neurons)"
                )));
            }
            if !t.is_finite() {
                return Err(spikes_err(format!("{what}: time of neuron {j} in sample {s} is {t}")));
            }
            if let Some((pj, pt)) = prev {
                if j < pj || (j == pj && t < pt) {
                    return Err(spikes_err(format!(
                        "{what}: spikes of sample {s} are not sorted by neuron then time (row {k})"
                    )));
                }
            }
            prev = Some((j, t));
        }
    }
    Ok(())
}

thread_local! {
    /// The feed-forward factors of the last layers seen on this thread (a training step's forward
    /// and backward calls share them), with the parameters they were computed from.
    static FACTORS: RefCell<Vec<(Vec<u64>, Arc<multi::DelayFactors>)>> = const { RefCell::new(Vec::new()) };
}

/// Layers whose factors a thread keeps.
const CACHED_LAYERS: usize = 2;

/// The parameters the factors depend on, bit for bit.
fn factor_key(n: &crate::neuron::Neuron, layer: &LayerRef) -> Vec<u64> {
    let head = [n.tau_m, n.tau_s].map(f64::to_bits).into_iter();
    let shape = [layer.n_out as u64, layer.n_in as u64, layer.kind as u64].into_iter();
    head.chain(shape).chain(layer.weights.iter().chain(layer.delays).map(|x| x.to_bits())).collect()
}

/// [`multi::delay_factors`] computed once for a layer's parameters and then shared: comparing the
/// parameters is a memory scan, computing the factors two `exp` per synapse (per call, that was a
/// tenth of a small batch's time).
fn cached_factors(n: &crate::neuron::Neuron, layer: &LayerRef) -> Arc<multi::DelayFactors> {
    let key = factor_key(n, layer);
    FACTORS.with(|cell| {
        let mut cache = cell.borrow_mut();
        if let Some(k) = cache.iter().position(|(x, _)| *x == key) {
            let hit = cache.remove(k);
            let factors = hit.1.clone();
            cache.push(hit);
            return factors;
        }
        let factors = Arc::new(multi::delay_factors(n, layer));
        if cache.len() >= CACHED_LAYERS {
            cache.remove(0);
        }
        cache.push((key, factors.clone()));
        factors
    })
}

/// One multi-spike layer (feed-forward, or with recurrent weights) as a per-sample kernel.
pub struct MultiKernel<'a> {
    neuron: MultiNeuron,
    layer: MultiLayer<'a>,
    /// The feed-forward synapses' factors, once per batch.
    factors: Arc<multi::DelayFactors>,
    /// Threads to spread a feed-forward layer's targets over within a sample (1: none).
    target_parts: usize,
}

impl<'a> MultiKernel<'a> {
    pub fn new(neuron: &MultiNeuron, layer: MultiLayer<'a>) -> Self {
        Self { neuron: *neuron, layer, factors: cached_factors(&neuron.neuron, &layer.ff), target_parts: 1 }
    }

    /// Spreads a feed-forward layer's targets over `parts` threads within each sample (for batches
    /// that run as one chunk). The results are bit for bit those of one thread.
    pub fn with_target_parts(mut self, parts: usize) -> Self {
        self.target_parts = parts.max(1);
        self
    }
}

/// Scratch of both directions: a chunk runs one of them, and unused buffers stay empty.
#[derive(Default)]
pub struct MultiScratch {
    forward: multi::Scratch,
    backward: eventprop::Scratch,
}

impl Kernel for MultiKernel<'_> {
    type Scratch = MultiScratch;
    /// Feed-forward and (for a recurrent layer) recurrent gradients.
    type Grad = (LayerGrad, Option<LayerGrad>);

    fn grad_len(&self) -> usize {
        let MultiLayer { ff, rec } = self.layer;
        ff.n_out * ff.n_in + rec.map_or(0, |r| r.n_out * r.n_in)
    }

    fn forward(&self, inputs: &[In], out: &mut Vec<In>, current: &mut Vec<f64>, scratch: &mut MultiScratch) -> bool {
        let m = &self.neuron;
        let out = (out, current);
        match &self.layer.rec {
            None if self.target_parts > 1 => multi::layer_forward_parallel(
                m,
                &self.layer.ff,
                inputs,
                Some(self.factors.as_ref()),
                self.target_parts,
                out,
                &mut scratch.forward,
            ),
            None => {
                multi::layer_forward(m, &self.layer.ff, inputs, Some(self.factors.as_ref()), out, &mut scratch.forward)
            }
            Some(rec) => multi::recurrent_forward(m, &RecLayer { ff: self.layer.ff, rec: *rec }, inputs, out),
        }
    }

    fn forward_error(&self, layer: usize, sample: usize) -> Error {
        Error::Parameter(format!(
            "multi-spike forward: layer {layer} exceeded max_spikes = {} in sample {sample} \
             (runaway activity; use a refractory time, t_end, or smaller weights)",
            self.neuron.max_spikes
        ))
    }

    fn backward(
        &self,
        inputs: &[In],
        outputs: &[In],
        current: &[f64],
        grad_out: &[f64],
        grads: (&mut [f64], &mut [f64], &mut [f64]),
        scratch: &mut MultiScratch,
    ) {
        let (m, ff) = (&self.neuron, &self.layer.ff);
        let scratch = &mut scratch.backward;
        match &self.layer.rec {
            None if self.target_parts > 1 => eventprop::layer_backward_parallel(
                m,
                ff,
                inputs,
                outputs,
                current,
                grad_out,
                Some(self.factors.as_ref()),
                grads,
                scratch,
            ),
            None => eventprop::layer_backward(
                m,
                ff,
                inputs,
                outputs,
                current,
                grad_out,
                Some(self.factors.as_ref()),
                grads,
                scratch,
            ),
            Some(rec) => eventprop::recurrent_backward(
                m,
                &RecLayer { ff: *ff, rec: *rec },
                inputs,
                outputs,
                current,
                grad_out,
                grads,
                scratch,
            ),
        }
    }

    fn finish(&self, w: Vec<f64>, d: Vec<f64>) -> (LayerGrad, Option<LayerGrad>) {
        let ff = &self.layer.ff;
        let nf = ff.n_out * ff.n_in;
        let rec =
            self.layer.rec.map(|r| LayerGrad { weights: w[nf..].to_vec(), delays: r.reduce_delay_grad(&d[nf..]) });
        (LayerGrad { weights: w[..nf].to_vec(), delays: ff.reduce_delay_grad(&d[..nf]) }, rec)
    }
}

impl<'a> MultiNetwork<'a> {
    pub fn new(neuron: MultiNeuron, layers: Vec<MultiLayer<'a>>) -> Result<Self> {
        if layers.is_empty() {
            return Err(shape_err("network: needs at least one layer"));
        }
        for (l, w) in layers.windows(2).enumerate() {
            if w[1].ff.n_in != w[0].ff.n_out {
                return Err(shape_err(format!(
                    "network: layer {} has n_in = {} but layer {l} has n_out = {}",
                    l + 1,
                    w[1].ff.n_in,
                    w[0].ff.n_out
                )));
            }
        }
        for (l, layer) in layers.iter().enumerate() {
            if let Some(rec) = layer.rec {
                let n = layer.ff.n_out;
                if rec.n_in != n || rec.n_out != n {
                    return Err(shape_err(format!(
                        "network: recurrent weights of layer {l} are ({}, {}), expected ({n}, {n})",
                        rec.n_out, rec.n_in
                    )));
                }
            }
        }
        Ok(Self { neuron, layers })
    }

    pub fn n_in(&self) -> usize {
        self.layers[0].ff.n_in
    }

    fn check_input(&self, input: &Input) -> Result<()> {
        let n_in = self.n_in();
        if input.n_channels > n_in {
            return Err(spikes_err(format!(
                "spikes: neuron id {} is out of range (the network has {n_in} inputs)",
                input.n_channels - 1
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

    /// Gradients for a table of input spikes; see [`MultiNetwork::backward`].
    pub fn backward_table(
        &self,
        table: &SpikeTable,
        n_samples: usize,
        spikes: &[Spikes],
        grad_out: &[f64],
    ) -> Result<MultiGrad> {
        self.backward_table_with(table, n_samples, spikes, grad_out, &Cancel::new())
    }

    pub fn backward_table_with(
        &self,
        table: &SpikeTable,
        n_samples: usize,
        spikes: &[Spikes],
        grad_out: &[f64],
        cancel: &Cancel,
    ) -> Result<MultiGrad> {
        let set = SpikeSet::new(table.clone(), n_samples)?;
        self.backward_with(&set.input(None)?, spikes, grad_out, cancel)
    }

    /// The layers' kernels for a batch of `n_samples`: a batch that runs as one chunk (on one
    /// thread) spreads each feed-forward layer's targets over the pool's threads instead.
    fn kernels(&self, n_samples: usize) -> Vec<MultiKernel<'a>> {
        let threads = rayon::current_num_threads();
        let parts = if ChunkPolicy::SLOW_SAMPLES.chunks(n_samples).len() == 1 { threads } else { 1 };
        self.layers.iter().map(|l| MultiKernel::new(&self.neuron, *l).with_target_parts(parts)).collect()
    }

    /// Every spike of every layer for every sample of the batch (sorted by neuron then time).
    pub fn forward(&self, input: &Input) -> Result<Vec<Spikes>> {
        self.forward_with(input, &Cancel::new())
    }

    /// [`MultiNetwork::forward`], stopped with `Error::Interrupted` when `cancel` is set.
    pub fn forward_with(&self, input: &Input, cancel: &Cancel) -> Result<Vec<Spikes>> {
        self.check_input(input)?;
        driver::forward(&self.kernels(input.n_samples()), input, ChunkPolicy::SLOW_SAMPLES, cancel)
    }

    /// EventProp gradients given every spike of every layer (from `forward`, or recorded) and
    /// `dL/dt` of each spike of the last layer (row order of `spikes.last()`).
    pub fn backward(&self, input: &Input, spikes: &[Spikes], grad_out: &[f64]) -> Result<MultiGrad> {
        self.backward_with(input, spikes, grad_out, &Cancel::new())
    }

    /// [`MultiNetwork::backward`], stopped with `Error::Interrupted` when `cancel` is set.
    pub fn backward_with(
        &self,
        input: &Input,
        spikes: &[Spikes],
        grad_out: &[f64],
        cancel: &Cancel,
    ) -> Result<MultiGrad> {
        let (mut shards, inputs) = self.backward_shards(input, spikes, grad_out, &[input.n_samples()], None, cancel)?;
        let (layers, rec) = shards.pop().expect("one shard");
        Ok(MultiGrad { layers, rec, inputs })
    }

    /// [`MultiNetwork::backward_with`] for a batch cut into consecutive shards of `shards[k]`
    /// samples: the feed-forward and recurrent gradients of each shard as a batch of its own
    /// ([`driver::backward_shards`]), and `dL/dt` of each input row. With `spike_count = (regs,
    /// batch_size)`, the spike-count regulariser's pull ([`SpikeCount`], one per layer) on every
    /// hidden layer's spikes is added to their `dL/dt`; `batch_size` is the whole batch these
    /// shards belong to.
    #[allow(clippy::type_complexity)]
    pub fn backward_shards(
        &self,
        input: &Input,
        spikes: &[Spikes],
        grad_out: &[f64],
        shards: &[usize],
        spike_count: Option<(&[SpikeCount], usize)>,
        cancel: &Cancel,
    ) -> Result<(Vec<(Vec<LayerGrad>, Vec<Option<LayerGrad>>)>, Vec<f64>)> {
        self.check_input(input)?;
        let n_samples = input.n_samples();
        driver::check_layer_count(self.layers.len(), spikes)?;
        for (l, (sp, layer)) in spikes.iter().zip(&self.layers).enumerate() {
            check_multi_spikes(sp, n_samples, layer.ff.n_out, &format!("layer {l} spikes"))?;
        }
        driver::check_grad_out(spikes.last().expect("at least one layer"), grad_out)?;
        let layer_grad = match spike_count {
            None => Vec::new(),
            Some((regs, _)) if regs.len() != self.layers.len() => {
                return Err(shape_err(format!(
                    "spike-count regulariser: {} settings for {} hidden layers",
                    regs.len(),
                    self.layers.len()
                )))
            }
            Some((regs, batch_size)) => (spikes.iter().zip(&self.layers).zip(regs).enumerate())
                .map(|(l, ((sp, layer), reg))| {
                    if reg.above == 0.0 && reg.below == 0.0 {
                        return Ok(None);
                    }
                    let what = format!("layer {l} spikes");
                    reg.grad(&self.neuron.neuron, sp, layer.ff.n_out, shards, batch_size, &what).map(Some)
                })
                .collect::<Result<_>>()?,
        };
        let policy = ChunkPolicy::SLOW_SAMPLES;
        let kernels = self.kernels(n_samples);
        let (grads, inputs) =
            driver::backward_shards_with(&kernels, input, spikes, grad_out, &layer_grad, policy, shards, cancel)?;
        Ok((grads.into_iter().map(|shard| shard.into_iter().unzip()).collect(), inputs))
    }
}

/// Forward pass of a single multi-spike layer (`mode = "multi"`): every output spike of every
/// sample, sorted by neuron then time.
pub fn layer_forward(m: &MultiNeuron, layer: MultiLayer, input: &SpikeTable, n_samples: usize) -> Result<Spikes> {
    let net = MultiNetwork::new(*m, vec![layer])?;
    Ok(net.forward_table(input, n_samples)?.pop().expect("one layer"))
}

/// Backward pass of a single multi-spike layer. `out` are the layer's output spikes (any row
/// order) and `grad[k]` is `dL/dt` of row `k` of `out`. Returns the feed-forward and recurrent
/// parameter gradients and `dL/dt` of each row of `input`.
pub fn layer_backward(
    m: &MultiNeuron,
    layer: MultiLayer,
    input: &SpikeTable,
    n_samples: usize,
    out: &SpikeTable,
    grad: &[f64],
) -> Result<(LayerGrad, Option<LayerGrad>, Vec<f64>)> {
    let (spikes, grad_sorted) = crate::model::sorted_output(out, grad, n_samples, layer.ff.n_out)?;
    let net = MultiNetwork::new(*m, vec![layer])?;
    let mut g = net.backward_table(input, n_samples, &[spikes], &grad_sorted)?;
    Ok((g.layers.pop().expect("one layer"), g.rec.pop().expect("one layer"), g.inputs))
}
