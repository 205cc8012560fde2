//! Python bindings of delgrad-core. Only conversion and GIL release live here: Arrow tables come
//! in through the PyCapsule interface (no copy), numpy parameters are borrowed in place, and the
//! work runs with the GIL released.

use std::ptr::NonNull;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_buffer::Buffer;
use delgrad_core::loss::Loss;
use delgrad_core::{self as core, DelayKind, LayerGrad, LayerRef, Network, SpikeTable, Spikes};
use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyArrayDyn, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArrayDyn,
    PyUntypedArrayMethods,
};
use pyo3::buffer::PyUntypedBuffer;
use pyo3::create_exception;
use pyo3::exceptions::{PyKeyboardInterrupt, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyMemoryView, PyTuple};
use pyo3_arrow::input::AnyRecordBatch;
use pyo3_arrow::PyRecordBatch;

create_exception!(
    delgrad,
    SpikeError,
    PyValueError,
    "A spike table is malformed (column, null, NaN, id out of range)."
);
create_exception!(delgrad, ShapeError, PyValueError, "Arrays whose shapes do not fit together.");
create_exception!(delgrad, ParameterError, PyValueError, "A parameter value the model cannot use.");
create_exception!(
    delgrad,
    FrameError,
    PyValueError,
    "An Arrow IPC frame that cannot be read as a spike table; `code` is the hardware protocol's \
     error code (bad_frame, bad_schema, too_large)."
);

fn to_py(e: core::Error) -> PyErr {
    match e {
        core::Error::Frame { code, message } => {
            let err = FrameError::new_err(message);
            Python::attach(|py| err.value(py).setattr("code", code.as_str()).map(|_| err)).unwrap_or_else(|e| e)
        }
        core::Error::Spikes(m) => SpikeError::new_err(m),
        core::Error::Shape(m) => ShapeError::new_err(m),
        core::Error::Parameter(m) => ParameterError::new_err(m),
        core::Error::Interrupted => PyKeyboardInterrupt::new_err("interrupted"),
    }
}

/// The LIF neuron of DESIGN.md: `dV/dt = -V/tau_m + I`, `dI/dt = -I/tau_s`, threshold `theta`.
/// `mode="ttfs"`: first spikes only (DelGrad); `mode="multi"`: reset to 0 after every spike,
/// refractory time `t_ref`, trial end `t_end` (EventProp).
#[pyclass(frozen, module = "delgrad", name = "Neuron", eq)]
#[derive(Clone, PartialEq)]
struct PyNeuron {
    inner: core::Neuron,
    multi: Option<core::MultiNeuron>,
}

#[pymethods]
impl PyNeuron {
    #[new]
    #[pyo3(signature = (tau_m = 2.0, tau_s = 1.0, theta = 1.0, mode = "ttfs", t_ref = 0.0, t_end = f64::INFINITY))]
    fn new(tau_m: f64, tau_s: f64, theta: f64, mode: &str, t_ref: f64, t_end: f64) -> PyResult<Self> {
        let inner = core::Neuron::new(tau_m, tau_s, theta).map_err(to_py)?;
        match mode {
            "ttfs" => {
                if t_ref != 0.0 || t_end != f64::INFINITY {
                    return Err(ParameterError::new_err(
                        "neuron: t_ref and t_end belong to mode='multi' (a TTFS neuron spikes once)",
                    ));
                }
                Ok(Self { inner, multi: None })
            }
            "multi" => Ok(Self { inner, multi: Some(core::MultiNeuron::new(inner, t_ref, t_end).map_err(to_py)?) }),
            _ => Err(ParameterError::new_err(format!("neuron: unknown mode '{mode}' (available: 'ttfs', 'multi')"))),
        }
    }
    #[getter]
    fn tau_m(&self) -> f64 {
        self.inner.tau_m
    }
    #[getter]
    fn tau_s(&self) -> f64 {
        self.inner.tau_s
    }
    #[getter]
    fn theta(&self) -> f64 {
        self.inner.theta
    }
    #[getter]
    fn mode(&self) -> &'static str {
        if self.multi.is_some() {
            "multi"
        } else {
            "ttfs"
        }
    }
    #[getter]
    fn t_ref(&self) -> f64 {
        self.multi.map_or(0.0, |m| m.t_ref)
    }
    #[getter]
    fn t_end(&self) -> f64 {
        self.multi.map_or(f64::INFINITY, |m| m.t_end)
    }
    fn __repr__(&self) -> String {
        let n = &self.inner;
        match &self.multi {
            None => format!("Neuron(tau_m={:?}, tau_s={:?}, theta={:?}, mode='ttfs')", n.tau_m, n.tau_s, n.theta),
            Some(m) => format!(
                "Neuron(tau_m={:?}, tau_s={:?}, theta={:?}, mode='multi', t_ref={:?}, t_end={:?})",
                n.tau_m, n.tau_s, n.theta, m.t_ref, m.t_end
            ),
        }
    }
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let me = slf.get();
        let n = me.inner;
        let args = (n.tau_m, n.tau_s, n.theta, me.mode(), me.t_ref(), me.t_end()).into_pyobject(slf.py())?;
        Ok((slf.get_type().into_any(), args))
    }
}

impl PyNeuron {
    /// The TTFS core neuron, or an error naming the call for a multi-spike neuron.
    fn ttfs(&self, what: &str) -> PyResult<core::Neuron> {
        if self.multi.is_some() {
            return Err(ParameterError::new_err(format!(
                "{what}: this call is for TTFS networks; for mode='multi' use multi_network_forward / \
                 multi_network_backward"
            )));
        }
        Ok(self.inner)
    }
}

