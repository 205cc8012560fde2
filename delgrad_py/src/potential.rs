//! The exact membrane potential of one neuron from one sample's events (`delgrad inspect`).

use delgrad_core::{self as core, LayerRef};
use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1};
use pyo3::prelude::*;

use crate::arrays::{matrix, LayerArgs};
use crate::errors::{run, ParameterError, ShapeError};
use crate::neuron::PyNeuron;

/// The membrane potential of neuron `target` at `times` (any order; the result is aligned with
/// it), exactly, from one sample's events. `connections` lists what feeds the neuron's layer,
/// each `(source_neurons, source_times, (weights, delay_kind, delays))`: the source layer's spikes
/// in that sample and the connection's parameters (feed-forward, and recurrent for a recurrent
/// layer). `spikes` are the neuron's own spike times; they reset `V` (`mode="multi"` only). `V` is
/// left-continuous: at a spike time it is the value just before the reset. Returns `V` and the
/// neuron's arrivals `(time, weight)`, shape (n, 2), sorted by time.
#[pyfunction]
#[pyo3(signature = (neuron, target, connections, times, spikes = None))]
#[allow(clippy::type_complexity)]
pub fn membrane_potential<'py>(
    py: Python<'py>,
    neuron: &PyNeuron,
    target: usize,
    connections: &Bound<'py, PyAny>,
    times: PyReadonlyArray1<'py, f64>,
    spikes: Option<PyReadonlyArray1<'py, f64>>,
) -> PyResult<(Bound<'py, PyArray1<f64>>, Bound<'py, PyArray2<f64>>)> {
    let contiguous = |what: &str| ShapeError::new_err(format!("membrane_potential: {what} must be contiguous"));
    // The sources are copied (one sample's spikes, small); the parameters are borrowed.
    let mut sources: Vec<Vec<(u32, f64)>> = Vec::new();
    let mut args: Vec<LayerArgs> = Vec::new();
    for (index, item) in connections.try_iter()?.enumerate() {
        let (ids, ts, layer): (PyReadonlyArray1<u32>, PyReadonlyArray1<f64>, Bound<PyAny>) = item?.extract()?;
        let ids = ids.as_slice().map_err(|_| contiguous("source_neurons"))?;
        let ts = ts.as_slice().map_err(|_| contiguous("source_times"))?;
        if ids.len() != ts.len() {
            return Err(ShapeError::new_err(format!(
                "membrane_potential: connection {index} has {} source neurons but {} source times",
                ids.len(),
                ts.len()
            )));
        }
        sources.push(ids.iter().copied().zip(ts.iter().copied()).collect());
        args.push(LayerArgs::extract(&layer)?);
    }
    let layers: Vec<LayerRef> =
        args.iter().enumerate().map(|(k, a)| a.as_ref(&format!("connection {k}"))).collect::<PyResult<_>>()?;
    let times = times.as_slice().map_err(|_| contiguous("times"))?;
    let resets: &[f64] = match &spikes {
        Some(s) => s.as_slice().map_err(|_| contiguous("spikes"))?,
        None => &[],
    };
    if neuron.model.mode() != "multi" && !resets.is_empty() {
        return Err(ParameterError::new_err(
            "membrane_potential: a TTFS neuron does not reset; spikes apply to mode='multi' only",
        ));
    }
    let t_ref = neuron.model.t_ref();
    let n = *neuron.model.neuron();
    let (v, arrivals) = run(py, |_| {
        let mut arrivals = Vec::new();
        for (k, (src, layer)) in sources.iter().zip(&layers).enumerate() {
            core::potential::arrivals_into(layer, target, src, &format!("connection {k}"), &mut arrivals)?;
        }
        let v = core::potential::potential(&n, &mut arrivals, resets, t_ref, times)?;
        Ok((v, arrivals))
    })?;
    let flat: Vec<f64> = arrivals.iter().flat_map(|&(a, w)| [a, w]).collect();
    Ok((v.into_pyarray(py), matrix(py, arrivals.len(), 2, flat)))
}
