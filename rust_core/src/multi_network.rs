//! Multi-spike networks over whole batches (feed-forward and recurrent hidden layers), mirroring
//! [`crate::network`]: samples are cut into fixed chunks processed in parallel (rayon); gradient
//! sums are added in chunk order, so results do not depend on the number of threads.

use std::ops::Range;

use rayon::prelude::*;

use crate::error::{shape_err, spikes_err, Error, Result};
use crate::eventprop;
use crate::layer::{LayerGrad, LayerRef};
use crate::multi::{self, MultiNeuron, RecLayer};
use crate::network::{add, concat_layers, Input};
use crate::spikes::{SpikeTable, Spikes};
use crate::ttfs::In;
use crate::SpikeSet;

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

/// Chunks of samples for rayon. Unlike TTFS samples (microseconds each, see `network.rs`), a
/// multi-spike sample can take milliseconds, so even small batches are split.
pub(crate) fn chunks(n: usize) -> Vec<Range<usize>> {
    let size = n.div_ceil(64).max(4);
    (0..n).step_by(size).map(|s| s..(s + size).min(n)).collect()
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

fn sample_spikes(sp: &Spikes, s: usize, out: &mut Vec<In>) {
    out.clear();
    let r = sp.range(s);
    out.extend(sp.neuron[r.clone()].iter().copied().zip(sp.time[r].iter().copied()));
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
        let set = SpikeSet::new(table.clone(), n_samples)?;
        self.forward(&set.input(None)?)
    }

    /// Gradients for a table of input spikes; see [`MultiNetwork::backward`].
    pub fn backward_table(
        &self,
        table: &SpikeTable,
        n_samples: usize,
        spikes: &[Spikes],
        grad_out: &[f64],
    ) -> Result<MultiGrad> {
        let set = SpikeSet::new(table.clone(), n_samples)?;
        self.backward(&set.input(None)?, spikes, grad_out)
    }

    /// Every spike of every layer for every sample of the batch (sorted by neuron then time).
    pub fn forward(&self, input: &Input) -> Result<Vec<Spikes>> {
        self.check_input(input)?;
        let n_samples = input.n_samples();
        let table = input.table;
        let factors: Vec<multi::DelayFactors> =
            self.layers.iter().map(|l| multi::delay_factors(&self.neuron.neuron, &l.ff)).collect();
        let parts: Vec<Result<Vec<Spikes>>> = chunks(n_samples)
            .into_par_iter()
            .map(|range| {
                let mut scratch = multi::Scratch::default();
                let mut outs: Vec<Spikes> =
                    self.layers.iter().map(|_| Spikes { offsets: vec![0], ..Default::default() }).collect();
                let mut cur: Vec<In> = Vec::new();
                let mut next: Vec<In> = Vec::new();
                for s in range {
                    cur.clear();
                    cur.extend(input.rows(s).map(|r| (table.neuron()[r], table.time()[r])));
                    for (l, (layer, out)) in self.layers.iter().zip(outs.iter_mut()).enumerate() {
                        next.clear();
                        let ok = match &layer.rec {
                            None => multi::layer_forward(
                                &self.neuron,
                                &layer.ff,
                                &cur,
                                Some(&factors[l]),
                                &mut next,
                                &mut scratch,
                            ),
                            Some(rec) => multi::recurrent_forward(
                                &self.neuron,
                                &RecLayer { ff: layer.ff, rec: *rec },
                                &cur,
                                &mut next,
                            ),
                        };
                        if !ok {
                            return Err(Error::Parameter(format!(
                                "multi-spike forward: layer {l} exceeded max_spikes = {} in sample {s} \
                                 (runaway activity; use a refractory time, t_end, or smaller weights)",
                                self.neuron.max_spikes
                            )));
                        }
                        for &(j, t) in &next {
                            out.neuron.push(j);
                            out.time.push(t);
                        }
                        out.offsets.push(out.neuron.len());
                        std::mem::swap(&mut cur, &mut next);
                    }
                }
                Ok(outs)
            })
            .collect();
        let parts = parts.into_iter().collect::<Result<Vec<_>>>()?;
        Ok(concat_layers(self.layers.len(), parts))
    }

    /// EventProp gradients given every spike of every layer (from `forward`, or recorded) and
    /// `dL/dt` of each spike of the last layer (row order of `spikes.last()`).
    pub fn backward(&self, input: &Input, spikes: &[Spikes], grad_out: &[f64]) -> Result<MultiGrad> {
        self.check_input(input)?;
        let n_samples = input.n_samples();
        let table = input.table;
        if spikes.len() != self.layers.len() {
            return Err(shape_err(format!(
                "backward: got spikes of {} layers for a network of {} layers",
                spikes.len(),
                self.layers.len()
            )));
        }
        for (l, (sp, layer)) in spikes.iter().zip(&self.layers).enumerate() {
            check_multi_spikes(sp, n_samples, layer.ff.n_out, &format!("layer {l} spikes"))?;
        }
        let last = spikes.last().expect("at least one layer");
        if grad_out.len() != last.len() {
            return Err(shape_err(format!(
                "backward: grad has {} entries but the output layer has {} spikes",
                grad_out.len(),
                last.len()
            )));
        }
        if let Some(k) = grad_out.iter().position(|g| !g.is_finite()) {
            return Err(spikes_err(format!("grad: entry {k} is {} (must be finite)", grad_out[k])));
        }
        let sizes: Vec<usize> =
            self.layers.iter().map(|l| l.ff.n_out * l.ff.n_in + l.rec.map_or(0, |r| r.n_out * r.n_in)).collect();
        let n_layers = self.layers.len();
        let factors: Vec<multi::DelayFactors> =
            self.layers.iter().map(|l| multi::delay_factors(&self.neuron.neuron, &l.ff)).collect();
        struct Part {
            gw: Vec<Vec<f64>>,
            gd: Vec<Vec<f64>>,
            gin: Vec<(usize, f64)>,
        }
        let parts: Vec<Part> = chunks(n_samples)
            .into_par_iter()
            .map(|range| {
                let mut scratch = eventprop::Scratch::default();
                let mut part = Part {
                    gw: sizes.iter().map(|&n| vec![0.0; n]).collect(),
                    gd: sizes.iter().map(|&n| vec![0.0; n]).collect(),
                    gin: Vec::new(),
                };
                let mut rows: Vec<usize> = Vec::new();
                let mut inputs: Vec<In> = Vec::new();
                let mut outputs: Vec<In> = Vec::new();
                let mut g_cur: Vec<f64> = Vec::new();
                let mut g_in: Vec<f64> = Vec::new();
                for s in range {
                    g_cur.clear();
                    g_cur.extend_from_slice(&grad_out[last.range(s)]);
                    for l in (0..n_layers).rev() {
                        if l == 0 {
                            rows.clear();
                            rows.extend(input.rows(s));
                            inputs.clear();
                            inputs.extend(rows.iter().map(|&r| (table.neuron()[r], table.time()[r])));
                        } else {
                            sample_spikes(&spikes[l - 1], s, &mut inputs);
                        }
                        sample_spikes(&spikes[l], s, &mut outputs);
                        g_in.clear();
                        g_in.resize(inputs.len(), 0.0);
                        let layer = &self.layers[l];
                        let grads = (&mut part.gw[l][..], &mut part.gd[l][..], &mut g_in[..]);
                        match &layer.rec {
                            None => eventprop::layer_backward(
                                &self.neuron,
                                &layer.ff,
                                &inputs,
                                &outputs,
                                &g_cur,
                                Some(&factors[l]),
                                grads,
                                &mut scratch,
                            ),
                            Some(rec) => eventprop::recurrent_backward(
                                &self.neuron,
                                &RecLayer { ff: layer.ff, rec: *rec },
                                &inputs,
                                &outputs,
                                &g_cur,
                                grads,
                                &mut scratch,
                            ),
                        }
                        std::mem::swap(&mut g_cur, &mut g_in);
                    }
                    part.gin.extend(rows.iter().copied().zip(g_cur.iter().copied()));
                }
                part
            })
            .collect();
        let mut gw: Vec<Vec<f64>> = sizes.iter().map(|&n| vec![0.0; n]).collect();
        let mut gd = gw.clone();
        let mut gin = vec![0.0; table.len()];
        for part in parts {
            for l in 0..n_layers {
                add(&mut gw[l], &part.gw[l]);
                add(&mut gd[l], &part.gd[l]);
            }
            for (r, g) in part.gin {
                gin[r] = g;
            }
        }
        let mut layers = Vec::with_capacity(n_layers);
        let mut recs = Vec::with_capacity(n_layers);
        for (layer, (w, d)) in self.layers.iter().zip(gw.into_iter().zip(gd)) {
            let nf = layer.ff.n_out * layer.ff.n_in;
            layers.push(LayerGrad { weights: w[..nf].to_vec(), delays: layer.ff.reduce_delay_grad(&d[..nf]) });
            recs.push(
                layer.rec.map(|r| LayerGrad { weights: w[nf..].to_vec(), delays: r.reduce_delay_grad(&d[nf..]) }),
            );
        }
        Ok(MultiGrad { layers, rec: recs, inputs: gin })
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
    if grad.len() != out.len() {
        return Err(shape_err(format!(
            "layer_backward: grad has {} entries but out has {} rows",
            grad.len(),
            out.len()
        )));
    }
    out.validate("out", n_samples, layer.ff.n_out)?;
    if let Some(k) = grad.iter().position(|g| !g.is_finite()) {
        return Err(spikes_err(format!("grad: entry {k} (row {k} of out) is {} (must be finite)", grad[k])));
    }
    let (spikes, perm) = Spikes::from_table(out, n_samples);
    let grad_sorted: Vec<f64> = perm.iter().map(|&r| grad[r]).collect();
    let net = MultiNetwork::new(*m, vec![layer])?;
    let mut g = net.backward_table(input, n_samples, &[spikes], &grad_sorted)?;
    Ok((g.layers.pop().expect("one layer"), g.rec.pop().expect("one layer"), g.inputs))
}
