//! Spike data as Python classes: input sets (`SpikeSet`) and the spikes of every layer of a pass
//! (`Trace`), kept on the Rust side and exported to Arrow or numpy on request.

use delgrad_core::{self as core, Spikes};
use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyIndexError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_arrow::input::AnyRecordBatch;
use pyo3_arrow::PyRecordBatch;

use crate::arrays::{matrix, read_table, select_ids, SampleCount, Select};
use crate::errors::{check, run, ShapeError, SpikeError};

/// The spikes of every layer of a network for a batch, kept on the Rust side for the backward
/// pass; exported to Arrow or numpy on request.
#[pyclass(frozen, module = "delgrad._core")]
pub struct Trace {
    pub n_samples: usize,
    pub sizes: Vec<usize>,
    pub layers: Vec<Spikes>,
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
    fn from_tables(
        py: Python<'_>,
        tables: Vec<AnyRecordBatch>,
        sizes: Vec<usize>,
        n_samples: SampleCount,
        mode: &str,
    ) -> PyResult<Self> {
        check(core::model::check_mode("Trace.from_tables", mode))?;
        if tables.len() != sizes.len() {
            return Err(ShapeError::new_err(format!(
                "Trace.from_tables: {} tables for {} layer sizes",
                tables.len(),
                sizes.len()
            )));
        }
        let n_samples = n_samples.0;
        let mut layers = Vec::with_capacity(tables.len());
        for (l, (t, &n)) in tables.into_iter().zip(&sizes).enumerate() {
            let what = format!("layer {l} spikes");
            let t = read_table(t, &what, false)?;
            layers.push(run(py, |_| core::model::recorded_spikes(&t, n_samples, n, mode, &what))?);
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
            Err(PyIndexError::new_err(format!("layer {layer} out of range (the trace has {n} layers)")))
        }
    }

    fn get(&self, layer: isize) -> PyResult<&Spikes> {
        Ok(&self.layers[self.index(layer)?])
    }
}

/// Input spikes validated and grouped by sample once, for repeated batched passes. A batch is
/// a selection of sample indices; the spikes stay in the caller's Arrow buffers.
#[pyclass(frozen, module = "delgrad._core", name = "SpikeSet")]
pub struct PySpikeSet {
    pub inner: core::SpikeSet,
}

#[pymethods]
impl PySpikeSet {
    #[new]
    fn new(py: Python<'_>, spikes: AnyRecordBatch, n_samples: SampleCount) -> PyResult<Self> {
        let table = read_table(spikes, "spikes", false)?;
        let inner = run(py, |_| core::SpikeSet::new(table, n_samples.0))?;
        Ok(Self { inner })
    }
    #[getter]
    fn n_samples(&self) -> usize {
        self.inner.n_samples()
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
    /// The number of spikes of every sample.
    fn spike_counts<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u64>> {
        let g = &self.inner.grouping;
        (0..self.n_samples()).map(|s| g.sample_len(s) as u64).collect::<Vec<_>>().into_pyarray(py)
    }
    /// The spikes of samples `select` (all when None) as one RecordBatch, samples renumbered
    /// `0..len(select)` in the order given. All samples of a table sorted by sample are the
    /// table itself: its buffers are shared, not copied (a memory-mapped split stays mapped).
    #[pyo3(signature = (select=None))]
    fn select(&self, py: Python<'_>, select: Option<Select<'_>>) -> PyResult<Py<PyAny>> {
        if select.is_none() && self.inner.grouping.in_row_order() {
            return Ok(PyRecordBatch::new(self.inner.table.to_record_batch()).into_pyarrow(py)?.unbind());
        }
        let ids = select_ids(&select, &self.inner)?;
        let spikes = run(py, |_| self.inner.gather(ids.as_deref()))?;
        Ok(PyRecordBatch::new(spikes.to_record_batch(None)).into_pyarrow(py)?.unbind())
    }
    fn __repr__(&self) -> String {
        format!("SpikeSet(n_samples={}, n_spikes={})", self.n_samples(), self.n_spikes())
    }
}

impl PySpikeSet {
    /// The batch `select` of this set (all samples for `None`); `ids` from [`select_ids`].
    pub fn input<'a>(&'a self, ids: Option<&'a [u32]>) -> PyResult<core::Input<'a>> {
        check(self.inner.input(ids))
    }
}

/// Data-buffer addresses of the spike columns as the core reads them (zero-copy checks).
#[pyfunction]
pub fn _column_addresses<'py>(py: Python<'py>, spikes: AnyRecordBatch) -> PyResult<Bound<'py, PyDict>> {
    let t = read_table(spikes, "spikes", false)?;
    let d = PyDict::new(py);
    d.set_item("sample", t.sample().as_ptr() as usize)?;
    d.set_item("neuron", t.neuron().as_ptr() as usize)?;
    d.set_item("time", t.time().as_ptr() as usize)?;
    Ok(d)
}