fn read_table(obj: AnyRecordBatch, what: &str, with_grad: bool) -> PyResult<SpikeTable> {
    let reader = obj.into_reader()?;
    let batches: Vec<RecordBatch> =
        reader.collect::<Result<_, _>>().map_err(|e| SpikeError::new_err(format!("{what}: {e}")))?;
    SpikeTable::from_batches(&batches, what, with_grad).map_err(to_py)
}

/// Borrowed parameters of one layer; the numpy arrays stay alive (and read-only) meanwhile.
struct LayerArgs<'py> {
    weights: PyReadonlyArray2<'py, f64>,
    kind: DelayKind,
    delays: Option<PyReadonlyArrayDyn<'py, f64>>,
}

impl<'py> LayerArgs<'py> {
    fn extract(obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        let (weights, kind, delays): (PyReadonlyArray2<f64>, String, Option<PyReadonlyArrayDyn<f64>>) =
            obj.extract()?;
        Ok(Self { weights, kind: DelayKind::parse(&kind).map_err(to_py)?, delays })
    }
    fn as_ref(&self, what: &str) -> PyResult<LayerRef<'_>> {
        let shape = self.weights.shape();
        let w = self
            .weights
            .as_slice()
            .map_err(|_| ShapeError::new_err(format!("{what}: weights must be C-contiguous")))?;
        let d: &[f64] = match &self.delays {
            Some(d) => d.as_slice().map_err(|_| ShapeError::new_err(format!("{what}: delays must be C-contiguous")))?,
            None => &[],
        };
        if let Some(d) = &self.delays {
            let want_ndim = if self.kind == DelayKind::Synaptic { 2 } else { 1 };
            if self.kind != DelayKind::None && d.ndim() != want_ndim {
                return Err(ShapeError::new_err(format!(
                    "{what}: {} delays must be {want_ndim}-dimensional, got shape {:?}",
                    self.kind.name(),
                    d.shape()
                )));
            }
            if self.kind == DelayKind::Synaptic && d.shape() != shape {
                return Err(ShapeError::new_err(format!(
                    "{what}: synaptic delays have shape {:?}, weights have {:?}",
                    d.shape(),
                    shape
                )));
            }
        }
        LayerRef::new(shape[0], shape[1], w, self.kind, d, what).map_err(to_py)
    }
}

fn delay_grad_array<'py>(py: Python<'py>, layer: &LayerRef, g: Vec<f64>) -> Bound<'py, PyArrayDyn<f64>> {
    let shape = match layer.kind {
        DelayKind::None => vec![0],
        DelayKind::Synaptic => vec![layer.n_out, layer.n_in],
        DelayKind::Axonal => vec![layer.n_in],
        DelayKind::Dendritic => vec![layer.n_out],
    };
    ArrayD::from_shape_vec(IxDyn(&shape), g).expect("gradient has the parameter's shape").into_pyarray(py)
}

fn matrix<'py>(py: Python<'py>, rows: usize, cols: usize, v: Vec<f64>) -> Bound<'py, PyArray2<f64>> {
    numpy::ndarray::Array2::from_shape_vec((rows, cols), v).expect("dense matrix").into_pyarray(py)
}

/// A layer's gradient as numpy arrays: `dW` `(n_out, n_in)` and `dD` in the delays' own shape.
fn grad_arrays<'py>(
    py: Python<'py>,
    layer: &LayerRef,
    g: LayerGrad,
) -> (Bound<'py, PyArray2<f64>>, Bound<'py, PyArrayDyn<f64>>) {
    (matrix(py, layer.n_out, layer.n_in, g.weights), delay_grad_array(py, layer, g.delays))
}

/// The arguments every single-layer call starts from.
fn layer_call<'py>(
    spikes: AnyRecordBatch,
    weights: PyReadonlyArray2<'py, f64>,
    delays: Option<PyReadonlyArrayDyn<'py, f64>>,
    delay_kind: &str,
) -> PyResult<(SpikeTable, LayerArgs<'py>)> {
    let table = read_table(spikes, "spikes", false)?;
    Ok((table, LayerArgs { weights, kind: DelayKind::parse(delay_kind).map_err(to_py)?, delays }))
}

#[pyfunction]
#[pyo3(signature = (spikes, weights, delays, delay_kind, neuron, n_samples))]
fn layer_forward<'py>(
    py: Python<'py>,
    spikes: AnyRecordBatch,
    weights: PyReadonlyArray2<'py, f64>,
    delays: Option<PyReadonlyArrayDyn<'py, f64>>,
    delay_kind: &str,
    neuron: &PyNeuron,
    n_samples: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let (table, args) = layer_call(spikes, weights, delays, delay_kind)?;
    let layer = args.as_ref("layer")?;
    let n = neuron.inner;
    let out = match neuron.multi {
        None => py.detach(|| core::layer_forward(&n, layer, &table, n_samples)),
        Some(m) => py.detach(|| {
            core::multi_network::layer_forward(&m, core::MultiLayer { ff: layer, rec: None }, &table, n_samples)
        }),
    }
    .map_err(to_py)?;
    PyRecordBatch::new(out.to_record_batch(None)).into_pyarrow(py)
}

