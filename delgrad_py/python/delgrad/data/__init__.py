"""Data sets, input encodings and their Parquet storage.

* :mod:`~delgrad.data.yinyang` — the Yin-Yang data set, bit-identical to the published one;
* :mod:`~delgrad.data.digits` — scikit-learn's 8x8 digits (optional extra ``delgrad[digits]``);
* :mod:`~delgrad.data.shd` — Spiking Heidelberg Digits / Speech Commands (HDF5, needs
  ``delgrad[shd]``), tonic-style events, a synthetic stand-in;
* :mod:`~delgrad.data.augment` — channel shift and same-class blending of spike batches;
* :mod:`~delgrad.data.encoding` — time-to-first-spike encodings to Arrow spike tables;
* :mod:`~delgrad.data.parquet` — data sets on disk and a batched, lazily reading loader.
"""

from delgrad.data.digits import digits, digits_splits
from delgrad.data.encoding import SPIKE_SCHEMA, LatencyEncoder, encode_latency, spike_batch
from delgrad.data.parquet import (
    Batch,
    DatasetPaths,
    SpikeChunk,
    SpikeDataset,
    write_dataset,
    write_spike_dataset,
)
from delgrad.data.yinyang import (
    YINYANG_CLASS_NAMES,
    inside_circle,
    yinyang,
    yinyang_class,
    yinyang_splits,
)

__all__ = [
    "SPIKE_SCHEMA",
    "YINYANG_CLASS_NAMES",
    "Batch",
    "DatasetPaths",
    "LatencyEncoder",
    "SpikeChunk",
    "SpikeDataset",
    "digits",
    "digits_splits",
    "encode_latency",
    "inside_circle",
    "spike_batch",
    "write_dataset",
    "write_spike_dataset",
    "yinyang",
    "yinyang_class",
    "yinyang_splits",
]
