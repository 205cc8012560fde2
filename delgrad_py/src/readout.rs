//! Readouts and losses: the leaky-integrator readout of multi-spike networks, its softmax
//! cross-entropy, and the losses on first spike times of TTFS networks.

use delgrad_core::loss::Loss;
use delgrad_core::{self as core, ReadoutKind};
use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArrayDyn, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3_arrow::input::AnyRecordBatch;

use crate::arrays::{matrix, read_table, shard_grad_arrays, LayerArgs, SampleCount};
use crate::errors::{check, run, ShapeError};
use crate::neuron::PyNeuron;

/// Values of a leaky-integrator readout, shape (n_samples, n_out): the maximum voltage over
/// `[0, t_end]` (`kind="max"`) or `(1/t_end) int_0^t_end exp(-t/tau_w) V dt` (`kind="exp_mean"`,
/// `tau_w` defaults to `t_end`).
#[pyfunction]
#[pyo3(signature = (spikes, weights, delays, delay_kind, neuron, n_samples, kind, t_end, tau_w = None))]
#[allow(clippy::too_many_arguments)]
pub fn readout_forward<'py>(
    py: Python<'py>,
    spikes: AnyRecordBatch,
    weights: PyReadonlyArray2<'py, f64>,
    delays: Option<PyReadonlyArrayDyn<'py, f64>>,
    delay_kind: &str,
    neuron: &PyNeuron,
    n_samples: SampleCount,
    kind: &str,
    t_end: f64,
    tau_w: Option<f64>,
) -> PyResult<Bound<'py, PyArray2<f64>>> {
    let table = read_table(spikes, "spikes", false)?;
    let args = LayerArgs::new(weights, delay_kind, delays)?;
    let layer = args.as_ref("readout")?;
    let readout = core::Readout { layer, kind: check(ReadoutKind::parse(kind, tau_w, t_end))?, t_end };
    let n = *neuron.model.neuron();
    let y = run(py, |cancel| readout.forward_table(&n, &table, n_samples.0, cancel))?;
    Ok(matrix(py, n_samples.0, layer.n_out, y))
}

/// Gradients of a readout given `dy = dL/dy` (n_samples, n_out): `(dL/dW, dL/dD, dL/dt per row
/// of spikes)`. With `shards` (sizes of consecutive shards of the batch), `dL/dW` and `dL/dD`
/// have a leading axis over the shards, each shard's as the batch made of it alone gives it.
#[pyfunction]
#[pyo3(signature = (spikes, weights, delays, delay_kind, neuron, n_samples, kind, t_end, dy, tau_w = None, shards = None))]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn readout_backward<'py>(
    py: Python<'py>,
    spikes: AnyRecordBatch,
    weights: PyReadonlyArray2<'py, f64>,
    delays: Option<PyReadonlyArrayDyn<'py, f64>>,
    delay_kind: &str,
    neuron: &PyNeuron,
    n_samples: SampleCount,
    kind: &str,
    t_end: f64,
    dy: PyReadonlyArray2<'py, f64>,
    tau_w: Option<f64>,
    shards: Option<Vec<usize>>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyArray1<f64>>)> {
    let table = read_table(spikes, "spikes", false)?;
    let args = LayerArgs::new(weights, delay_kind, delays)?;
    let layer = args.as_ref("readout")?;
    let readout = core::Readout { layer, kind: check(ReadoutKind::parse(kind, tau_w, t_end))?, t_end };
    let dy = dy.as_slice().map_err(|_| ShapeError::new_err("dy must be C-contiguous"))?;
    let n = *neuron.model.neuron();
    let sizes = shards.clone().unwrap_or_else(|| vec![n_samples.0]);
    let (lg, gin) = run(py, |cancel| readout.backward_table(&n, &table, n_samples.0, dy, &sizes, cancel))?;
    let (gw, gd) = shard_grad_arrays(py, &layer, lg, shards.is_some());
    Ok((gw, gd, gin.into_pyarray(py)))
}

/// Softmax cross-entropy on readout values (n_samples, n_out): `(mean loss, dL/dy, predictions)`.
/// `batch_size`: the rows are a shard of a batch of that many samples; loss and gradient are
/// divided by it (default: the number of rows).
#[pyfunction]
#[pyo3(signature = (values, labels, batch_size = None))]
#[allow(clippy::type_complexity)]
pub fn readout_cross_entropy<'py>(
    py: Python<'py>,
    values: PyReadonlyArray2<'py, f64>,
    labels: PyReadonlyArray1<'py, i64>,
    batch_size: Option<usize>,
) -> PyResult<(f64, Bound<'py, PyArray2<f64>>, Bound<'py, PyArray1<i64>>)> {
    let shape = values.shape().to_vec();
    let v = values.as_slice().map_err(|_| ShapeError::new_err("values must be C-contiguous"))?;
    let l = labels.as_slice().map_err(|_| ShapeError::new_err("labels must be contiguous"))?;
    let n = batch_size.unwrap_or(l.len());
    let (loss, grad, pred) = check(core::readout::cross_entropy_part(v, shape[1], l, n))?;
    Ok((loss, matrix(py, shape[0], shape[1], grad), pred.into_pyarray(py)))
}

/// Loss on first spike times `(n_samples, n_out)` (inf = silent): returns the mean loss,
/// `dL/dt` of the same shape, and the predicted classes (-1 when every output is silent).
#[pyfunction]
#[pyo3(signature = (times, labels, kind, tau_s, t_silent, delta = 0.3, xi = 0.2, alpha = 0.005, beta = 2.7, batch_size = None))]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn loss<'py>(
    py: Python<'py>,
    times: PyReadonlyArray2<'py, f64>,
    labels: PyReadonlyArray1<'py, i64>,
    kind: &str,
    tau_s: f64,
    t_silent: f64,
    delta: f64,
    xi: f64,
    alpha: f64,
    beta: f64,
    batch_size: Option<usize>,
) -> PyResult<(f64, Bound<'py, PyArray2<f64>>, Bound<'py, PyArray1<i64>>)> {
    let loss = check(Loss::parse(kind, delta, xi, alpha, beta))?;
    let shape = times.shape().to_vec();
    let t = times.as_slice().map_err(|_| ShapeError::new_err("times must be C-contiguous"))?;
    let l = labels.as_slice().map_err(|_| ShapeError::new_err("labels must be contiguous"))?;
    if shape[0] != l.len() {
        return Err(ShapeError::new_err(format!("times have {} rows but there are {} labels", shape[0], l.len())));
    }
    let n = batch_size.unwrap_or(l.len());
    let out = check(core::loss::evaluate_part(t, shape[1], l, loss, tau_s, t_silent, n))?;
    Ok((out.loss, matrix(py, shape[0], shape[1], out.grad), out.predictions.into_pyarray(py)))
}

/// Earliest-spiking neuron of each row of `times` (n_samples, n_out); -1 when all are silent.
#[pyfunction]
pub fn predict<'py>(py: Python<'py>, times: PyReadonlyArray2<'py, f64>) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let n_out = times.shape()[1];
    let t = times.as_slice().map_err(|_| ShapeError::new_err("times must be C-contiguous"))?;
    Ok(core::loss::predict(t, n_out).into_pyarray(py))
}