#[pyfunction]
#[pyo3(signature = (spikes, weights, delays, delay_kind, neuron, out, grad, n_samples))]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn layer_backward<'py>(
    py: Python<'py>,
    spikes: AnyRecordBatch,
    weights: PyReadonlyArray2<'py, f64>,
    delays: Option<PyReadonlyArrayDyn<'py, f64>>,
    delay_kind: &str,
    neuron: &PyNeuron,
    out: AnyRecordBatch,
    grad: PyReadonlyArrayDyn<'py, f64>,
    n_samples: usize,
) -> PyResult<(Bound<'py, PyArray2<f64>>, Bound<'py, PyArrayDyn<f64>>, Bound<'py, PyArray1<f64>>)> {
    let (table, args) = layer_call(spikes, weights, delays, delay_kind)?;
    let out = read_table(out, "out", false)?;
    let layer = args.as_ref("layer")?;
    if grad.ndim() != 1 {
        return Err(ShapeError::new_err(format!("grad must be 1-dimensional, got shape {:?}", grad.shape())));
    }
    let g = grad.as_slice().map_err(|_| ShapeError::new_err("grad must be contiguous"))?;
    let n = neuron.inner;
    let (lg, gin) = match neuron.multi {
        None => py.detach(|| core::layer_backward(&n, layer, &table, n_samples, &out, g)),
        Some(m) => py.detach(|| {
            core::multi_network::layer_backward(
                &m,
                core::MultiLayer { ff: layer, rec: None },
                &table,
                n_samples,
                &out,
                g,
            )
            .map(|(lg, _, gin)| (lg, gin))
        }),
    }
    .map_err(to_py)?;
    let (gw, gd) = grad_arrays(py, &layer, lg);
    Ok((gw, gd, gin.into_pyarray(py)))
}

fn readout_kind(kind: &str, tau_w: Option<f64>, t_end: f64) -> PyResult<core::ReadoutKind> {
    match kind {
        "max" => Ok(core::ReadoutKind::Max),
        "exp_mean" => Ok(core::ReadoutKind::ExpMean { tau_w: tau_w.unwrap_or(t_end) }),
        _ => Err(ParameterError::new_err(format!("readout: unknown kind '{kind}' (available: 'max', 'exp_mean')"))),
    }
}

/// Values of a leaky-integrator readout, shape (n_samples, n_out): the maximum voltage over
/// `[0, t_end]` (`kind="max"`) or `(1/t_end) int_0^t_end exp(-t/tau_w) V dt` (`kind="exp_mean"`,
/// `tau_w` defaults to `t_end`).
#[pyfunction]
#[pyo3(signature = (spikes, weights, delays, delay_kind, neuron, n_samples, kind, t_end, tau_w = None))]
#[allow(clippy::too_many_arguments)]
fn readout_forward<'py>(
    py: Python<'py>,
    spikes: AnyRecordBatch,
    weights: PyReadonlyArray2<'py, f64>,
    delays: Option<PyReadonlyArrayDyn<'py, f64>>,
    delay_kind: &str,
    neuron: &PyNeuron,
    n_samples: usize,
    kind: &str,
    t_end: f64,
    tau_w: Option<f64>,
) -> PyResult<Bound<'py, PyArray2<f64>>> {
    let (table, args) = layer_call(spikes, weights, delays, delay_kind)?;
    let layer = args.as_ref("readout")?;
    table.validate("spikes", n_samples, layer.n_in).map_err(to_py)?;
    let r = core::Readout { layer, kind: readout_kind(kind, tau_w, t_end)?, t_end };
    let n = neuron.inner;
    let y = py
        .detach(|| {
            let (sp, _) = Spikes::from_table(&table, n_samples);
            r.forward(&n, &sp)
        })
        .map_err(to_py)?;
    Ok(matrix(py, n_samples, layer.n_out, y))
}

/// Gradients of a readout given `dy = dL/dy` (n_samples, n_out): `(dL/dW, dL/dD, dL/dt per row
/// of spikes)`.
#[pyfunction]
#[pyo3(signature = (spikes, weights, delays, delay_kind, neuron, n_samples, kind, t_end, dy, tau_w = None))]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn readout_backward<'py>(
    py: Python<'py>,
    spikes: AnyRecordBatch,
    weights: PyReadonlyArray2<'py, f64>,
    delays: Option<PyReadonlyArrayDyn<'py, f64>>,
    delay_kind: &str,
    neuron: &PyNeuron,
    n_samples: usize,
    kind: &str,
    t_end: f64,
    dy: PyReadonlyArray2<'py, f64>,
    tau_w: Option<f64>,
) -> PyResult<(Bound<'py, PyArray2<f64>>, Bound<'py, PyArrayDyn<f64>>, Bound<'py, PyArray1<f64>>)> {
    let (table, args) = layer_call(spikes, weights, delays, delay_kind)?;
    let layer = args.as_ref("readout")?;
    table.validate("spikes", n_samples, layer.n_in).map_err(to_py)?;
    let r = core::Readout { layer, kind: readout_kind(kind, tau_w, t_end)?, t_end };
    let dy = dy.as_slice().map_err(|_| ShapeError::new_err("dy must be C-contiguous"))?;
    let n = neuron.inner;
    let (lg, gin) = py
        .detach(|| {
            let (sp, perm) = Spikes::from_table(&table, n_samples);
            let (lg, g_sorted) = r.backward(&n, &sp, dy)?;
            let mut gin = vec![0.0; g_sorted.len()];
            for (k, &row) in perm.iter().enumerate() {
                gin[row] = g_sorted[k];
            }
            Ok::<_, core::Error>((lg, gin))
        })
        .map_err(to_py)?;
    let (gw, gd) = grad_arrays(py, &layer, lg);
    Ok((gw, gd, gin.into_pyarray(py)))
}

/// Softmax cross-entropy on readout values (n_samples, n_out): `(mean loss, dL/dy, predictions)`.
#[pyfunction]
#[allow(clippy::type_complexity)]
fn readout_cross_entropy<'py>(
    py: Python<'py>,
    values: PyReadonlyArray2<'py, f64>,
    labels: PyReadonlyArray1<'py, i64>,
) -> PyResult<(f64, Bound<'py, PyArray2<f64>>, Bound<'py, PyArray1<i64>>)> {
    let shape = values.shape().to_vec();
    let v = values.as_slice().map_err(|_| ShapeError::new_err("values must be C-contiguous"))?;
    let l = labels.as_slice().map_err(|_| ShapeError::new_err("labels must be contiguous"))?;
    let (loss, grad, pred) = core::readout::cross_entropy(v, shape[1], l).map_err(to_py)?;
    Ok((loss, matrix(py, shape[0], shape[1], grad), pred.into_pyarray(py)))
}

