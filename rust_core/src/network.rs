//! Feed-forward TTFS networks over whole batches: samples are independent, so the batch is cut
//! into fixed chunks processed in parallel (rayon). Gradients are summed per chunk and the chunk
//! sums are added in chunk order, so results do not depend on the number of threads.

use std::ops::Range;

use rayon::prelude::*;

use crate::error::{param_err, shape_err, spikes_err, Result};
use crate::layer::{LayerGrad, LayerRef};
use crate::neuron::Neuron;
use crate::spikes::{Grouping, RowIter, SpikeTable, Spikes};
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

/// The input spikes of a batch: a validated table, its rows grouped by sample, and optionally a
/// selection of samples forming the batch (so a whole data split can stay in one Arrow table and
/// batches are chosen by index, without copying spikes).
#[derive(Debug, Clone)]
pub struct Input<'a> {
    pub table: &'a SpikeTable,
    pub grouping: &'a Grouping,
    pub select: Option<&'a [u32]>,
    /// One more than the largest neuron id in the table.
    pub n_channels: usize,
}

impl Input<'_> {
    pub fn n_samples(&self) -> usize {
        self.select.map_or(self.grouping.n_samples(), |s| s.len())
    }
    pub(crate) fn rows(&self, s: usize) -> RowIter<'_> {
        self.grouping.rows(self.select.map_or(s, |sel| sel[s] as usize))
    }
}

/// A spike table validated and grouped once, for repeated batched use.
#[derive(Debug, Clone)]
pub struct SpikeSet {
    pub table: SpikeTable,
    pub grouping: Grouping,
    /// One more than the largest neuron id (0 for an empty table).
    pub n_channels: usize,
}

impl SpikeSet {
    pub fn new(table: SpikeTable, n_samples: usize) -> Result<Self> {
        table.validate("spikes", n_samples, u32::MAX as usize + 1)?;
        let grouping = table.group(n_samples);
        let n_channels = table.neuron().iter().max().map_or(0, |&m| m as usize + 1);
        Ok(Self { table, grouping, n_channels })
    }

    /// The batch made of samples `select` (all samples, in order, for `None`).
    pub fn input<'a>(&'a self, select: Option<&'a [u32]>) -> Result<Input<'a>> {
        if let Some(sel) = select {
            let n = self.grouping.n_samples();
            if let Some(k) = sel.iter().position(|&s| s as usize >= n) {
                return Err(shape_err(format!(
                    "select: sample {} at position {k} is out of range (the set has {n} samples)",
                    sel[k]
                )));
            }
        }
        Ok(Input { table: &self.table, grouping: &self.grouping, select, n_channels: self.n_channels })
    }

    /// The spikes of samples `select`, renumbered `0..select.len()` in that order, in the input
    /// order within each sample (what a hardware run or a log needs as one table).
    pub fn gather(&self, select: Option<&[u32]>) -> Result<Spikes> {
        let input = self.input(select)?;
        let n = input.n_samples();
        let (neurons, times) = (self.table.neuron(), self.table.time());
        let mut out = Spikes { offsets: Vec::with_capacity(n + 1), neuron: Vec::new(), time: Vec::new() };
        out.offsets.push(0);
        for s in 0..n {
            for r in input.rows(s) {
                out.neuron.push(neurons[r]);
                out.time.push(times[r]);
            }
            out.offsets.push(out.neuron.len());
        }
        Ok(out)
    }
}

/// Batches smaller than this run on the calling thread: waking rayon's workers costs more than
/// the work, and on a loaded machine it can cost milliseconds of scheduling latency (what a
/// hardware loop of small batches notices).
const PARALLEL_MIN_SAMPLES: usize = 64;

/// Deterministic split of `n` samples into chunks: enough for load balancing, few enough that
/// per-chunk gradient buffers stay small.
fn chunks(n: usize) -> Vec<Range<usize>> {
    if n < PARALLEL_MIN_SAMPLES {
        return std::iter::once(0..n).collect();
    }
    let size = n.div_ceil(64).max(16);
    (0..n).step_by(size).map(|s| s..(s + size).min(n)).collect()
}

