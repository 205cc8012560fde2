//! Spike batches: the Arrow table of DESIGN.md (`sample` u32, `neuron` u32, `time` f64, one row
//! per spike) as it enters the core, and the owned, sample-grouped form the core produces.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, UInt32Type};
use arrow_array::{ArrayRef, Float64Array, RecordBatch, UInt16Array, UInt32Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::error::{shape_err, spikes_err, Result};

/// Sample ids are `u32`, so a batch has at most `2^32` samples.
pub const MAX_SAMPLES: usize = 1 << 32;

/// A zeroed per-sample offset array (`n_samples + 1` entries), or a `Shape` error when
/// `n_samples` cannot be a batch or the array cannot be allocated: checked before any other
/// per-sample allocation, so that an absurd count is an error rather than an abort.
pub fn sample_offsets(n_samples: usize) -> Result<Vec<usize>> {
    if n_samples > MAX_SAMPLES {
        return Err(shape_err(format!("n_samples = {n_samples} is more than 2**32 (sample ids are uint32)")));
    }
    let mut v: Vec<usize> = Vec::new();
    v.try_reserve_exact(n_samples + 1).map_err(|_| {
        shape_err(format!(
            "n_samples = {n_samples}: the per-sample index ({:.1} GiB) cannot be allocated",
            (n_samples + 1) as f64 * std::mem::size_of::<usize>() as f64 / (1u64 << 30) as f64
        ))
    })?;
    v.resize(n_samples + 1, 0);
    Ok(v)
}

/// Columns of an input spike table, validated, typed, and — for a single record batch of the
/// schema's own types — borrowed from the caller's Arrow buffers without a copy.
#[derive(Debug, Clone)]
pub struct SpikeTable {
    sample: UInt32Array,
    neuron: UInt32Array,
    time: Float64Array,
    grad: Option<Float64Array>,
}

impl SpikeTable {
    /// Reads `sample`, `neuron`, `time` (and `grad` when `with_grad`) from record batches.
    ///
    /// `what` names the table in error messages. Integer and float columns of other widths are
    /// cast (a copy); several batches are concatenated (a copy); one batch of the right types is
    /// used in place.
    pub fn from_batches(batches: &[RecordBatch], what: &str, with_grad: bool) -> Result<Self> {
        let mut cols: Vec<Vec<ArrayRef>> = vec![Vec::new(); 4];
        let names: &[&str] =
            if with_grad { &["sample", "neuron", "time", "grad"] } else { &["sample", "neuron", "time"] };
        for batch in batches {
            for (k, name) in names.iter().enumerate() {
                let col = batch.column_by_name(name).ok_or_else(|| {
                    let have: Vec<_> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
                    spikes_err(format!("{what}: missing column '{name}' (columns: {have:?})"))
                })?;
                cols[k].push(col.clone());
            }
        }
        let col = |k: usize, ty: &DataType| -> Result<ArrayRef> {
            let name = names[k];
            let parts: Vec<ArrayRef> = cols[k].iter().map(|a| cast_column(a, ty, what, name)).collect::<Result<_>>()?;
            let arr = match parts.len() {
                0 => arrow_array::new_empty_array(ty),
                1 => parts[0].clone(),
                _ => {
                    let refs: Vec<&dyn arrow_array::Array> = parts.iter().map(|a| a.as_ref()).collect();
                    arrow_select::concat::concat(&refs).map_err(|e| spikes_err(format!("{what}: {e}")))?
                }
            };
            if arr.null_count() > 0 {
                let row = (0..arr.len()).find(|&r| arr.is_null(r)).unwrap_or(0);
                return Err(spikes_err(format!("{what}: column '{name}' has a null at row {row}")));
            }
            Ok(arr)
        };
        let sample = col(0, &DataType::UInt32)?.as_primitive::<UInt32Type>().clone();
        let neuron = col(1, &DataType::UInt32)?.as_primitive::<UInt32Type>().clone();
        let time = col(2, &DataType::Float64)?.as_primitive::<Float64Type>().clone();
        let grad =
            if with_grad { Some(col(3, &DataType::Float64)?.as_primitive::<Float64Type>().clone()) } else { None };
        Ok(Self { sample, neuron, time, grad })
    }

    /// Builds a table from owned columns (used by tests and by the Rust-side callers).
    pub fn from_vecs(sample: Vec<u32>, neuron: Vec<u32>, time: Vec<f64>) -> Result<Self> {
        if sample.len() != neuron.len() || sample.len() != time.len() {
            return Err(spikes_err("spike columns have different lengths"));
        }
        Ok(Self {
            sample: UInt32Array::from(sample),
            neuron: UInt32Array::from(neuron),
            time: Float64Array::from(time),
            grad: None,
        })
    }

    pub fn len(&self) -> usize {
        self.time.len()
    }
    pub fn is_empty(&self) -> bool {
        self.time.is_empty()
    }
    pub fn sample(&self) -> &[u32] {
        self.sample.values()
    }
    pub fn neuron(&self) -> &[u32] {
        self.neuron.values()
    }
    pub fn time(&self) -> &[f64] {
        self.time.values()
    }
    pub fn grad(&self) -> Option<&[f64]> {
        self.grad.as_ref().map(|g| &g.values()[..])
    }

    /// The table as a record batch of DESIGN.md's schema (the columns are shared, not copied).
    pub fn to_record_batch(&self) -> RecordBatch {
        let cols: Vec<ArrayRef> =
            vec![Arc::new(self.sample.clone()), Arc::new(self.neuron.clone()), Arc::new(self.time.clone())];
        RecordBatch::try_new(Spikes::schema(false), cols).expect("schema matches columns")
    }

    /// Checks ids and values; the first offending row is named.
    pub fn validate(&self, what: &str, n_samples: usize, n_neurons: usize) -> Result<()> {
        for (r, &s) in self.sample().iter().enumerate() {
            if s as usize >= n_samples {
                return Err(spikes_err(format!(
                    "{what}: sample id {s} at row {r} is out of range (n_samples = {n_samples})"
                )));
            }
        }
        for (r, &j) in self.neuron().iter().enumerate() {
            if j as usize >= n_neurons {
                return Err(spikes_err(format!(
                    "{what}: neuron id {j} at row {r} is out of range (the layer has {n_neurons} neurons)"
                )));
            }
        }
        for (r, &t) in self.time().iter().enumerate() {
            if !t.is_finite() {
                return Err(spikes_err(format!("{what}: time at row {r} is {t} (must be finite)")));
            }
        }
        if let Some(g) = self.grad() {
            for (r, &x) in g.iter().enumerate() {
                if !x.is_finite() {
                    return Err(spikes_err(format!("{what}: grad at row {r} is {x} (must be finite)")));
                }
            }
        }
        Ok(())
    }

    /// Row indices grouped by sample (stable: the rows of one sample keep their order).
    pub fn group(&self, n_samples: usize) -> Result<Grouping> {
        Grouping::new(self.sample(), n_samples)
    }
}

fn cast_column(a: &ArrayRef, ty: &DataType, what: &str, name: &str) -> Result<ArrayRef> {
    if a.data_type() == ty {
        return Ok(a.clone());
    }
    let ok = match ty {
        DataType::UInt32 => a.data_type().is_integer(),
        _ => a.data_type().is_numeric(),
    };
    if !ok {
        return Err(spikes_err(format!("{what}: column '{name}' has type {}, expected {ty}", a.data_type())));
    }
    // Safe cast: a negative or too-large id is an error, not a wrapped number.
    let opts = arrow_cast::CastOptions { safe: false, ..Default::default() };
    arrow_cast::cast_with_options(a, ty, &opts)
        .map_err(|e| spikes_err(format!("{what}: column '{name}' cannot be read as {ty}: {e}")))
}

/// Rows grouped by sample: `rows(s)` are the row indices of sample `s`.
#[derive(Debug, Clone)]
pub struct Grouping {
    offsets: Vec<usize>,
    // None when the table is already sorted by sample: rows of sample s are offsets[s]..offsets[s+1].
    order: Option<Vec<u32>>,
}

impl Grouping {
    /// Fails (`Shape`) only when `n_samples` is too large (see [`sample_offsets`]).
    pub fn new(sample: &[u32], n_samples: usize) -> Result<Self> {
        let mut counts = sample_offsets(n_samples)?;
        let mut sorted = true;
        let mut prev = 0u32;
        for &s in sample {
            counts[s as usize + 1] += 1;
            sorted &= s >= prev;
            prev = s;
        }
        for k in 0..n_samples {
            counts[k + 1] += counts[k];
        }
        let offsets = counts;
        if sorted {
            return Ok(Self { offsets, order: None });
        }
        let mut fill = offsets.clone();
        let mut order = vec![0u32; sample.len()];
        for (r, &s) in sample.iter().enumerate() {
            order[fill[s as usize]] = r as u32;
            fill[s as usize] += 1;
        }
        Ok(Self { offsets, order: Some(order) })
    }

    pub fn n_samples(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Whether the table was already sorted by sample: sample `s` is the run of rows
    /// `offsets[s]..offsets[s + 1]`, and the whole set in order is the table itself.
    pub fn in_row_order(&self) -> bool {
        self.order.is_none()
    }

    /// The number of rows of sample `s`.
    pub fn sample_len(&self, s: usize) -> usize {
        self.offsets[s + 1] - self.offsets[s]
    }

    pub fn rows(&self, s: usize) -> RowIter<'_> {
        let range = self.offsets[s]..self.offsets[s + 1];
        match &self.order {
            None => RowIter::Range(range),
            Some(o) => RowIter::Slice(o[range].iter()),
        }
    }
}

pub enum RowIter<'a> {
    Range(std::ops::Range<usize>),
    Slice(std::slice::Iter<'a, u32>),
}

impl Iterator for RowIter<'_> {
    type Item = usize;
    #[inline]
    fn next(&mut self) -> Option<usize> {
        match self {
            RowIter::Range(r) => r.next(),
            RowIter::Slice(it) => it.next().map(|&r| r as usize),
        }
    }
}

