//! Conversions between Python objects and the core's inputs and outputs: Arrow spike tables
//! (PyCapsule interface, no copy), numpy parameters (borrowed in place), batch sizes and sample
//! selections, gradient arrays.

use std::borrow::Cow;

use arrow_array::RecordBatch;
use delgrad_core::{self as core, DelayKind, LayerGrad, LayerRef, SpikeTable};
use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyArrayDyn, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArrayDyn,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::PyInt;
use pyo3_arrow::input::AnyRecordBatch;

use crate::errors::{check, ShapeError, SpikeError};

/// A spike table from any Arrow source (pyarrow RecordBatch/Table, polars DataFrame).
pub fn read_table(obj: AnyRecordBatch, what: &str, with_grad: bool) -> PyResult<SpikeTable> {
    let reader = obj.into_reader()?;
    let batches: Vec<RecordBatch> =
        reader.collect::<Result<_, _>>().map_err(|e| SpikeError::new_err(format!("{what}: {e}")))?;
    check(SpikeTable::from_batches(&batches, what, with_grad))
}

/// A batch size: a Python int in `0..=2**32` (larger ones are refused by the core before any
/// allocation). A negative or huge int is a `ShapeError` naming it, not an `OverflowError`.
#[derive(Debug, Clone, Copy)]
pub struct SampleCount(pub usize);

impl<'a, 'py> FromPyObject<'a, 'py> for SampleCount {
    type Error = PyErr;
    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        match obj.extract::<usize>() {
            Ok(n) => Ok(Self(n)),
            Err(_) if obj.is_instance_of::<PyInt>() => Err(ShapeError::new_err(format!(
                "n_samples = {} is not a number of samples (expected 0 <= n_samples <= 2**32)",
                &*obj
            ))),
            Err(e) => Err(e),
        }
    }
}

/// Sample ids choosing a batch from a `SpikeSet`: a 1-d numpy array of `uint32` (used in place)
/// or of `int64` / `uint64` (checked against the set before narrowing, so that `2**32` is an
/// error rather than sample 0).
pub enum Select<'py> {
    U32(PyReadonlyArray1<'py, u32>),
    I64(PyReadonlyArray1<'py, i64>),
    U64(PyReadonlyArray1<'py, u64>),
}

impl<'a, 'py> FromPyObject<'a, 'py> for Select<'py> {
    type Error = PyErr;
    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        if let Ok(a) = obj.extract() {
            return Ok(Self::U32(a));
        }
        if let Ok(a) = obj.extract() {
            return Ok(Self::I64(a));
        }
        if let Ok(a) = obj.extract() {
            return Ok(Self::U64(a));
        }
        Err(ShapeError::new_err("select must be a 1-d numpy array of uint32, int64 or uint64 sample ids"))
    }
}

fn contiguous<'s, T: numpy::Element>(a: &'s PyReadonlyArray1<'_, T>) -> PyResult<&'s [T]> {
    a.as_slice().map_err(|_| ShapeError::new_err("select must be contiguous"))
}

/// The ids of `select` for `set` (`None`: every sample). Range checks of `uint32` ids happen
/// when the batch is formed ([`core::SpikeSet::input`]).
pub fn select_ids<'a>(select: &'a Option<Select>, set: &core::SpikeSet) -> PyResult<Option<Cow<'a, [u32]>>> {
    Ok(match select {
        None => None,
        Some(Select::U32(a)) => Some(Cow::Borrowed(contiguous(a)?)),
        Some(Select::I64(a)) => Some(Cow::Owned(check(set.select_ids(contiguous(a)?))?)),
        Some(Select::U64(a)) => Some(Cow::Owned(check(set.select_ids(contiguous(a)?))?)),
    })
}

/// Borrowed parameters of one layer; the numpy arrays stay alive (and read-only) meanwhile.
pub struct LayerArgs<'py> {
    weights: PyReadonlyArray2<'py, f64>,
    kind: DelayKind,
    delays: Option<PyReadonlyArrayDyn<'py, f64>>,
}

impl<'py> LayerArgs<'py> {
    pub fn new(
        weights: PyReadonlyArray2<'py, f64>,
        delay_kind: &str,
        delays: Option<PyReadonlyArrayDyn<'py, f64>>,
    ) -> PyResult<Self> {
        Ok(Self { weights, kind: check(DelayKind::parse(delay_kind))?, delays })
    }

