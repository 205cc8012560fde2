//! The input of a batch call: a spike table validated and grouped by sample once
//! ([`SpikeSet`]), and the batch chosen from it by sample ids ([`Input`]), so that a whole data
//! split can stay in one Arrow table and batches are chosen without copying spikes.

use std::fmt::Display;

use crate::error::{shape_err, Result};
use crate::spikes::{Grouping, RowIter, SpikeTable, Spikes};

/// The input spikes of a batch: a validated table, its rows grouped by sample, and optionally a
/// selection of samples forming the batch.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    pub table: &'a SpikeTable,
    pub grouping: &'a Grouping,
    pub select: Option<&'a [u32]>,
    /// One more than the largest neuron id in the table.
    pub n_channels: usize,
}

impl Input<'_> {
    pub fn n_samples(&self) -> usize {
        self.select.map_or(self.grouping.n_samples(), |s| s.len())
    }
    pub(crate) fn rows(&self, s: usize) -> RowIter<'_> {
        self.grouping.rows(self.select.map_or(s, |sel| sel[s] as usize))
    }
}

/// A spike table validated and grouped once, for repeated batched use.
#[derive(Debug, Clone)]
pub struct SpikeSet {
    pub table: SpikeTable,
    pub grouping: Grouping,
    /// One more than the largest neuron id (0 for an empty table).
    pub n_channels: usize,
}

impl SpikeSet {
    pub fn new(table: SpikeTable, n_samples: usize) -> Result<Self> {
        table.validate("spikes", n_samples, u32::MAX as usize + 1)?;
        let grouping = table.group(n_samples)?;
        let n_channels = table.neuron().iter().max().map_or(0, |&m| m as usize + 1);
        Ok(Self { table, grouping, n_channels })
    }

    pub fn n_samples(&self) -> usize {
        self.grouping.n_samples()
    }

    /// The batch made of samples `select` (all samples, in order, for `None`).
    pub fn input<'a>(&'a self, select: Option<&'a [u32]>) -> Result<Input<'a>> {
        if let Some(sel) = select {
            let n = self.n_samples();
            if let Some(k) = sel.iter().position(|&s| s as usize >= n) {
                return Err(select_err(sel[k], k, n));
            }
        }
        Ok(Input { table: &self.table, grouping: &self.grouping, select, n_channels: self.n_channels })
    }

    /// Sample ids given in a wider (or signed) integer type, checked against the set before
    /// they are narrowed, so that an id such as `2**32` is an error instead of sample 0.
    pub fn select_ids<T>(&self, ids: &[T]) -> Result<Vec<u32>>
    where
        T: Copy + Display + TryInto<u32>,
    {
        let n = self.n_samples();
        ids.iter()
            .enumerate()
            .map(|(k, &id)| match id.try_into() {
                Ok(s) if (s as usize) < n => Ok(s),
                _ => Err(select_err(id, k, n)),
            })
            .collect()
    }

    /// The spikes of samples `select`, renumbered `0..select.len()` in that order, in the input
    /// order within each sample (what a hardware run or a log needs as one table).
    pub fn gather(&self, select: Option<&[u32]>) -> Result<Spikes> {
        let input = self.input(select)?;
        let n = input.n_samples();
        let (neurons, times) = (self.table.neuron(), self.table.time());
        let mut out = Spikes { offsets: Vec::with_capacity(n + 1), ..Default::default() };
        out.offsets.push(0);
        for s in 0..n {
            for r in input.rows(s) {
                out.neuron.push(neurons[r]);
                out.time.push(times[r]);
            }
            out.offsets.push(out.neuron.len());
        }
        Ok(out)
    }
}

fn select_err(id: impl Display, position: usize, n: usize) -> crate::Error {
    shape_err(format!("select: sample {id} at position {position} is out of range (the set has {n} samples)"))
}