/// Spikes produced by the core, grouped by sample: sample `s` owns rows
/// `offsets[s]..offsets[s+1]`, sorted by neuron then time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Spikes {
    pub offsets: Vec<usize>,
    pub neuron: Vec<u32>,
    pub time: Vec<f64>,
    /// The synaptic current `I(t^-)` of the neuron at each spike, as the multi-spike forward pass
    /// computed it while finding the spike: the EventProp backward pass needs exactly these at
    /// every own event, and without them it has to visit every arrival once more to sum them.
    /// Empty when not recorded (spikes read from a table or from hardware, TTFS layers).
    pub current: Vec<f64>,
}

impl Spikes {
    pub fn empty(n_samples: usize) -> Self {
        Self { offsets: vec![0; n_samples + 1], ..Default::default() }
    }
    pub fn n_samples(&self) -> usize {
        self.offsets.len() - 1
    }
    pub fn len(&self) -> usize {
        self.time.len()
    }
    pub fn is_empty(&self) -> bool {
        self.time.is_empty()
    }
    pub fn range(&self, s: usize) -> std::ops::Range<usize> {
        self.offsets[s]..self.offsets[s + 1]
    }
    /// The recorded currents of sample `s` (see [`Spikes::current`]); empty when not recorded.
    pub fn current_of(&self, s: usize) -> &[f64] {
        if self.current.len() == self.time.len() {
            &self.current[self.range(s)]
        } else {
            &[]
        }
    }

