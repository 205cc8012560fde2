//! The neuron model as a Python class.

use delgrad_core::{self as core, Model};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::errors::check;

/// The LIF neuron of DESIGN.md: `dV/dt = -V/tau_m + I`, `dI/dt = -I/tau_s`, threshold `theta`.
/// `mode="ttfs"`: first spikes only (DelGrad); `mode="multi"`: reset to 0 after every spike,
/// refractory time `t_ref`, trial end `t_end` (EventProp).
#[pyclass(frozen, module = "delgrad", name = "Neuron", eq)]
#[derive(Clone, PartialEq)]
pub struct PyNeuron {
    pub model: Model,
}

#[pymethods]
impl PyNeuron {
    #[new]
    #[pyo3(signature = (tau_m = 2.0, tau_s = 1.0, theta = 1.0, mode = "ttfs", t_ref = 0.0, t_end = f64::INFINITY))]
    fn new(tau_m: f64, tau_s: f64, theta: f64, mode: &str, t_ref: f64, t_end: f64) -> PyResult<Self> {
        let neuron = check(core::Neuron::new(tau_m, tau_s, theta))?;
        Ok(Self { model: check(Model::new(neuron, mode, t_ref, t_end))? })
    }
    #[getter]
    fn tau_m(&self) -> f64 {
        self.model.neuron().tau_m
    }
    #[getter]
    fn tau_s(&self) -> f64 {
        self.model.neuron().tau_s
    }
    #[getter]
    fn theta(&self) -> f64 {
        self.model.neuron().theta
    }
    #[getter]
    fn mode(&self) -> &'static str {
        self.model.mode()
    }
    #[getter]
    fn t_ref(&self) -> f64 {
        self.model.t_ref()
    }
    #[getter]
    fn t_end(&self) -> f64 {
        self.model.t_end()
    }
    fn __repr__(&self) -> String {
        let n = self.model.neuron();
        match &self.model {
            Model::Ttfs(_) => {
                format!("Neuron(tau_m={:?}, tau_s={:?}, theta={:?}, mode='ttfs')", n.tau_m, n.tau_s, n.theta)
            }
            Model::Multi(m) => format!(
                "Neuron(tau_m={:?}, tau_s={:?}, theta={:?}, mode='multi', t_ref={:?}, t_end={:?})",
                n.tau_m, n.tau_s, n.theta, m.t_ref, m.t_end
            ),
        }
    }
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let me = slf.get();
        let n = me.model.neuron();
        let args = (n.tau_m, n.tau_s, n.theta, me.mode(), me.t_ref(), me.t_end()).into_pyobject(slf.py())?;
        Ok((slf.get_type().into_any(), args))
    }
}
