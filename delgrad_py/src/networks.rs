//! Passes through layers and networks: single layers on spike tables (either mode), TTFS
//! networks and multi-spike networks on batches of a `SpikeSet`.

use delgrad_core::{self as core, Network, SpikeCount};
use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3_arrow::input::AnyRecordBatch;
use pyo3_arrow::PyRecordBatch;

use crate::arrays::{
    extract_layers, grad_arrays, layer_refs, read_table, select_ids, shard_grad_arrays, AnyPair, LayerArgs, LayerGrads,
    SampleCount, Select,
};
use crate::errors::{check, run, to_py, ShapeError};
use crate::neuron::PyNeuron;
use crate::spikes::{PySpikeSet, Trace};

#[pyfunction]
#[pyo3(signature = (spikes, weights, delays, delay_kind, neuron, n_samples))]
pub fn layer_forward<'py>(
    py: Python<'py>,
    spikes: AnyRecordBatch,
    weights: PyReadonlyArray2<'py, f64>,
    delays: Option<PyReadonlyArrayDyn<'py, f64>>,
    delay_kind: &str,
    neuron: &PyNeuron,
    n_samples: SampleCount,
) -> PyResult<Bound<'py, PyAny>> {
    let table = read_table(spikes, "spikes", false)?;
    let args = LayerArgs::new(weights, delay_kind, delays)?;
    let layer = args.as_ref("layer")?;
    let out = run(py, |cancel| neuron.model.layer_forward(layer, &table, n_samples.0, cancel))?;
    PyRecordBatch::new(out.to_record_batch(None)).into_pyarrow(py)
}

#[pyfunction]
#[pyo3(signature = (spikes, weights, delays, delay_kind, neuron, out, grad, n_samples))]
#[allow(clippy::too_many_arguments)]
pub fn layer_backward<'py>(
    py: Python<'py>,
    spikes: AnyRecordBatch,
    weights: PyReadonlyArray2<'py, f64>,
    delays: Option<PyReadonlyArrayDyn<'py, f64>>,
    delay_kind: &str,
    neuron: &PyNeuron,
    out: AnyRecordBatch,
    grad: PyReadonlyArrayDyn<'py, f64>,
    n_samples: SampleCount,
) -> PyResult<LayerGrads<'py>> {
    let table = read_table(spikes, "spikes", false)?;
    let args = LayerArgs::new(weights, delay_kind, delays)?;
    let out = read_table(out, "out", false)?;
    let layer = args.as_ref("layer")?;
    if grad.ndim() != 1 {
        return Err(ShapeError::new_err(format!("grad must be 1-dimensional, got shape {:?}", grad.shape())));
    }
    let g = grad.as_slice().map_err(|_| ShapeError::new_err("grad must be contiguous"))?;
    let (lg, gin) = run(py, |cancel| neuron.model.layer_backward(layer, &table, n_samples.0, &out, g, cancel))?;
    let (gw, gd) = grad_arrays(py, &layer, lg);
    Ok((gw, gd, gin.into_pyarray(py)))
}

/// The batch `select` of `spikes`, checked to be the batch `trace` was recorded for.
fn trace_batch<'a>(spikes: &'a PySpikeSet, ids: Option<&'a [u32]>, trace: &Trace) -> PyResult<core::Input<'a>> {
    let input = spikes.input(ids)?;
    if input.n_samples() != trace.n_samples {
        return Err(ShapeError::new_err(format!(
            "the batch has {} samples but the trace has {}",
            input.n_samples(),
            trace.n_samples
        )));
    }
    Ok(input)
}

#[pyfunction]
#[pyo3(signature = (spikes, select, layers, neuron))]
pub fn network_forward(
    py: Python<'_>,
    spikes: &PySpikeSet,
    select: Option<Select<'_>>,
    layers: &Bound<'_, PyAny>,
    neuron: &PyNeuron,
) -> PyResult<Trace> {
    let args = extract_layers(layers)?;
    let net = check(Network::new(check(neuron.model.ttfs("network"))?, layer_refs(&args)?))?;
    let ids = select_ids(&select, &spikes.inner)?;
    let input = spikes.input(ids.as_deref())?;
    let sizes = net.layers.iter().map(|l| l.n_out).collect();
    let n_samples = input.n_samples();
    let out = run(py, |cancel| net.forward_with(&input, cancel))?;
    Ok(Trace { n_samples, sizes, layers: out })
}