    /// The `sample` column, materialised from the offsets.
    pub fn sample_column(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.len());
        for s in 0..self.n_samples() {
            out.extend(std::iter::repeat_n(s as u32, self.offsets[s + 1] - self.offsets[s]));
        }
        out
    }

    pub fn schema(with_layer: bool) -> SchemaRef {
        let mut fields = vec![
            Field::new("sample", DataType::UInt32, false),
            Field::new("neuron", DataType::UInt32, false),
            Field::new("time", DataType::Float64, false),
        ];
        if with_layer {
            fields.push(Field::new("layer", DataType::UInt16, false));
        }
        Arc::new(Schema::new(fields))
    }

    /// As the Arrow record batch of DESIGN.md; `layer` adds the layer-log column.
    pub fn to_record_batch(&self, layer: Option<u16>) -> RecordBatch {
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(UInt32Array::from(self.sample_column())),
            Arc::new(UInt32Array::from(self.neuron.clone())),
            Arc::new(Float64Array::from(self.time.clone())),
        ];
        if let Some(l) = layer {
            cols.push(Arc::new(UInt16Array::from(vec![l; self.len()])));
        }
        RecordBatch::try_new(Self::schema(layer.is_some()), cols).expect("schema matches columns")
    }

    /// Reads a table (e.g. spikes recorded on hardware) into grouped, sorted form. Also returns,
    /// for each row of the result, the row of `t` it came from.
    pub fn from_table(t: &SpikeTable, n_samples: usize) -> Result<(Self, Vec<usize>)> {
        let g = t.group(n_samples)?;
        let mut out = Self { offsets: Vec::with_capacity(n_samples + 1), ..Default::default() };
        out.offsets.push(0);
        let mut perm = Vec::with_capacity(t.len());
        let mut buf: Vec<(u32, f64, usize)> = Vec::new();
        for s in 0..n_samples {
            buf.clear();
            buf.extend(g.rows(s).map(|r| (t.neuron()[r], t.time()[r], r)));
            buf.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
            for &(j, tt, r) in &buf {
                out.neuron.push(j);
                out.time.push(tt);
                perm.push(r);
            }
            out.offsets.push(out.len());
        }
        Ok((out, perm))
    }

    /// Concatenates per-chunk results (each covering consecutive samples) in order.
    /// Currents are kept only when every part recorded them.
    pub(crate) fn concat(parts: Vec<Spikes>) -> Self {
        let mut out = Self { offsets: vec![0], ..Default::default() };
        let recorded = parts.iter().all(|p| p.current.len() == p.time.len());
        for p in parts {
            let base = out.len();
            out.neuron.extend_from_slice(&p.neuron);
            out.time.extend_from_slice(&p.time);
            if recorded {
                out.current.extend_from_slice(&p.current);
            }
            out.offsets.extend(p.offsets[1..].iter().map(|o| o + base));
        }
        out
    }
}