/// The spikes of every layer of a network for a batch, kept on the Rust side for the backward
/// pass; exported to Arrow or numpy on request.
#[pyclass(frozen, module = "delgrad._core")]
struct Trace {
    n_samples: usize,
    sizes: Vec<usize>,
    layers: Vec<Spikes>,
}

#[pymethods]
impl Trace {
    #[getter]
    fn n_samples(&self) -> usize {
        self.n_samples
    }
    #[getter]
    fn sizes(&self) -> Vec<usize> {
        self.sizes.clone()
    }
    #[getter]
    fn n_layers(&self) -> usize {
        self.layers.len()
    }
    fn n_spikes(&self, layer: isize) -> PyResult<usize> {
        Ok(self.get(layer)?.len())
    }
    /// Spikes of one layer as a pyarrow RecordBatch (sample, neuron, time[, layer]).
    #[pyo3(signature = (layer, with_layer = false))]
    fn spikes<'py>(&self, py: Python<'py>, layer: isize, with_layer: bool) -> PyResult<Bound<'py, PyAny>> {
        let sp = self.get(layer)?;
        let tag = with_layer.then_some(self.index(layer)? as u16);
        PyRecordBatch::new(sp.to_record_batch(tag)).into_pyarrow(py)
    }
    /// First spike time of each neuron, shape (n_samples, n_neurons); inf where silent.
    fn first_times<'py>(&self, py: Python<'py>, layer: isize) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let sp = self.get(layer)?;
        let n = self.sizes[self.index(layer)?];
        Ok(matrix(py, self.n_samples, n, sp.first_times(n)))
    }
    /// `grad_times` (n_samples, n_neurons) on first spike times as dL/dt per spike of `layer`
    /// (rows as in `spikes(layer)`): the first spike of each neuron gets its entry, later ones 0.
    /// How a spike-time loss reaches a multi-spike layer's EventProp backward.
    fn first_time_grad<'py>(
        &self,
        py: Python<'py>,
        layer: isize,
        grad_times: PyReadonlyArray2<'py, f64>,
    ) -> PyResult<Bound<'py, PyArray1<f64>>> {
        let sp = self.get(layer)?;
        let n = self.sizes[self.index(layer)?];
        if grad_times.shape() != [self.n_samples, n] {
            return Err(ShapeError::new_err(format!(
                "grad_times has shape {:?}, expected (n_samples, n_neurons) = ({}, {n})",
                grad_times.shape(),
                self.n_samples
            )));
        }
        let dense = grad_times.as_slice().map_err(|_| ShapeError::new_err("grad_times must be C-contiguous"))?;
        if let Some(k) = dense.iter().position(|g| !g.is_finite()) {
            return Err(SpikeError::new_err(format!("grad_times: entry {k} is {} (must be finite)", dense[k])));
        }
        Ok(sp.gather_first(dense, n).into_pyarray(py))
    }
    /// Spikes recorded elsewhere (hardware): one table per layer, ids checked against `sizes`.
    #[staticmethod]
    #[pyo3(signature = (tables, sizes, n_samples, mode = "ttfs"))]
    fn from_tables(tables: Vec<AnyRecordBatch>, sizes: Vec<usize>, n_samples: usize, mode: &str) -> PyResult<Self> {
        if mode != "ttfs" && mode != "multi" {
            return Err(ParameterError::new_err(format!("Trace.from_tables: unknown mode '{mode}'")));
        }
        if tables.len() != sizes.len() {
            return Err(ShapeError::new_err(format!(
                "Trace.from_tables: {} tables for {} layer sizes",
                tables.len(),
                sizes.len()
            )));
        }
        let mut layers = Vec::with_capacity(tables.len());
        for (l, (t, &n)) in tables.into_iter().zip(&sizes).enumerate() {
            let what = format!("layer {l} spikes");
            let t = read_table(t, &what, false)?;
            t.validate(&what, n_samples, n).map_err(to_py)?;
            let (sp, _) = Spikes::from_table(&t, n_samples);
            if mode == "multi" {
                core::multi_network::check_multi_spikes(&sp, n_samples, n, &what).map_err(to_py)?;
            } else {
                core::network::check_spikes(&sp, n_samples, n, &what).map_err(to_py)?;
            }
            layers.push(sp);
        }
        Ok(Self { n_samples, sizes, layers })
    }
}

impl Trace {
    /// A layer index, counting from the end when negative (as Python sequences do).
    fn index(&self, layer: isize) -> PyResult<usize> {
        let n = self.layers.len() as isize;
        let l = if layer < 0 { layer + n } else { layer };
        if (0..n).contains(&l) {
            Ok(l as usize)
        } else {
            Err(pyo3::exceptions::PyIndexError::new_err(format!(
                "layer {layer} out of range (the trace has {n} layers)"
            )))
        }
    }

    fn get(&self, layer: isize) -> PyResult<&Spikes> {
        Ok(&self.layers[self.index(layer)?])
    }
}

fn extract_layers<'py>(layers: &Bound<'py, PyAny>) -> PyResult<Vec<LayerArgs<'py>>> {
    layers.try_iter()?.map(|l| LayerArgs::extract(&l?)).collect()
}

