//! Hardware frames: spike tables as Arrow IPC streams (the protocol's body frames) read from
//! any buffer-protocol object in place, and runs of an emulated chip's input/output stage.

use std::ptr::NonNull;
use std::sync::Arc;

use arrow_buffer::Buffer;
use delgrad_core::{self as core, Network};
use pyo3::buffer::PyUntypedBuffer;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyMemoryView};
use pyo3_arrow::input::AnyRecordBatch;
use pyo3_arrow::PyRecordBatch;

use crate::arrays::{extract_layers, layer_refs, read_table, SampleCount};
use crate::errors::{check, run, FrameError};
use crate::neuron::PyNeuron;

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
    run(py, |_| f(buffer))
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
pub fn read_spike_frame<'py>(
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
pub fn write_spike_frame<'py>(py: Python<'py>, spikes: AnyRecordBatch) -> PyResult<Bound<'py, PyBytes>> {
    let table = read_table(spikes, "spikes", false)?;
    let bytes = run(py, |_| core::frames::write_spike_stream(&table))?;
    Ok(PyBytes::new(py, &bytes))
}

/// A chip's input/output stage (`core::chip::ChipIo`): the event clock's period
/// `time_quantum` (0: continuous), the recording window `[0, duration]`, and `replication`
/// input rows per channel for `n_channels` channels.
#[pyclass(frozen, module = "delgrad._core", name = "ChipIo")]
pub struct PyChipIo {
    inner: core::chip::ChipIo,
}

#[pymethods]
impl PyChipIo {
    #[new]
    #[pyo3(signature = (*, time_quantum, duration, replication, n_channels))]
    fn new(time_quantum: f64, duration: f64, replication: usize, n_channels: usize) -> PyResult<Self> {
        let inner = check(core::chip::ChipIo::new(time_quantum, duration, replication, n_channels))?;
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
pub fn chip_run<'py>(
    py: Python<'py>,
    spikes: AnyRecordBatch,
    n_samples: SampleCount,
    layers: &Bound<'py, PyAny>,
    neuron: &PyNeuron,
    io: &PyChipIo,
) -> PyResult<(Vec<Bound<'py, PyAny>>, Bound<'py, PyDict>)> {
    let table = read_table(spikes, "input spikes", false)?;
    let args = extract_layers(layers)?;
    let net = check(Network::new(check(neuron.model.ttfs("chip_run"))?, layer_refs(&args)?))?;
    let chip = run(py, |_| core::chip::run(&net, &io.inner, &table, n_samples.0))?;
    let batches = chip
        .layers
        .iter()
        .map(|sp| PyRecordBatch::new(sp.to_record_batch(None)).into_pyarrow(py))
        .collect::<PyResult<_>>()?;
    Ok((batches, chip_counts(py, &chip)?))
}

/// [`chip_run`] from and to protocol frames: `frame` is the input spikes as one Arrow IPC
/// stream (bytes-like), the result holds one stream per layer as bytes. Bad frames raise
/// `FrameError` (with the protocol's code) or `SpikeError`.
#[pyfunction]
pub fn chip_run_frames<'py>(
    py: Python<'py>,
    frame: &Bound<'py, PyAny>,
    n_samples: usize,
    layers: &Bound<'py, PyAny>,
    neuron: &PyNeuron,
    io: &PyChipIo,
    max_events: usize,
) -> PyResult<(Vec<Bound<'py, PyBytes>>, Bound<'py, PyDict>)> {
    let args = extract_layers(layers)?;
    let net = check(Network::new(check(neuron.model.ttfs("chip_run_frames"))?, layer_refs(&args)?))?;
    let (chip, frames) = with_frame_buffer(py, frame, "input spikes", |b| {
        core::chip::run_frames(&net, &io.inner, b, n_samples, max_events)
    })?;
    let frames = frames.iter().map(|f| PyBytes::new(py, f)).collect();
    Ok((frames, chip_counts(py, &chip)?))
}