impl Spikes {
    /// Dense `(n_samples, n_neurons)` matrix of each neuron's first spike time, `+inf` for a
    /// neuron that stayed silent.
    pub fn first_times(&self, n_neurons: usize) -> Vec<f64> {
        let mut out = vec![f64::INFINITY; self.n_samples() * n_neurons];
        for s in 0..self.n_samples() {
            for k in self.range(s) {
                let cell = &mut out[s * n_neurons + self.neuron[k] as usize];
                *cell = cell.min(self.time[k]);
            }
        }
        out
    }

    /// A loss gradient on first spike times, `(n_samples, n_neurons)`, as per-spike values: the
    /// first spike of each neuron (the earliest; the first row among equal times) gets its
    /// entry, later spikes 0. For multi-spike layers; with one spike per neuron it is `gather`.
    pub fn gather_first(&self, dense: &[f64], n_neurons: usize) -> Vec<f64> {
        let first = self.first_times(n_neurons);
        let mut out = vec![0.0; self.len()];
        let mut taken = vec![false; n_neurons];
        for s in 0..self.n_samples() {
            taken.iter_mut().for_each(|t| *t = false);
            for k in self.range(s) {
                let j = self.neuron[k] as usize;
                if !taken[j] && self.time[k] == first[s * n_neurons + j] {
                    taken[j] = true;
                    out[k] = dense[s * n_neurons + j];
                }
            }
        }
        out
    }

    /// Per-spike values from a dense `(n_samples, n_neurons)` matrix: row `k` gets the entry of
    /// its sample and neuron (how a loss gradient on first spike times reaches the spikes).
    pub fn gather(&self, dense: &[f64], n_neurons: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(self.len());
        for s in 0..self.n_samples() {
            out.extend(self.range(s).map(|k| dense[s * n_neurons + self.neuron[k] as usize]));
        }
        out
    }
}