/// `f` over the chunks of `n` samples, in chunk order; in parallel unless there is one chunk.
fn map_chunks<T: Send>(n: usize, f: impl Fn(Range<usize>) -> T + Sync + Send) -> Vec<T> {
    let ranges = chunks(n);
    if ranges.len() == 1 {
        ranges.into_iter().map(f).collect()
    } else {
        ranges.into_par_iter().map(f).collect()
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
        let set = SpikeSet::new(table.clone(), n_samples)?;
        self.forward(&set.input(None)?)
    }

    /// Gradients for a table of input spikes; see [`Network::backward`].
    pub fn backward_table(
        &self,
        table: &SpikeTable,
        n_samples: usize,
        spikes: &[Spikes],
        grad_out: &[f64],
    ) -> Result<NetGrad> {
        let set = SpikeSet::new(table.clone(), n_samples)?;
        self.backward(&set.input(None)?, spikes, grad_out)
    }

    /// Spikes of every layer for every sample of the batch.
    pub fn forward(&self, input: &Input) -> Result<Vec<Spikes>> {
        self.check_input(input)?;
        let n_samples = input.n_samples();
        let table = input.table;
        let prepared: Vec<ttfs::Prepared> = self.layers.iter().map(|l| ttfs::prepare(&self.neuron, l)).collect();
        let parts: Vec<Vec<Spikes>> = map_chunks(n_samples, |range| {
            let mut scratch = Scratch::default();
            let mut outs: Vec<Spikes> =
                self.layers.iter().map(|_| Spikes { offsets: vec![0], ..Default::default() }).collect();
            let mut cur: Vec<In> = Vec::new();
            let mut next: Vec<In> = Vec::new();
            for s in range {
                cur.clear();
                cur.extend(input.rows(s).map(|r| (table.neuron()[r], table.time()[r])));
                for ((layer, out), p) in self.layers.iter().zip(outs.iter_mut()).zip(&prepared) {
                    next.clear();
                    ttfs::layer_forward(&self.neuron, layer, &cur, p, &mut next, &mut scratch);
                    for &(j, t) in &next {
                        out.neuron.push(j);
                        out.time.push(t);
                    }
                    out.offsets.push(out.neuron.len());
                    std::mem::swap(&mut cur, &mut next);
                }
            }
            outs
        });
        Ok(concat_layers(self.layers.len(), parts))
    }

    /// Gradients given the spikes of every layer (computed by `forward`, or recorded on
    /// hardware) and `dL/dt` of each spike of the last layer.
    pub fn backward(&self, input: &Input, spikes: &[Spikes], grad_out: &[f64]) -> Result<NetGrad> {
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
            check_spikes(sp, n_samples, layer.n_out, &format!("layer {l} spikes"))?;
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
        let n_layers = self.layers.len();
        let factors: Vec<Option<ttfs::DelayFactors>> =
            self.layers.iter().map(|l| ttfs::delay_factors(&self.neuron, l)).collect();

        struct Part {
            gw: Vec<Vec<f64>>,
            gd: Vec<Vec<f64>>,
            gin: Vec<(usize, f64)>,
        }
        let parts: Vec<Part> = map_chunks(n_samples, |range| {
            let mut scratch = Scratch::default();
            let mut part = Part {
                gw: self.layers.iter().map(|l| vec![0.0; l.n_out * l.n_in]).collect(),
                gd: self.layers.iter().map(|l| vec![0.0; l.n_out * l.n_in]).collect(),
                gin: Vec::new(),
            };
            let mut rows: Vec<usize> = Vec::new();
            let mut inputs: Vec<In> = Vec::new();
            let mut outputs: Vec<In> = Vec::new();
            let mut g_cur: Vec<f64> = Vec::new();
            let mut g_in: Vec<f64> = Vec::new();
            for s in range {
                let r = last.range(s);
                g_cur.clear();
                g_cur.extend_from_slice(&grad_out[r]);
                for l in (0..n_layers).rev() {
                    inputs.clear();
                    if l == 0 {
                        rows.clear();
                        rows.extend(input.rows(s));
                        inputs.extend(rows.iter().map(|&r| (table.neuron()[r], table.time()[r])));
                    } else {
                        let prev = &spikes[l - 1];
                        let r = prev.range(s);
                        inputs.extend(prev.neuron[r.clone()].iter().copied().zip(prev.time[r].iter().copied()));
                    }
                    let sp = &spikes[l];
                    let r = sp.range(s);
                    outputs.clear();
                    outputs.extend(sp.neuron[r.clone()].iter().copied().zip(sp.time[r].iter().copied()));
                    g_in.clear();
                    g_in.resize(inputs.len(), 0.0);
                    ttfs::layer_backward(
                        &self.neuron,
                        &self.layers[l],
                        &inputs,
                        &outputs,
                        &g_cur,
                        factors[l].as_ref(),
                        self.min_slope,
                        (&mut part.gw[l], &mut part.gd[l], &mut g_in),
                        &mut scratch,
                    );
                    std::mem::swap(&mut g_cur, &mut g_in);
                }
                part.gin.extend(rows.iter().copied().zip(g_cur.iter().copied()));
            }
            part
        });

        let mut gw: Vec<Vec<f64>> = self.layers.iter().map(|l| vec![0.0; l.n_out * l.n_in]).collect();
        let mut gd = gw.clone();
        let mut inputs = vec![0.0; table.len()];
        for part in parts {
            for l in 0..n_layers {
                add(&mut gw[l], &part.gw[l]);
                add(&mut gd[l], &part.gd[l]);
            }
            for (r, g) in part.gin {
                inputs[r] = g;
            }
        }
        let layers = self
            .layers
            .iter()
            .zip(gw.into_iter().zip(gd))
            .map(|(layer, (w, d))| LayerGrad { weights: w, delays: layer.reduce_delay_grad(&d) })
            .collect();
        Ok(NetGrad { layers, inputs })
    }
}

pub(crate) fn add(acc: &mut [f64], x: &[f64]) {
    for (a, b) in acc.iter_mut().zip(x) {
        *a += b;
    }
}

/// Per-chunk spikes of every layer (chunks in sample order) joined into one `Spikes` per layer.
pub(crate) fn concat_layers(n_layers: usize, parts: impl IntoIterator<Item = Vec<Spikes>>) -> Vec<Spikes> {
    let mut per_layer: Vec<Vec<Spikes>> = (0..n_layers).map(|_| Vec::new()).collect();
    for part in parts {
        for (l, sp) in part.into_iter().enumerate() {
            per_layer[l].push(sp);
        }
    }
    per_layer.into_iter().map(Spikes::concat).collect()
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