fn layer_refs<'a>(args: &'a [LayerArgs]) -> PyResult<Vec<LayerRef<'a>>> {
    args.iter().enumerate().map(|(l, a)| a.as_ref(&format!("layer {l}"))).collect()
}

/// Input spikes validated and grouped by sample once, for repeated batched passes. A batch is
/// a selection of sample indices; the spikes stay in the caller's Arrow buffers.
#[pyclass(frozen, module = "delgrad._core", name = "SpikeSet")]
struct PySpikeSet {
    inner: core::SpikeSet,
}

#[pymethods]
impl PySpikeSet {
    #[new]
    fn new(py: Python<'_>, spikes: AnyRecordBatch, n_samples: usize) -> PyResult<Self> {
        let table = read_table(spikes, "spikes", false)?;
        let inner = py.detach(|| core::SpikeSet::new(table, n_samples)).map_err(to_py)?;
        Ok(Self { inner })
    }
    #[getter]
    fn n_samples(&self) -> usize {
        self.inner.grouping.n_samples()
    }
    #[getter]
    fn n_spikes(&self) -> usize {
        self.inner.table.len()
    }
    #[getter]
    fn n_channels(&self) -> usize {
        self.inner.n_channels
    }
    fn __len__(&self) -> usize {
        self.n_samples()
    }
    /// The spikes of samples `select` (all when None) as one RecordBatch, samples renumbered
    /// `0..len(select)` in the order given.
    #[pyo3(signature = (select=None))]
    fn select(&self, py: Python<'_>, select: Option<PyReadonlyArray1<'_, u32>>) -> PyResult<Py<PyAny>> {
        let sel = select_slice(&select)?;
        let spikes = py.detach(|| self.inner.gather(sel)).map_err(to_py)?;
        Ok(PyRecordBatch::new(spikes.to_record_batch(None)).into_pyarrow(py)?.unbind())
    }
    fn __repr__(&self) -> String {
        format!("SpikeSet(n_samples={}, n_spikes={})", self.n_samples(), self.n_spikes())
    }
}

fn select_slice<'a>(select: &'a Option<PyReadonlyArray1<'_, u32>>) -> PyResult<Option<&'a [u32]>> {
    select.as_ref().map(|a| a.as_slice().map_err(|_| ShapeError::new_err("select must be contiguous"))).transpose()
}

/// The batch `select` of `spikes`, checked to be the batch `trace` was recorded for.
fn trace_batch<'a>(
    spikes: &'a PySpikeSet,
    select: &'a Option<PyReadonlyArray1<'_, u32>>,
    trace: &Trace,
) -> PyResult<core::Input<'a>> {
    let input = spikes.inner.input(select_slice(select)?).map_err(to_py)?;
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
fn network_forward(
    py: Python<'_>,
    spikes: &PySpikeSet,
    select: Option<PyReadonlyArray1<'_, u32>>,
    layers: &Bound<'_, PyAny>,
    neuron: &PyNeuron,
) -> PyResult<Trace> {
    let args = extract_layers(layers)?;
    let net = Network::new(neuron.ttfs("network")?, layer_refs(&args)?).map_err(to_py)?;
    let input = spikes.inner.input(select_slice(&select)?).map_err(to_py)?;
    let sizes = net.layers.iter().map(|l| l.n_out).collect();
    let n_samples = input.n_samples();
    let out = py.detach(|| net.forward(&input)).map_err(to_py)?;
    Ok(Trace { n_samples, sizes, layers: out })
}

/// Gradients for a network given `grad_times`, `dL/dT` on the output layer's first spike times,
/// shape (n_samples, n_out) (entries of silent neurons are ignored).
#[pyfunction]
#[pyo3(signature = (spikes, select, layers, neuron, trace, grad_times, min_slope=None))]
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn network_backward<'py>(
    py: Python<'py>,
    spikes: &PySpikeSet,
    select: Option<PyReadonlyArray1<'py, u32>>,
    layers: &Bound<'py, PyAny>,
    neuron: &PyNeuron,
    trace: &Trace,
    grad_times: PyReadonlyArray2<'py, f64>,
    min_slope: Option<f64>,
) -> PyResult<(Vec<(Bound<'py, PyArray2<f64>>, Bound<'py, PyArrayDyn<f64>>)>, Bound<'py, PyArray1<f64>>)> {
    let args = extract_layers(layers)?;
    let mut net = Network::new(neuron.ttfs("network")?, layer_refs(&args)?).map_err(to_py)?;
    if let Some(m) = min_slope {
        net = net.with_min_slope(m).map_err(to_py)?;
    }
    let input = trace_batch(spikes, &select, trace)?;
    let n_out = *trace.sizes.last().expect("a trace has layers");
    if grad_times.shape() != [trace.n_samples, n_out] {
        return Err(ShapeError::new_err(format!(
            "grad_times has shape {:?}, expected (n_samples, n_out) = ({}, {n_out})",
            grad_times.shape(),
            trace.n_samples
        )));
    }
    let dense = grad_times.as_slice().map_err(|_| ShapeError::new_err("grad_times must be C-contiguous"))?;
    let g = py
        .detach(|| {
            let rows = trace.layers.last().expect("layers").gather(dense, n_out);
            net.backward(&input, &trace.layers, &rows)
        })
        .map_err(to_py)?;
    let grads = net.layers.iter().zip(g.layers).map(|(l, lg)| grad_arrays(py, l, lg)).collect();
    Ok((grads, g.inputs.into_pyarray(py)))
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
    let m =
        neuron.multi.ok_or_else(|| ParameterError::new_err("multi_network_*: the neuron must have mode='multi'"))?;
    let mut layers = Vec::with_capacity(ff.len());
    for (l, (f, r)) in ff.iter().zip(rec).enumerate() {
        let ff = f.as_ref(&format!("layer {l}"))?;
        let rec = r.as_ref().map(|r| r.as_ref(&format!("layer {l} recurrent"))).transpose()?;
        layers.push(core::MultiLayer { ff, rec });
    }
    core::MultiNetwork::new(m, layers).map_err(to_py)
}