/// Gradients for a network given `grad_times`, `dL/dT` on the output layer's first spike times,
/// shape (n_samples, n_out) (entries of silent neurons are ignored). With `shards` (sizes of
/// consecutive shards of the batch) each gradient array gets a leading axis over the shards,
/// each shard's as the batch made of it alone gives it.
#[pyfunction]
#[pyo3(signature = (spikes, select, layers, neuron, trace, grad_times, min_slope=None, shards=None))]
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
pub fn network_backward<'py>(
    py: Python<'py>,
    spikes: &PySpikeSet,
    select: Option<Select<'py>>,
    layers: &Bound<'py, PyAny>,
    neuron: &PyNeuron,
    trace: &Trace,
    grad_times: PyReadonlyArray2<'py, f64>,
    min_slope: Option<f64>,
    shards: Option<Vec<usize>>,
) -> PyResult<(Vec<AnyPair<'py>>, Bound<'py, PyArray1<f64>>)> {
    let args = extract_layers(layers)?;
    let mut net = check(Network::new(check(neuron.model.ttfs("network"))?, layer_refs(&args)?))?;
    if let Some(m) = min_slope {
        net = check(net.with_min_slope(m))?;
    }
    let ids = select_ids(&select, &spikes.inner)?;
    let input = trace_batch(spikes, ids.as_deref(), trace)?;
    let n_out = *trace.sizes.last().expect("a trace has layers");
    if grad_times.shape() != [trace.n_samples, n_out] {
        return Err(ShapeError::new_err(format!(
            "grad_times has shape {:?}, expected (n_samples, n_out) = ({}, {n_out})",
            grad_times.shape(),
            trace.n_samples
        )));
    }
    let dense = grad_times.as_slice().map_err(|_| ShapeError::new_err("grad_times must be C-contiguous"))?;
    let sizes = shards.clone().unwrap_or_else(|| vec![trace.n_samples]);
    let (per_shard, inputs) = run(py, |cancel| net.backward_first_times(&input, &trace.layers, dense, &sizes, cancel))?;
    let grads = per_layer(per_shard, net.layers.len())
        .into_iter()
        .zip(&net.layers)
        .map(|(lg, l)| shard_grad_arrays(py, l, lg, shards.is_some()))
        .collect();
    Ok((grads, inputs.into_pyarray(py)))
}

/// Per-shard lists of per-layer gradients, regrouped per layer (shards in order).
fn per_layer<T>(per_shard: Vec<Vec<T>>, n_layers: usize) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = (0..n_layers).map(|_| Vec::with_capacity(per_shard.len())).collect();
    for shard in per_shard {
        for (layer, g) in out.iter_mut().zip(shard) {
            layer.push(g);
        }
    }
    out
}

/// The optional recurrent parameters of each layer, borrowed like [`LayerArgs`].
fn extract_recurrent<'py>(rec: &Option<Bound<'py, PyAny>>, n_layers: usize) -> PyResult<Vec<Option<LayerArgs<'py>>>> {
    let Some(rec) = rec else { return Ok((0..n_layers).map(|_| None).collect()) };
    let v: Vec<Option<LayerArgs>> = rec
        .try_iter()?
        .map(|x| {
            let x = x?;
            if x.is_none() {
                Ok(None)
            } else {
                LayerArgs::extract(&x).map(Some)
            }
        })
        .collect::<PyResult<_>>()?;
    if v.len() != n_layers {
        return Err(ShapeError::new_err(format!(
            "recurrent: {} entries for {n_layers} layers (use None for a feed-forward layer)",
            v.len()
        )));
    }
    Ok(v)
}

fn multi_net<'a>(
    neuron: &PyNeuron,
    ff: &'a [LayerArgs],
    rec: &'a [Option<LayerArgs>],
) -> PyResult<core::MultiNetwork<'a>> {
    let m = check(neuron.model.multi("multi_network_*"))?;
    let mut layers = Vec::with_capacity(ff.len());
    for (l, (f, r)) in ff.iter().zip(rec).enumerate() {
        let ff = f.as_ref(&format!("layer {l}"))?;
        let rec = r.as_ref().map(|r| r.as_ref(&format!("layer {l} recurrent"))).transpose()?;
        layers.push(core::MultiLayer { ff, rec });
    }
    check(core::MultiNetwork::new(m, layers))
}

