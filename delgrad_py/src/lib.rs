//! Python bindings of delgrad-core. Only conversion and GIL release live here: Arrow tables come
//! in through the PyCapsule interface (no copy), numpy parameters are borrowed in place, and the
//! work runs with the GIL released through one helper ([`errors::run`]) that also lets Ctrl-C
//! stop it. This file only registers what the topic modules define.

mod arrays;
mod errors;
mod frames;
mod networks;
mod neuron;
mod potential;
mod readout;
mod spikes;

use delgrad_core::DelayKind;
use pyo3::prelude::*;

use crate::errors::{check, FrameError, ParameterError, ShapeError, SpikeError};

/// The shape of the delay array of a layer with weights `(n_out, n_in)` for `kind`
/// (`"none"`: `(0,)`, `"synaptic"`: `(n_out, n_in)`, `"axonal"`: `(n_in,)`, `"dendritic"`:
/// `(n_out,)`), as the core defines it.
#[pyfunction]
fn delay_shape(kind: &str, n_out: usize, n_in: usize) -> PyResult<Vec<usize>> {
    Ok(check(DelayKind::parse(kind))?.shape(n_out, n_in))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<neuron::PyNeuron>()?;
    m.add_class::<spikes::Trace>()?;
    m.add_class::<spikes::PySpikeSet>()?;
    m.add_class::<frames::PyChipIo>()?;
    m.add_function(wrap_pyfunction!(readout::loss, m)?)?;
    m.add_function(wrap_pyfunction!(readout::predict, m)?)?;
    m.add_function(wrap_pyfunction!(networks::layer_forward, m)?)?;
    m.add_function(wrap_pyfunction!(networks::layer_backward, m)?)?;
    m.add_function(wrap_pyfunction!(readout::readout_forward, m)?)?;
    m.add_function(wrap_pyfunction!(readout::readout_backward, m)?)?;
    m.add_function(wrap_pyfunction!(readout::readout_cross_entropy, m)?)?;
    m.add_function(wrap_pyfunction!(networks::multi_network_forward, m)?)?;
    m.add_function(wrap_pyfunction!(networks::multi_network_backward, m)?)?;
    m.add_function(wrap_pyfunction!(networks::network_forward, m)?)?;
    m.add_function(wrap_pyfunction!(networks::network_backward, m)?)?;
    m.add_function(wrap_pyfunction!(frames::read_spike_frame, m)?)?;
    m.add_function(wrap_pyfunction!(frames::write_spike_frame, m)?)?;
    m.add_function(wrap_pyfunction!(frames::chip_run, m)?)?;
    m.add_function(wrap_pyfunction!(frames::chip_run_frames, m)?)?;
    m.add_function(wrap_pyfunction!(spikes::_column_addresses, m)?)?;
    m.add_function(wrap_pyfunction!(potential::membrane_potential, m)?)?;
    m.add_function(wrap_pyfunction!(delay_shape, m)?)?;
    let kinds: Vec<&str> = DelayKind::ALL.iter().map(|k| k.name()).collect();
    m.add("DELAY_KINDS", pyo3::types::PyTuple::new(py, kinds)?)?;
    m.add("MODES", pyo3::types::PyTuple::new(py, delgrad_core::model::MODES)?)?;
    m.add("SpikeError", py.get_type::<SpikeError>())?;
    m.add("ShapeError", py.get_type::<ShapeError>())?;
    m.add("ParameterError", py.get_type::<ParameterError>())?;
    m.add("FrameError", py.get_type::<FrameError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