/// Every spike of every layer of a multi-spike network (feed-forward and, where
/// `recurrent[l]` is given as `(weights (n, n), delay_kind, delays)`, recurrent layers).
#[pyfunction]
#[pyo3(signature = (spikes, select, layers, neuron, recurrent = None))]
fn multi_network_forward(
    py: Python<'_>,
    spikes: &PySpikeSet,
    select: Option<PyReadonlyArray1<'_, u32>>,
    layers: &Bound<'_, PyAny>,
    neuron: &PyNeuron,
    recurrent: Option<Bound<'_, PyAny>>,
) -> PyResult<Trace> {
    let ff = extract_layers(layers)?;
    let rec = extract_recurrent(&recurrent, ff.len())?;
    let net = multi_net(neuron, &ff, &rec)?;
    let input = spikes.inner.input(select_slice(&select)?).map_err(to_py)?;
    let sizes = net.layers.iter().map(|l| l.ff.n_out).collect();
    let n_samples = input.n_samples();
    let out = py.detach(|| net.forward(&input)).map_err(to_py)?;
    Ok(Trace { n_samples, sizes, layers: out })
}

/// EventProp gradients of a multi-spike network given `grad_spikes`, `dL/dt` of every spike of
/// the last layer in the row order of `trace.spikes(-1)`. Returns the feed-forward
/// `(dW, dD)` per layer, the recurrent `(dW, dD)` per layer (None for feed-forward layers) and
/// `dL/dt` of each input spike row.
#[pyfunction]
#[pyo3(signature = (spikes, select, layers, neuron, trace, grad_spikes, recurrent = None))]
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn multi_network_backward<'py>(
    py: Python<'py>,
    spikes: &PySpikeSet,
    select: Option<PyReadonlyArray1<'py, u32>>,
    layers: &Bound<'py, PyAny>,
    neuron: &PyNeuron,
    trace: &Trace,
    grad_spikes: PyReadonlyArray1<'py, f64>,
    recurrent: Option<Bound<'py, PyAny>>,
) -> PyResult<(
    Vec<(Bound<'py, PyArray2<f64>>, Bound<'py, PyArrayDyn<f64>>)>,
    Vec<Option<(Bound<'py, PyArray2<f64>>, Bound<'py, PyArrayDyn<f64>>)>>,
    Bound<'py, PyArray1<f64>>,
)> {
    let ff = extract_layers(layers)?;
    let rec = extract_recurrent(&recurrent, ff.len())?;
    let net = multi_net(neuron, &ff, &rec)?;
    let input = trace_batch(spikes, &select, trace)?;
    let g = grad_spikes.as_slice().map_err(|_| ShapeError::new_err("grad_spikes must be contiguous"))?;
    let grads = py.detach(|| net.backward(&input, &trace.layers, g)).map_err(to_py)?;
    let mut ff_out = Vec::new();
    let mut rec_out = Vec::new();
    for (l, (lg, rg)) in net.layers.iter().zip(grads.layers.into_iter().zip(grads.rec)) {
        ff_out.push(grad_arrays(py, &l.ff, lg));
        rec_out.push(match (l.rec, rg) {
            (Some(r), Some(rg)) => Some(grad_arrays(py, &r, rg)),
            _ => None,
        });
    }
    Ok((ff_out, rec_out, grads.inputs.into_pyarray(py)))
}

/// Loss on first spike times `(n_samples, n_out)` (inf = silent): returns the mean loss,
/// `dL/dt` of the same shape, and the predicted classes (-1 when every output is silent).
#[pyfunction]
#[pyo3(signature = (times, labels, kind, tau_s, t_silent, delta = 0.3, xi = 0.2, alpha = 0.005, beta = 2.7))]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn loss<'py>(
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
) -> PyResult<(f64, Bound<'py, PyArray2<f64>>, Bound<'py, PyArray1<i64>>)> {
    let loss = match kind {
        "mse" => Loss::Mse { delta },
        "ce" | "cross_entropy" => Loss::CrossEntropy { xi, alpha, beta },
        _ => return Err(ParameterError::new_err(format!("unknown loss '{kind}' (expected 'mse' or 'ce')"))),
    };
    let shape = times.shape().to_vec();
    let t = times.as_slice().map_err(|_| ShapeError::new_err("times must be C-contiguous"))?;
    let l = labels.as_slice().map_err(|_| ShapeError::new_err("labels must be contiguous"))?;
    if shape[0] != l.len() {
        return Err(ShapeError::new_err(format!("times have {} rows but there are {} labels", shape[0], l.len())));
    }
    let out = core::loss::evaluate(t, shape[1], l, loss, tau_s, t_silent).map_err(to_py)?;
    Ok((out.loss, matrix(py, shape[0], shape[1], out.grad), out.predictions.into_pyarray(py)))
}

/// Earliest-spiking neuron of each row of `times` (n_samples, n_out); -1 when all are silent.
#[pyfunction]
fn predict<'py>(py: Python<'py>, times: PyReadonlyArray2<'py, f64>) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let n_out = times.shape()[1];
    let t = times.as_slice().map_err(|_| ShapeError::new_err("times must be C-contiguous"))?;
    Ok(core::loss::predict(t, n_out).into_pyarray(py))
}