/// Every spike of every layer of a multi-spike network (feed-forward and, where
/// `recurrent[l]` is given as `(weights (n, n), delay_kind, delays)`, recurrent layers).
#[pyfunction]
#[pyo3(signature = (spikes, select, layers, neuron, recurrent = None))]
pub fn multi_network_forward(
    py: Python<'_>,
    spikes: &PySpikeSet,
    select: Option<Select<'_>>,
    layers: &Bound<'_, PyAny>,
    neuron: &PyNeuron,
    recurrent: Option<Bound<'_, PyAny>>,
) -> PyResult<Trace> {
    let ff = extract_layers(layers)?;
    let rec = extract_recurrent(&recurrent, ff.len())?;
    let net = multi_net(neuron, &ff, &rec)?;
    let ids = select_ids(&select, &spikes.inner)?;
    let input = spikes.input(ids.as_deref())?;
    let sizes = net.layers.iter().map(|l| l.ff.n_out).collect();
    let n_samples = input.n_samples();
    let out = run(py, |cancel| net.forward_with(&input, cancel))?;
    Ok(Trace { n_samples, sizes, layers: out })
}

/// EventProp gradients of a multi-spike network given `grad_spikes`, `dL/dt` of every spike of
/// the last layer in the row order of `trace.spikes(-1)`. Returns the feed-forward
/// `(dW, dD)` per layer, the recurrent `(dW, dD)` per layer (None for feed-forward layers) and
/// `dL/dt` of each input spike row. With `shards`, each gradient array has a leading axis over
/// the shards (as `network_backward`). With `spike_count`, one `(target, strength_above,
/// strength_below)` per hidden layer, every hidden spike also takes the spike-count
/// regulariser's pull (`delgrad_core::spike_count`); `batch_size` is the whole batch (default:
/// these samples).
#[pyfunction]
#[pyo3(signature = (
    spikes, select, layers, neuron, trace, grad_spikes, recurrent = None, shards = None, spike_count = None,
    batch_size = None
))]
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
pub fn multi_network_backward<'py>(
    py: Python<'py>,
    spikes: &PySpikeSet,
    select: Option<Select<'py>>,
    layers: &Bound<'py, PyAny>,
    neuron: &PyNeuron,
    trace: &Trace,
    grad_spikes: PyReadonlyArray1<'py, f64>,
    recurrent: Option<Bound<'py, PyAny>>,
    shards: Option<Vec<usize>>,
    spike_count: Option<Vec<(f64, f64, f64)>>,
    batch_size: Option<usize>,
) -> PyResult<(Vec<AnyPair<'py>>, Vec<Option<AnyPair<'py>>>, Bound<'py, PyArray1<f64>>)> {
    let ff = extract_layers(layers)?;
    let rec = extract_recurrent(&recurrent, ff.len())?;
    let net = multi_net(neuron, &ff, &rec)?;
    let ids = select_ids(&select, &spikes.inner)?;
    let input = trace_batch(spikes, ids.as_deref(), trace)?;
    let g = grad_spikes.as_slice().map_err(|_| ShapeError::new_err("grad_spikes must be contiguous"))?;
    let sizes = shards.clone().unwrap_or_else(|| vec![trace.n_samples]);
    let regs: Option<Vec<SpikeCount>> = spike_count
        .map(|layers| layers.into_iter().map(|(target, above, below)| SpikeCount::new(target, above, below)).collect())
        .transpose()
        .map_err(to_py)?;
    let reg = regs.as_deref().map(|r| (r, batch_size.unwrap_or(trace.n_samples)));
    let (per_shard, inputs) = run(py, |cancel| net.backward_shards(&input, &trace.layers, g, &sizes, reg, cancel))?;
    let (ff_shards, rec_shards): (Vec<_>, Vec<_>) = per_shard.into_iter().unzip();
    let n_layers = net.layers.len();
    let mut ff_out = Vec::new();
    let mut rec_out = Vec::new();
    let stacked = shards.is_some();
    for (l, (lg, rg)) in
        net.layers.iter().zip(per_layer(ff_shards, n_layers).into_iter().zip(per_layer(rec_shards, n_layers)))
    {
        ff_out.push(shard_grad_arrays(py, &l.ff, lg, stacked));
        let rg: Option<Vec<_>> = rg.into_iter().collect();
        rec_out.push(match (l.rec, rg) {
            (Some(r), Some(rg)) => Some(shard_grad_arrays(py, &r, rg, stacked)),
            _ => None,
        });
    }
    Ok((ff_out, rec_out, inputs.into_pyarray(py)))
}