    /// From a `(weights, delay_kind, delays)` tuple.
    pub fn extract(obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        let (weights, kind, delays): (PyReadonlyArray2<f64>, String, Option<PyReadonlyArrayDyn<f64>>) =
            obj.extract()?;
        Self::new(weights, &kind, delays)
    }

    pub fn as_ref(&self, what: &str) -> PyResult<LayerRef<'_>> {
        let w = self
            .weights
            .as_slice()
            .map_err(|_| ShapeError::new_err(format!("{what}: weights must be C-contiguous")))?;
        let (d, d_shape): (&[f64], _) = match &self.delays {
            Some(d) => (
                d.as_slice().map_err(|_| ShapeError::new_err(format!("{what}: delays must be C-contiguous")))?,
                Some(d.shape()),
            ),
            None => (&[], None),
        };
        check(LayerRef::from_arrays(self.weights.shape(), w, self.kind, d_shape, d, what))
    }
}

/// The layers of a network from a sequence of `(weights, delay_kind, delays)` tuples.
pub fn extract_layers<'py>(layers: &Bound<'py, PyAny>) -> PyResult<Vec<LayerArgs<'py>>> {
    layers.try_iter()?.map(|l| LayerArgs::extract(&l?)).collect()
}

pub fn layer_refs<'a>(args: &'a [LayerArgs]) -> PyResult<Vec<LayerRef<'a>>> {
    args.iter().enumerate().map(|(l, a)| a.as_ref(&format!("layer {l}"))).collect()
}

/// `(dL/dW, dL/dD)` of one layer.
pub type GradPair<'py> = (Bound<'py, PyArray2<f64>>, Bound<'py, PyArrayDyn<f64>>);
/// `dL/dW` and `dL/dD` of one layer, one array each or stacked over shards ([`shard_grad_arrays`]).
pub type AnyPair<'py> = (Bound<'py, PyAny>, Bound<'py, PyAny>);
/// `(dL/dW, dL/dD, dL/dt per input row)` of one layer.
pub type LayerGrads<'py> = (Bound<'py, PyArray2<f64>>, Bound<'py, PyArrayDyn<f64>>, Bound<'py, PyArray1<f64>>);

/// A dense `(rows, cols)` matrix.
pub fn matrix<'py>(py: Python<'py>, rows: usize, cols: usize, v: Vec<f64>) -> Bound<'py, PyArray2<f64>> {
    numpy::ndarray::Array2::from_shape_vec((rows, cols), v).expect("dense matrix").into_pyarray(py)
}

/// A layer's gradient as numpy arrays: `dW` `(n_out, n_in)` and `dD` in the delays' own shape.
pub fn grad_arrays<'py>(py: Python<'py>, layer: &LayerRef, g: LayerGrad) -> GradPair<'py> {
    let shape = layer.kind.shape(layer.n_out, layer.n_in);
    let delays = ArrayD::from_shape_vec(IxDyn(&shape), g.delays).expect("gradient has the parameter's shape");
    (matrix(py, layer.n_out, layer.n_in, g.weights), delays.into_pyarray(py))
}

/// `dW` and `dD` of a layer as Python objects: [`grad_arrays`] of the one gradient when
/// `stacked` is false, else one array each with a leading axis over the shards' gradients.
pub fn shard_grad_arrays<'py>(
    py: Python<'py>,
    layer: &LayerRef,
    mut grads: Vec<LayerGrad>,
    stacked: bool,
) -> (Bound<'py, PyAny>, Bound<'py, PyAny>) {
    if !stacked {
        let (w, d) = grad_arrays(py, layer, grads.pop().expect("one shard"));
        return (w.into_any(), d.into_any());
    }
    let n = grads.len();
    let w_shape = [n, layer.n_out, layer.n_in];
    let mut d_shape = vec![n];
    d_shape.extend(layer.kind.shape(layer.n_out, layer.n_in));
    let (mut w, mut d) = (Vec::new(), Vec::new());
    for g in grads {
        w.extend(g.weights);
        d.extend(g.delays);
    }
    let weights = ArrayD::from_shape_vec(IxDyn(&w_shape), w).expect("gradients have the parameter's shape");
    let delays = ArrayD::from_shape_vec(IxDyn(&d_shape), d).expect("gradients have the parameter's shape");
    (weights.into_pyarray(py).into_any(), delays.into_pyarray(py).into_any())
}
