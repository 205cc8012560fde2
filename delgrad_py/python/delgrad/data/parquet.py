"""Encoded data sets on disk (Parquet, zstd) and a batched reader.

Layout (DESIGN.md, "Data: Arrow spike batches") of a data set directory:

``spikes.parquet``
    One row per input spike: ``sample`` (uint32, *global* sample id), ``neuron`` (uint32),
    ``time`` (float64), sorted by ``(sample, neuron)``.  Row groups hold whole samples and never
    straddle two splits, so a reader can fetch any sample range by row group.
``samples.parquet``
    One row per sample: ``sample`` (uint32, global id), ``label`` (int64), ``split`` (string),
    ``n_spikes`` (uint32, rows of this sample in ``spikes.parquet``) and the raw features
    ``f0 .. f{n-1}`` (float64).

Splits get consecutive global ids in the order given to :func:`write_dataset`, so a split is
one contiguous block of samples and of spike rows.  Both files carry the same JSON metadata
(key ``delgrad.dataset`` in the Parquet key-value metadata): format version, ``n_inputs``,
``n_features``, the encoder's configuration and per-split counts.

:class:`SpikeDataset` reads one split.  The sample table is scanned lazily with
``polars.scan_parquet`` (predicate pushed down to the split); spike rows are located through
the per-sample row offsets (cumulative ``n_spikes``), so a batch is a slice/gather of row
ranges, never a per-batch filter over the whole table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from delgrad.data.encoding import SPIKE_SCHEMA, LatencyEncoder, spike_batch

__all__ = ["Batch", "DatasetPaths", "SpikeChunk", "SpikeDataset", "write_dataset", "write_spike_dataset"]

SPIKES_FILE = "spikes.parquet"
SAMPLES_FILE = "samples.parquet"
METADATA_KEY = b"delgrad.dataset"
FORMAT_VERSION = 1

Encoder = Callable[[np.ndarray], tuple[pa.RecordBatch, int]]


class DatasetPaths(NamedTuple):
    """Files written by :func:`write_dataset`."""

    spikes: Path
    samples: Path


class Batch(NamedTuple):
    """One batch of a split.

    ``spikes`` has ``sample`` re-indexed to ``0..len(labels)-1`` in batch order (rows sorted by
    ``sample``, ``neuron``); a sample without spikes simply has no rows, so take the batch size
    from ``labels``, not from the spikes.  ``sample_ids`` are the global ids (int64) of the
    samples, in the same order as ``labels``.
    """

    spikes: pa.RecordBatch
    labels: np.ndarray
    sample_ids: np.ndarray


def _encoder_config(encoder: Encoder) -> Any:
    """What we can record about ``encoder`` in the metadata (its config, or at least a name)."""
    config = getattr(encoder, "config", None)
    if callable(config):
        return config()
    func = getattr(encoder, "func", None)  # functools.partial
    if func is not None:
        return {
            "encoder": getattr(func, "__qualname__", repr(func)),
            **encoder.keywords,  # type: ignore[attr-defined]
        }
    return {"encoder": getattr(encoder, "__qualname__", repr(encoder))}


def _check_encoded(spikes: pa.RecordBatch | pa.Table, n_samples: int, n_inputs: int, split: str) -> None:
    """Reject encoder output the row-offset index could not address (vectorised checks)."""
    if not spikes.schema.equals(SPIKE_SCHEMA, check_metadata=False):
        raise ValueError(f"encoder output for split {split!r} has schema {spikes.schema}, need {SPIKE_SCHEMA}")
    if spikes.num_rows == 0:
        return
    sample = spikes.column("sample").to_numpy()
    neuron = spikes.column("neuron").to_numpy()
    if sample.max() >= n_samples:
        raise ValueError(f"encoder output for split {split!r} has sample ids >= {n_samples}")
    if neuron.max() >= n_inputs:
        raise ValueError(f"encoder output for split {split!r} has neuron ids >= n_inputs={n_inputs}")
    key = (sample.astype(np.uint64) << np.uint64(32)) | neuron.astype(np.uint64)
    if np.any(key[1:] < key[:-1]):
        raise ValueError(f"encoder output for split {split!r} is not sorted by (sample, neuron)")


def _row_group_cuts(n_spikes: np.ndarray, rows_per_group: int) -> np.ndarray:
    """Sample indices ``0 = s_0 < s_1 < ... < s_k = n`` at which to start a new row group.

    Cuts fall on sample boundaries only, each group as close to ``rows_per_group`` rows as
    whole samples allow.
    """
    if n_spikes.size == 0:
        return np.zeros(1, dtype=np.int64)
    before = np.concatenate([[0], np.cumsum(n_spikes, dtype=np.int64)[:-1]])
    group = before // max(rows_per_group, 1)
    return np.append(np.flatnonzero(np.diff(group, prepend=-1)), n_spikes.size)


def write_dataset(
    directory: str | os.PathLike[str],
    splits: Mapping[str, tuple[np.ndarray, np.ndarray]],
    encoder: Encoder = LatencyEncoder(),
    *,
    rows_per_group: int = 1 << 18,
    compression_level: int | None = None,
) -> DatasetPaths:
    """Encode every split and write ``spikes.parquet`` and ``samples.parquet`` into ``directory``.

    ``splits`` maps split names to ``(features, labels)``: features ``(n, n_features)`` (raw,
    stored as columns ``f0..``; all splits need the same ``n_features``), labels ``(n,)``
    integers.  ``encoder(features) -> (spike RecordBatch, n_inputs)``, e.g.
    :class:`~delgrad.data.encoding.LatencyEncoder` (whose config is recorded) or a
    ``functools.partial`` of :func:`~delgrad.data.encoding.encode_latency`.
    Global sample ids run over the splits in the given order.  ``rows_per_group`` bounds the
    spike row groups (the unit a streaming reader fetches).  Files are written to temporary
    names and renamed, so a crash never leaves a half-written data set under the final name.
    """
    if not splits:
        raise ValueError("no splits given")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = DatasetPaths(directory / SPIKES_FILE, directory / SAMPLES_FILE)
    tmp = DatasetPaths(*(p.with_name(p.name + ".tmp") for p in paths))

    n_inputs: int | None = None
    n_features: int | None = None
    split_meta: dict[str, dict[str, int]] = {}
    sample_tables: list[pa.Table] = []
    encoded: list[tuple[str, pa.RecordBatch, np.ndarray]] = []
    first_sample = 0
    first_row = 0
    for name, (features, labels) in splits.items():
        features = np.asarray(features, dtype=np.float64)
        labels = np.asarray(labels)
        if features.ndim != 2 or labels.shape != (features.shape[0],):
            raise ValueError(
                f"split {name!r}: need features (n, f) and labels (n,), got {features.shape}, {labels.shape}"
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"split {name!r}: labels must be integers, got {labels.dtype}")
        if n_features is None:
            n_features = features.shape[1]
        elif features.shape[1] != n_features:
            raise ValueError(f"split {name!r} has {features.shape[1]} features, earlier splits {n_features}")
        n = features.shape[0]
        if first_sample + n >= 2**32:
            raise ValueError("more than 2**32 - 1 samples do not fit the uint32 sample id")

        spikes, n_in = encoder(features)
        if n_inputs is None:
            n_inputs = int(n_in)
        elif n_in != n_inputs:
            raise ValueError(f"encoder gave n_inputs={n_in} for split {name!r}, {n_inputs} before")
        _check_encoded(spikes, n, n_in, name)
        n_spikes = np.bincount(spikes.column("sample").to_numpy(), minlength=n).astype(np.uint32)
        encoded.append((name, spikes, n_spikes))

        columns: dict[str, pa.Array] = {
            "sample": pa.array(np.arange(first_sample, first_sample + n, dtype=np.uint32)),
            "label": pa.array(labels.astype(np.int64)),
            "split": pa.array(np.full(n, name, dtype=object), type=pa.string()),
            "n_spikes": pa.array(n_spikes),
        }
        columns.update({f"f{j}": pa.array(features[:, j]) for j in range(n_features)})
        sample_tables.append(pa.table(columns))
        split_meta[name] = {
            "first_sample": first_sample,
            "n_samples": n,
            "first_row": first_row,
            "n_spikes": int(spikes.num_rows),
        }
        first_sample += n
        first_row += spikes.num_rows

    metadata = {
        METADATA_KEY: json.dumps(
            {
                "format": FORMAT_VERSION,
                "n_inputs": n_inputs,
                "n_features": n_features,
                "encoder": _encoder_config(encoder),
                "splits": split_meta,
            },
            default=repr,  # e.g. numpy scalars in a partial's keywords: record, don't fail
        ).encode()
    }
    compression = {"compression": "zstd", "compression_level": compression_level}

    schema = SPIKE_SCHEMA.with_metadata(metadata)
    with pq.ParquetWriter(tmp.spikes, schema, **compression) as writer:
        for name, spikes, n_spikes in encoded:
            offset = split_meta[name]["first_sample"]
            global_sample = spikes.column("sample").to_numpy() + np.uint32(offset)
            table = pa.Table.from_batches([spikes]).set_column(0, SPIKE_SCHEMA.field("sample"), pa.array(global_sample))
            cuts = np.concatenate([[0], np.cumsum(n_spikes, dtype=np.int64)])[_row_group_cuts(n_spikes, rows_per_group)]
            # One write per group: each becomes its own row group, cut at a sample boundary.
            for r0, r1 in zip(cuts[:-1], cuts[1:]):
                if r1 > r0:
                    writer.write_table(table.slice(r0, r1 - r0), row_group_size=int(r1 - r0))

    samples = pa.concat_tables(sample_tables)
    pq.write_table(samples.replace_schema_metadata(metadata), tmp.samples, **compression)
    os.replace(tmp.spikes, paths.spikes)
    os.replace(tmp.samples, paths.samples)
    return paths


class SpikeChunk(NamedTuple):
    """A run of consecutive samples of one split, as :func:`write_spike_dataset` takes them.

    ``spikes`` has SPIKE_SCHEMA with ``sample`` *local to the chunk* (``0..len(labels)-1``),
    sorted by ``(sample, neuron)``; ``labels`` ``(n,)`` integers; ``extra`` optional per-sample
    columns for the sample table (e.g. ``{"speaker": ...}``), the same names in every chunk.
    """

    spikes: pa.RecordBatch
    labels: np.ndarray
    extra: Mapping[str, np.ndarray] | None = None


def write_spike_dataset(
    directory: str | os.PathLike[str],
    splits: Mapping[str, Iterable[SpikeChunk | tuple]],
    n_inputs: int,
    *,
    metadata: Mapping[str, Any] | None = None,
    rows_per_group: int = 1 << 18,
    compression_level: int | None = None,
) -> DatasetPaths:
    """Write already-made spikes, chunk by chunk, into the layout of :func:`write_dataset`.

    For data sets that *are* spikes (SHD, SSC, tonic events): ``splits`` maps split names to
    iterables of :class:`SpikeChunk` (or ``(spikes, labels[, extra])`` tuples), consumed
    lazily, so only one chunk is in memory at a time (plus the small per-sample table).  Each
    chunk's spikes become one or more row groups cut at sample boundaries (at most about
    ``rows_per_group`` rows unless one sample is larger).  There are no raw features
    (``n_features = 0``); ``metadata`` is recorded under ``"source"``.  The files are the ones
    :class:`SpikeDataset` reads; temporary names are renamed at the end, as in
    :func:`write_dataset`.
    """
    if not splits:
        raise ValueError("no splits given")
    if n_inputs < 1:
        raise ValueError(f"n_inputs must be >= 1, got {n_inputs}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = DatasetPaths(directory / SPIKES_FILE, directory / SAMPLES_FILE)
    tmp = DatasetPaths(*(p.with_name(p.name + ".tmp") for p in paths))
    compression = {"compression": "zstd", "compression_level": compression_level}

    split_meta: dict[str, dict[str, int]] = {}
    sample_tables: list[pa.Table] = []
    extra_names: list[str] | None = None
    first_sample = 0
    first_row = 0
    try:
        with pq.ParquetWriter(tmp.spikes, SPIKE_SCHEMA, **compression) as writer:
            for name, chunks in splits.items():
                split_first, split_row = first_sample, first_row
                for chunk in chunks:
                    chunk = SpikeChunk(*chunk)
                    labels = np.asarray(chunk.labels)
                    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
                        raise ValueError(f"split {name!r}: labels must be a 1-d integer array")
                    n = labels.size
                    if first_sample + n >= 2**32:
                        raise ValueError("more than 2**32 - 1 samples do not fit the uint32 sample id")
                    spikes = chunk.spikes
                    _check_encoded(spikes, n, n_inputs, name)
                    sample = spikes.column("sample").to_numpy()
                    n_spikes = np.bincount(sample, minlength=n).astype(np.uint32)
                    extra = dict(chunk.extra or {})
                    if extra_names is None:
                        extra_names = sorted(extra)
                    elif sorted(extra) != extra_names:
                        raise ValueError(f"split {name!r}: extra columns {sorted(extra)}, earlier {extra_names}")
                    columns: dict[str, pa.Array] = {
                        "sample": pa.array(np.arange(first_sample, first_sample + n, dtype=np.uint32)),
                        "label": pa.array(labels.astype(np.int64)),
                        "split": pa.array(np.full(n, name, dtype=object), type=pa.string()),
                        "n_spikes": pa.array(n_spikes),
                    }
                    for key in extra_names:
                        col = np.asarray(extra[key])
                        if col.shape != (n,):
                            raise ValueError(f"split {name!r}: extra column {key!r} is not (n,)")
                        columns[key] = pa.array(col)
                    sample_tables.append(pa.table(columns))

                    table = pa.Table.from_batches([spikes]).set_column(
                        0,
                        SPIKE_SCHEMA.field("sample"),
                        pa.array(sample.astype(np.uint32) + np.uint32(first_sample)),
                    )
                    cuts = np.concatenate([[0], np.cumsum(n_spikes, dtype=np.int64)])[
                        _row_group_cuts(n_spikes, rows_per_group)
                    ]
                    for r0, r1 in zip(cuts[:-1], cuts[1:]):
                        if r1 > r0:
                            writer.write_table(table.slice(r0, r1 - r0), row_group_size=int(r1 - r0))
                    first_sample += n
                    first_row += spikes.num_rows
                split_meta[name] = {
                    "first_sample": split_first,
                    "n_samples": first_sample - split_first,
                    "first_row": split_row,
                    "n_spikes": first_row - split_row,
                }
            meta = {
                METADATA_KEY: json.dumps(
                    {
                        "format": FORMAT_VERSION,
                        "n_inputs": int(n_inputs),
                        "n_features": 0,
                        "encoder": None,
                        "source": dict(metadata or {}),
                        "splits": split_meta,
                    },
                    default=repr,
                ).encode()
            }
            # The split counts are known only now: the footer's key-value metadata is written
            # at close, so add it before the writer closes.
            writer.add_key_value_metadata(meta)
        samples = (
            pa.concat_tables(sample_tables)
            if sample_tables
            else pa.table(
                {
                    "sample": pa.array([], pa.uint32()),
                    "label": pa.array([], pa.int64()),
                    "split": pa.array([], pa.string()),
                    "n_spikes": pa.array([], pa.uint32()),
                }
            )
        )
        pq.write_table(samples.replace_schema_metadata(meta), tmp.samples, **compression)
    except BaseException:
        for p in tmp:
            p.unlink(missing_ok=True)
        raise
    os.replace(tmp.spikes, paths.spikes)
    os.replace(tmp.samples, paths.samples)
    return paths


def _read_metadata(path: Path) -> dict[str, Any]:
    """The ``delgrad.dataset`` metadata from a Parquet footer (no data pages are read)."""
    # The footer's key-value metadata: write_dataset puts it there through the schema,
    # write_spike_dataset adds it at close (the Arrow schema stored in the file lacks it then).
    raw = (pq.read_metadata(path).metadata or {}).get(METADATA_KEY)
    if raw is None:
        raw = (pq.read_schema(path).metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise ValueError(f"{path} is not a delgrad data set (no {METADATA_KEY.decode()} metadata)")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported data set format {meta.get('format')}")
    return meta


class _Pool(NamedTuple):
    """Spike rows of a run of samples in memory, addressable by sample position.

    ``offsets[i]:offsets[i] + n_spikes[i]`` are the rows of the pool's ``i``-th sample.
    Build it with :func:`_pool` so that ``uniform`` is right.
    """

    local_ids: np.ndarray  # int64, sample index within the split
    n_spikes: np.ndarray  # int64
    offsets: np.ndarray  # int64
    neuron: np.ndarray  # uint32
    time: np.ndarray  # float64
    # k > 0 if every sample has exactly k spikes stored back to back (offsets == k * i), else 0.
    uniform: int


def _pool(
    local_ids: np.ndarray,
    n_spikes: np.ndarray,
    offsets: np.ndarray,
    neuron: np.ndarray,
    time: np.ndarray,
) -> _Pool:
    k = int(n_spikes[0]) if n_spikes.size else 0
    uniform = k > 0 and bool(np.all(n_spikes == k)) and bool(np.all(offsets == k * np.arange(offsets.size)))
    return _Pool(local_ids, n_spikes, offsets, neuron, time, k if uniform else 0)


class SpikeDataset:
    """One split of a data set written by :func:`write_dataset`.

    Opening reads only the Parquet footers and the split's rows of the (small) sample table
    (``label``, ``n_spikes``; via ``polars.scan_parquet`` with the split predicate pushed down).
    Spikes are read when batches are requested:

    * *resident* (default when the split's spikes take at most ``max_resident_bytes`` in
      memory): the split's row groups are read once, on first use, and every batch is a gather
      of row ranges from them.  Shuffling is a uniform permutation of the split.
    * *streaming* (``resident=False``, or a split too large): row groups are read as the
      iteration reaches them, ``window`` at a time, and dropped afterwards, so memory stays at
      about ``window`` row groups.  Shuffling permutes the row-group order and the samples
      within each window (plus the < ``batch_size`` left over from the previous window) — the
      usual bounded-memory shuffle, not a uniform permutation.

    Either way the sample order is a pure function of ``shuffle_seed`` (``numpy``'s
    ``default_rng``), and each epoch visits every sample exactly once.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        split: str,
        *,
        resident: bool | None = None,
        max_resident_bytes: int = 1 << 30,
        window: int = 4,
    ) -> None:
        self.directory = Path(directory)
        self.split = split
        self.paths = DatasetPaths(self.directory / SPIKES_FILE, self.directory / SAMPLES_FILE)
        self.metadata = _read_metadata(self.paths.spikes)
        if split not in self.metadata["splits"]:
            have = list(self.metadata["splits"])
            raise KeyError(f"no split {split!r} in {self.directory}; have {have}")
        info = self.metadata["splits"][split]
        self.first_sample: int = info["first_sample"]
        self.first_row: int = info["first_row"]

        table = (
            pl.scan_parquet(self.paths.samples)
            .filter(pl.col("split") == split)
            .select("sample", "label", "n_spikes")
            .sort("sample")
            .collect()
        )
        ids = table["sample"].to_numpy().astype(np.int64)
        expected = self.first_sample + np.arange(info["n_samples"])
        if not np.array_equal(ids, expected):
            raise ValueError(
                f"split {split!r} in {self.paths.samples} is not the contiguous block of sample ids the metadata says"
            )
        self.labels: np.ndarray = table["label"].to_numpy().astype(np.int64)
        self.n_spikes: np.ndarray = table["n_spikes"].to_numpy().astype(np.int64)
        # Row offset of each sample within the split's block of spike rows.
        self.offsets: np.ndarray = np.concatenate([[0], np.cumsum(self.n_spikes)])
        if self.offsets[-1] != info["n_spikes"]:
            raise ValueError(f"split {split!r}: n_spikes in the sample table disagree with the metadata")

        self._file = pq.ParquetFile(self.paths.spikes)
        meta = self._file.metadata
        group_rows = np.array([meta.row_group(g).num_rows for g in range(meta.num_row_groups)], dtype=np.int64)
        group_start = np.concatenate([[0], np.cumsum(group_rows)])
        lo, hi = self.first_row, self.first_row + int(self.offsets[-1])
        # Row groups overlapping the split, with their row ranges relative to the split.
        sel = np.flatnonzero((group_start[:-1] < hi) & (group_start[1:] > lo))
        self._groups = sel
        self._group_lo = group_start[sel] - lo

        nbytes = int(self.offsets[-1]) * (4 + 4 + 8)
        self.resident = nbytes <= max_resident_bytes if resident is None else bool(resident)
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self._resident_pool: _Pool | None = None
        self._sample_cache: dict[tuple[int, int], np.ndarray] = {}

    # -- small accessors ---------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.labels.size)

    @property
    def n_inputs(self) -> int:
        """Number of input neurons of the encoding (neuron ids are ``0..n_inputs-1``)."""
        return int(self.metadata["n_inputs"])

    @property
    def sample_ids(self) -> np.ndarray:
        """Global sample ids of the split, in split order (int64)."""
        return self.first_sample + np.arange(len(self), dtype=np.int64)

    def features(self) -> np.ndarray:
        """Raw features ``(n_samples, n_features)`` of the split, from the sample table."""
        names = [f"f{j}" for j in range(self.metadata["n_features"])]
        df = (
            pl.scan_parquet(self.paths.samples)
            .filter(pl.col("split") == self.split)
            .sort("sample")
            .select(names)
            .collect()
        )
        return df.to_numpy().astype(np.float64, copy=False).reshape(len(self), len(names))

    def scan(self) -> pl.LazyFrame:
        """Lazy polars frame of the split's spikes, with *global* sample ids."""
        return pl.scan_parquet(self.paths.spikes).filter(
            pl.col("sample").is_between(self.first_sample, self.first_sample + len(self) - 1)
        )

    def all(self) -> Batch:
        """The whole split as one batch (sample re-indexed to ``0..n-1``).

        Read row group by row group into arrays allocated once at the split's size, which the
        batch then wraps without a copy: the peak memory is the split plus one row group (an
        SHD-sized training split is ~1 GB; a table read whole and then combined would hold it
        twice)."""
        total = int(self.offsets[-1])
        sample = np.repeat(np.arange(len(self), dtype=np.uint32), self.n_spikes)
        neuron, time = np.empty(total, np.uint32), np.empty(total, np.float64)
        for row0, group_neuron, group_time in self.row_groups():
            neuron[row0 : row0 + group_neuron.size] = group_neuron
            time[row0 : row0 + group_time.size] = group_time
        spikes = pa.record_batch([pa.array(sample), pa.array(neuron), pa.array(time)], schema=SPIKE_SCHEMA)
        return Batch(spikes, self.labels.copy(), self.sample_ids)

    def row_groups(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """The split's spike rows one row group at a time, in order: ``(row0, neuron, time)``
        with ``row0`` the split-relative row of the group's first row. Checked to cover the
        split's rows exactly once, as the sample table counts them (a mismatch raises
        ``ValueError`` naming the file)."""
        total = int(self.offsets[-1])
        filled = 0
        for k in range(self._groups.size):
            neuron, time, row0 = self._read_groups(np.array([k]))
            if row0 != filled or row0 + neuron.size > total:
                raise ValueError(f"{self.paths.spikes}: spike rows disagree with the sample table")
            yield row0, neuron, time
            filled += neuron.size
        if filled != total:
            raise ValueError(f"{self.paths.spikes}: spike rows disagree with the sample table")

    # -- reading spike rows ------------------------------------------------------------------

    def _read_groups(self, which: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Read row groups ``self._groups[which]`` (consecutive); return neuron, time and the
        split-relative row at which they start."""
        groups = self._groups[which].tolist()
        table = self._file.read_row_groups(groups, columns=["sample", "neuron", "time"])
        row0 = int(self._group_lo[which[0]])
        # Row groups never straddle splits when written by write_dataset, but clip anyway so a
        # group shared with a neighbouring split cannot leak its rows into this one.
        lo = max(0, -row0)
        hi = min(table.num_rows, int(self.offsets[-1]) - row0)
        table = table.slice(lo, hi - lo)
        row0 += lo
        sample = table.column("sample").to_numpy()
        # Cheap integrity check, once per read, that the offset index and the file agree: the
        # owner of a row is the last sample whose offset is <= that row.
        if sample.size:
            owner = np.searchsorted(self.offsets, [row0, row0 + sample.size - 1], side="right") - 1
            if not (
                np.array_equal(sample[[0, -1]].astype(np.int64), self.first_sample + owner)
                and np.all(sample[1:] >= sample[:-1])
            ):
                raise ValueError(f"{self.paths.spikes}: spike rows do not match the sample table's n_spikes")
        return table.column("neuron").to_numpy(), table.column("time").to_numpy(), row0

    def _pool_for(self, which: np.ndarray, extra: _Pool | None) -> _Pool:
        """Pool of the whole samples inside row groups ``which``, prepended by ``extra``."""
        neuron, time, row0 = self._read_groups(which)
        row1 = row0 + neuron.size
        # Samples whose rows lie entirely in [row0, row1); zero-spike samples sit at a boundary
        # and go with the group that starts there (or the last group for trailing ones).
        s0 = int(np.searchsorted(self.offsets[:-1], row0, side="left"))
        is_last = which[-1] == self._groups.size - 1
        s1 = len(self) if is_last else int(np.searchsorted(self.offsets[:-1], row1, side="left"))
        if self.offsets[s0] != row0 or self.offsets[s1] != row1:
            raise ValueError(
                f"{self.paths.spikes}: row groups are not cut at sample boundaries; open with resident=True"
            )
        ids = np.arange(s0, s1, dtype=np.int64)
        pool = _pool(ids, self.n_spikes[s0:s1], self.offsets[s0:s1] - row0, neuron, time)
        if extra is None or extra.local_ids.size == 0:
            return pool
        return _pool(
            np.concatenate([extra.local_ids, pool.local_ids]),
            np.concatenate([extra.n_spikes, pool.n_spikes]),
            np.concatenate([extra.offsets, pool.offsets + extra.neuron.size]),
            np.concatenate([extra.neuron, pool.neuron]),
            np.concatenate([extra.time, pool.time]),
        )

    def _resident(self) -> _Pool:
        """The whole split's spikes, read once (all its row groups in one call) and kept."""
        if self._resident_pool is None:
            ids = np.arange(len(self), dtype=np.int64)
            if self._groups.size == 0:  # no spikes at all in this split
                neuron, time = np.zeros(0, np.uint32), np.zeros(0, np.float64)
            else:
                neuron, time, row0 = self._read_groups(np.arange(self._groups.size))
                if row0 != 0 or neuron.size != self.offsets[-1]:
                    raise ValueError(f"{self.paths.spikes}: spike rows disagree with the sample table")
            self._resident_pool = _pool(ids, self.n_spikes, self.offsets[:-1], neuron, time)
        return self._resident_pool

    def _gather(self, pool: _Pool, pos: np.ndarray, contiguous: bool) -> Batch:
        """Batch of the pool's samples at positions ``pos`` (in that order).

        ``contiguous`` says ``pos`` is a run of consecutive positions.  This runs ~10^4 times
        per training run, so the common cases avoid building a row index.
        """
        lens = pool.n_spikes[pos]
        k = pool.uniform
        if contiguous:
            # Consecutive samples: their rows are one contiguous slice (zero-copy views).
            r0 = int(pool.offsets[pos[0]]) if pos.size else 0
            r1 = r0 + int(lens.sum())
            neuron, time = pool.neuron[r0:r1], pool.time[r0:r1]
        elif k > 0:
            # Every sample has k spikes at rows k*i..k*i+k-1: a row gather of a (n, k) view.
            neuron = pool.neuron.reshape(-1, k)[pos].ravel()
            time = pool.time.reshape(-1, k)[pos].ravel()
        else:
            # Row index of every output row: each sample's run start, then +1 along the run.
            starts = pool.offsets[pos]
            ends = np.cumsum(lens)
            rows = np.arange(ends[-1] if ends.size else 0, dtype=np.int64)
            rows += np.repeat(starts - (ends - lens), lens)
            neuron, time = pool.neuron[rows], pool.time[rows]
        if k > 0:
            key = (pos.size, k)
            if (sample := self._sample_cache.get(key)) is None:
                sample = np.repeat(np.arange(pos.size, dtype=np.uint32), k)
                sample.setflags(write=False)  # shared by every batch of this shape
                self._sample_cache[key] = sample
        else:
            sample = np.repeat(np.arange(pos.size, dtype=np.uint32), lens)
        ids = pool.local_ids[pos]
        return Batch(spike_batch(sample, neuron, time), self.labels[ids], self.first_sample + ids)

    def batches(self, batch_size: int, shuffle_seed: int | None = None, *, drop_last: bool = False) -> Iterator[Batch]:
        """Iterate over the split in batches of ``batch_size`` samples (one epoch).

        ``shuffle_seed=None`` keeps the stored order; an int gives a deterministic shuffle (see
        the class docstring for resident vs streaming).  The last batch may be smaller unless
        ``drop_last``.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rng = None if shuffle_seed is None else np.random.default_rng(shuffle_seed)
        if self.resident or self._groups.size == 0:
            pool = self._resident()
            order = np.arange(len(self)) if rng is None else rng.permutation(len(self))
            yield from self._emit(pool, order, batch_size, drop_last, True, rng is None)
            return

        n_groups = self._groups.size
        group_order = np.arange(n_groups) if rng is None else rng.permutation(n_groups)
        carry: _Pool | None = None
        for w0 in range(0, group_order.size, self.window):
            # Consecutive groups are read together; a shuffled window reads its groups one by
            # one since they are generally not adjacent in the file.
            chunk = group_order[w0 : w0 + self.window]
            pool = carry
            runs = np.split(chunk, np.flatnonzero(np.diff(chunk) != 1) + 1)
            for run in runs:
                pool = self._pool_for(run, pool)
            assert pool is not None
            n_pool = pool.local_ids.size
            order = np.arange(n_pool) if rng is None else rng.permutation(n_pool)
            final = w0 + self.window >= group_order.size
            n_full = order.size // batch_size * batch_size
            yield from self._emit(pool, order if final else order[:n_full], batch_size, drop_last, final, rng is None)
            if not final:
                keep = order[n_full:]
                carry = self._subpool(pool, keep) if keep.size else None

    def _emit(
        self,
        pool: _Pool,
        order: np.ndarray,
        batch_size: int,
        drop_last: bool,
        final: bool,
        contiguous: bool,
    ) -> Iterator[Batch]:
        """Batches of pool positions taken from ``order``; ``drop_last`` applies if ``final``."""
        for k in range(0, order.size, batch_size):
            pos = order[k : k + batch_size]
            if pos.size < batch_size and final and drop_last:
                return
            yield self._gather(pool, pos, contiguous)

    @staticmethod
    def _subpool(pool: _Pool, pos: np.ndarray) -> _Pool:
        """The samples at ``pos`` as a pool of their own (carried into the next window)."""
        lens = pool.n_spikes[pos]
        starts = pool.offsets[pos]
        ends = np.cumsum(lens)
        rows = np.arange(int(lens.sum()), dtype=np.int64) + np.repeat(starts - (ends - lens), lens)
        return _pool(pool.local_ids[pos], lens, ends - lens, pool.neuron[rows], pool.time[rows])


def _empty_batch() -> pa.RecordBatch:
    return spike_batch(np.zeros(0, np.uint32), np.zeros(0, np.uint32), np.zeros(0, np.float64))