/// `f` on the contents of a buffer-protocol object (bytes, memoryview, zmq.Frame,
/// pyarrow.Buffer) as an Arrow buffer, with the GIL released. A read-only buffer is used in
/// place (the Arrow buffer keeps the Python buffer exported for as long as it lives, e.g. in
/// the columns decoded from it); a writable one (bytearray) is copied first, since it could
/// change under the decoded columns.
fn with_frame_buffer<T: Send>(
    py: Python<'_>,
    frame: &Bound<'_, PyAny>,
    what: &str,
    f: impl FnOnce(Buffer) -> core::Result<T> + Send,
) -> PyResult<T> {
    // Some exporters (zmq.Frame) give no strides, which PyO3's buffer requires; a memoryview
    // of them does.
    let buf = match PyUntypedBuffer::get(frame) {
        Ok(b) => b,
        Err(_) => PyUntypedBuffer::get(PyMemoryView::from(frame)?.as_any())?,
    };
    if !buf.is_c_contiguous() {
        return Err(FrameError::new_err(format!("{what}: the frame's buffer is not contiguous")));
    }
    let (ptr, len) = (buf.buf_ptr() as *mut u8, buf.len_bytes());
    let buffer = match NonNull::new(ptr) {
        // SAFETY: `len` bytes at `ptr` stay valid and unchanged while the exporter's buffer is
        // held, which the owner (the buffer itself) ensures; read-only means no writer.
        Some(p) if buf.readonly() => unsafe {
            Buffer::from_custom_allocation(p, len, Arc::new(ExportedBuffer { _export: buf }))
        },
        // SAFETY: as above, for the duration of the copy (the GIL is held).
        _ => Buffer::from(if len == 0 { &[][..] } else { unsafe { std::slice::from_raw_parts(ptr, len) } }),
    };
    py.detach(|| f(buffer)).map_err(to_py)
}

/// A Python buffer export owned by an Arrow buffer: held for its `Drop`, which releases the
/// export (taking the GIL) once no column refers to the memory any more.
struct ExportedBuffer {
    _export: PyUntypedBuffer,
}

impl std::panic::RefUnwindSafe for ExportedBuffer {}

/// Reads one Arrow IPC stream frame (any object with the buffer protocol: bytes, memoryview,
/// zmq.Frame, pyarrow.Buffer) into a spike RecordBatch, checked like every table entering the
/// core; with `n_samples` / `n_neurons`, ids are checked against them too.
#[pyfunction]
#[pyo3(signature = (frame, what = "spikes", n_samples = None, n_neurons = None, max_rows = None))]
fn read_spike_frame<'py>(
    py: Python<'py>,
    frame: &Bound<'py, PyAny>,
    what: &str,
    n_samples: Option<usize>,
    n_neurons: Option<usize>,
    max_rows: Option<usize>,
) -> PyResult<Bound<'py, PyAny>> {
    let table = with_frame_buffer(py, frame, what, |buffer| {
        let t = core::frames::read_spike_buffer(buffer, what, max_rows)?;
        t.validate(what, n_samples.unwrap_or(usize::MAX), n_neurons.unwrap_or(usize::MAX))?;
        Ok(t)
    })?;
    PyRecordBatch::new(table.to_record_batch()).into_pyarrow(py)
}

/// A spike table (pyarrow RecordBatch/Table, polars DataFrame) as one Arrow IPC stream, with
/// the schema's own column types (other integer and float widths are cast).
#[pyfunction]
fn write_spike_frame<'py>(py: Python<'py>, spikes: AnyRecordBatch) -> PyResult<Bound<'py, PyBytes>> {
    let table = read_table(spikes, "spikes", false)?;
    let bytes = py.detach(|| core::frames::write_spike_stream(&table)).map_err(to_py)?;
    Ok(PyBytes::new(py, &bytes))
}

/// A chip's input/output stage (`core::chip::ChipIo`): the event clock's period
/// `time_quantum` (0: continuous), the recording window `[0, duration]`, and `replication`
/// input rows per channel for `n_channels` channels.
#[pyclass(frozen, module = "delgrad._core", name = "ChipIo")]
struct PyChipIo {
    inner: core::chip::ChipIo,
}

#[pymethods]
impl PyChipIo {
    #[new]
    #[pyo3(signature = (*, time_quantum, duration, replication, n_channels))]
    fn new(time_quantum: f64, duration: f64, replication: usize, n_channels: usize) -> PyResult<Self> {
        let inner = core::chip::ChipIo::new(time_quantum, duration, replication, n_channels).map_err(to_py)?;
        Ok(Self { inner })
    }
    #[getter]
    fn time_quantum(&self) -> f64 {
        self.inner.time_quantum
    }
    #[getter]
    fn duration(&self) -> f64 {
        self.inner.duration
    }
    #[getter]
    fn replication(&self) -> usize {
        self.inner.replication
    }
    #[getter]
    fn n_channels(&self) -> usize {
        self.inner.n_channels
    }
    fn __repr__(&self) -> String {
        let c = &self.inner;
        format!(
            "ChipIo(time_quantum={:?}, duration={:?}, replication={}, n_channels={})",
            c.time_quantum, c.duration, c.replication, c.n_channels
        )
    }
}

/// What a chip run played and lost, as the health counters of the protocol name them.
fn chip_counts<'py>(py: Python<'py>, run: &core::chip::ChipRun) -> PyResult<Bound<'py, PyDict>> {
    let counts = PyDict::new(py);
    counts.set_item("input_events", run.input_events)?;
    counts.set_item("dropped_inputs", run.dropped_inputs)?;
    counts.set_item("played_events", run.played_events)?;
    counts.set_item("recorded_events", run.layers.iter().map(|l| l.len()).collect::<Vec<_>>())?;
    counts.set_item("lost_per_layer", run.lost_per_layer.clone())?;
    Ok(counts)
}

/// One run on an emulated chip: input window, event clock and replication on the way in, the
/// exact forward pass of `layers`, event clock and window on the way out (`core::chip`).
/// Returns the recorded spikes of every layer and the counts of what was played and lost.
#[pyfunction]
fn chip_run<'py>(
    py: Python<'py>,
    spikes: AnyRecordBatch,
    n_samples: usize,
    layers: &Bound<'py, PyAny>,
    neuron: &PyNeuron,
    io: &PyChipIo,
) -> PyResult<(Vec<Bound<'py, PyAny>>, Bound<'py, PyDict>)> {
    let table = read_table(spikes, "input spikes", false)?;
    let args = extract_layers(layers)?;
    let net = Network::new(neuron.ttfs("chip_run")?, layer_refs(&args)?).map_err(to_py)?;
    let run = py.detach(|| core::chip::run(&net, &io.inner, &table, n_samples)).map_err(to_py)?;
    let batches = run
        .layers
        .iter()
        .map(|sp| PyRecordBatch::new(sp.to_record_batch(None)).into_pyarrow(py))
        .collect::<PyResult<_>>()?;
    Ok((batches, chip_counts(py, &run)?))
}

/// [`chip_run`] from and to protocol frames: `frame` is the input spikes as one Arrow IPC
/// stream (bytes-like), the result holds one stream per layer as bytes. Bad frames raise
/// `FrameError` (with the protocol's code) or `SpikeError`.
#[pyfunction]
fn chip_run_frames<'py>(
    py: Python<'py>,
    frame: &Bound<'py, PyAny>,
    n_samples: usize,
    layers: &Bound<'py, PyAny>,
    neuron: &PyNeuron,
    io: &PyChipIo,
    max_events: usize,
) -> PyResult<(Vec<Bound<'py, PyBytes>>, Bound<'py, PyDict>)> {
    let args = extract_layers(layers)?;
    let net = Network::new(neuron.ttfs("chip_run_frames")?, layer_refs(&args)?).map_err(to_py)?;
    let (run, frames) = with_frame_buffer(py, frame, "input spikes", |b| {
        core::chip::run_frames(&net, &io.inner, b, n_samples, max_events)
    })?;
    let frames = frames.iter().map(|f| PyBytes::new(py, f)).collect();
    Ok((frames, chip_counts(py, &run)?))
}

/// Data-buffer addresses of the spike columns as the core reads them (zero-copy checks).
#[pyfunction]
fn _column_addresses<'py>(py: Python<'py>, spikes: AnyRecordBatch) -> PyResult<Bound<'py, PyDict>> {
    let t = read_table(spikes, "spikes", false)?;
    let d = PyDict::new(py);
    d.set_item("sample", t.sample().as_ptr() as usize)?;
    d.set_item("neuron", t.neuron().as_ptr() as usize)?;
    d.set_item("time", t.time().as_ptr() as usize)?;
    Ok(d)
}

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
fn membrane_potential<'py>(
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
    if neuron.multi.is_none() && !resets.is_empty() {
        return Err(ParameterError::new_err(
            "membrane_potential: a TTFS neuron does not reset; spikes apply to mode='multi' only",
        ));
    }
    let t_ref = neuron.t_ref();
    let n = neuron.inner;
    let (v, arrivals) = py
        .detach(|| {
            let mut arrivals = Vec::new();
            for (k, (src, layer)) in sources.iter().zip(&layers).enumerate() {
                core::potential::arrivals_into(layer, target, src, &format!("connection {k}"), &mut arrivals)?;
            }
            let v = core::potential::potential(&n, &mut arrivals, resets, t_ref, times)?;
            Ok::<_, core::Error>((v, arrivals))
        })
        .map_err(to_py)?;
    let flat: Vec<f64> = arrivals.iter().flat_map(|&(a, w)| [a, w]).collect();
    Ok((v.into_pyarray(py), matrix(py, arrivals.len(), 2, flat)))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<PyNeuron>()?;
    m.add_class::<Trace>()?;
    m.add_class::<PySpikeSet>()?;
    m.add_class::<PyChipIo>()?;
    m.add_function(wrap_pyfunction!(loss, m)?)?;
    m.add_function(wrap_pyfunction!(predict, m)?)?;
    m.add_function(wrap_pyfunction!(layer_forward, m)?)?;
    m.add_function(wrap_pyfunction!(layer_backward, m)?)?;
    m.add_function(wrap_pyfunction!(readout_forward, m)?)?;
    m.add_function(wrap_pyfunction!(readout_backward, m)?)?;
    m.add_function(wrap_pyfunction!(readout_cross_entropy, m)?)?;
    m.add_function(wrap_pyfunction!(multi_network_forward, m)?)?;
    m.add_function(wrap_pyfunction!(multi_network_backward, m)?)?;
    m.add_function(wrap_pyfunction!(network_forward, m)?)?;
    m.add_function(wrap_pyfunction!(network_backward, m)?)?;
    m.add_function(wrap_pyfunction!(read_spike_frame, m)?)?;
    m.add_function(wrap_pyfunction!(write_spike_frame, m)?)?;
    m.add_function(wrap_pyfunction!(chip_run, m)?)?;
    m.add_function(wrap_pyfunction!(chip_run_frames, m)?)?;
    m.add_function(wrap_pyfunction!(_column_addresses, m)?)?;
    m.add_function(wrap_pyfunction!(membrane_potential, m)?)?;
    m.add("SpikeError", py.get_type::<SpikeError>())?;
    m.add("ShapeError", py.get_type::<ShapeError>())?;
    m.add("ParameterError", py.get_type::<ParameterError>())?;
    m.add("FrameError", py.get_type::<FrameError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
