"""A split's spikes as an uncompressed Arrow IPC file beside its Parquet data set, memory-mapped.

Read from Parquet into arrays, SSC's training split (75,000 samples x ~8000 spikes x 16 bytes)
would hold ~9.6 GB of anonymous memory for a whole run. Instead the split's spikes
(``SPIKE_SCHEMA``, one record batch, no compression) are written once to
``<data dir>/<split>.arrow`` and opened with ``pyarrow.memory_map``: the core's ``SpikeSet``
borrows the mapped pages, which the kernel pages in and out as file-backed memory.

The file

* is written when first needed, in the final layout, one Parquet row group at a time (the
  anonymous memory holds a row group, never the split), then fsynced and renamed into place
  (:func:`delgrad.rundir.atomic_path`): an interrupted write leaves nothing under the final name;
* records in its schema metadata what it was made from (``delgrad.mapped``: split, sample and
  spike counts, a digest of the Parquet data set's metadata, labels and per-sample spike counts)
  and is reused when that matches: a rerun, a resume, an evaluation and a Ray worker on a shared
  file system map the same file;
* is refused (:class:`MappedSplitError`, naming the file and what is wrong) when it does not
  match the Parquet data set, is not a readable Arrow IPC file (truncated, foreign), has another
  schema, more than one record batch, buffers that are not in the file itself (compressed), or
  spike rows whose per-sample counts disagree with the data set, that are not sorted by sample,
  or whose neuron ids or times the data set cannot hold (ids beyond its inputs, non-finite
  times). The values of the rows themselves are not compared with the Parquet file (that would
  read the whole data set at every load): the recorded identity and the atomic write vouch for
  them. It is **not** rebuilt: it was written atomically, so a file that does not match was changed by
  something other than this code (or the Parquet data set was), and a run must neither train on
  nor silently replace data it cannot vouch for. Deleting the file rebuilds it from the Parquet
  data set on the next load.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa

from delgrad._core import SpikeSet
from delgrad.data.encoding import SPIKE_SCHEMA
from delgrad.data.parquet import SpikeDataset
from delgrad.rundir import atomic_path

__all__ = ["MappedSplitError", "mapped_path", "mapped_spikes", "open_mapped", "write_mapped"]

METADATA_KEY = b"delgrad.mapped"
FORMAT_VERSION = 1
# Samples per block when the sample column is written (a few MB of anonymous memory each).
SAMPLE_BLOCK = 1 << 14
# Rows per block of the sortedness check (a few MB of temporaries each).
SORT_BLOCK = 1 << 22


class MappedSplitError(ValueError):
    """A split's Arrow file that cannot be used for the data set beside it (the file is named)."""


def mapped_path(data_dir: str | Path, split: str) -> Path:
    """Where the Arrow file of ``split`` lives: ``<data_dir>/<split>.arrow``."""
    return Path(data_dir) / f"{split}.arrow"


def identity(ds: SpikeDataset) -> dict[str, object]:
    """What a split's Arrow file records about the data set it was made from."""
    digest = hashlib.sha256(json.dumps(ds.metadata, sort_keys=True).encode())
    digest.update(ds.labels.astype("<i8").tobytes())
    digest.update(ds.n_spikes.astype("<i8").tobytes())
    return {
        "format": FORMAT_VERSION,
        "split": ds.split,
        "n_samples": len(ds),
        "n_spikes": int(ds.offsets[-1]),
        "source": digest.hexdigest(),
    }


def write_mapped(ds: SpikeDataset, path: str | Path) -> Path:
    """Writes the split ``ds`` as one uncompressed record batch to ``path`` (atomically).

    The IPC writer lays the file out from columns of zeros (``np.zeros`` of this size is
    untouched memory that reads as the kernel's zero page: no copy of the split is held), then
    the columns are filled in place through a writable mapping, row group by row group."""
    path = Path(path)
    total = int(ds.offsets[-1])
    schema = SPIKE_SCHEMA.with_metadata({METADATA_KEY: json.dumps(identity(ds)).encode()})
    with atomic_path(path) as tmp:
        zeros = [np.zeros(total, np.uint32), np.zeros(total, np.uint32), np.zeros(total, np.float64)]
        layout = pa.record_batch([pa.array(column) for column in zeros], schema=schema)
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            writer.write_batch(layout)
        del layout, zeros
        if total:
            _fill(ds, tmp, _column_offsets(tmp))
    return path


def _column_offsets(path: Path) -> list[int]:
    """Byte offset in ``path`` of each column's values (sample, neuron, time), as the IPC
    writer laid them out."""
    source = pa.memory_map(str(path), "r")
    base = source.read_buffer(source.size()).address
    batch = pa.ipc.open_file(source).get_batch(0)
    return [column.buffers()[1].address - base for column in batch.columns]


def _fill(ds: SpikeDataset, path: Path, offsets: list[int]) -> None:
    total = int(ds.offsets[-1])
    sample, neuron, time = (
        np.memmap(path, dtype, "r+", offset=offset, shape=(total,))
        for dtype, offset in zip((np.uint32, np.uint32, np.float64), offsets)
    )
    for row0, group_neuron, group_time in ds.row_groups():
        neuron[row0 : row0 + group_neuron.size] = group_neuron
        time[row0 : row0 + group_time.size] = group_time
    for s0 in range(0, len(ds), SAMPLE_BLOCK):
        s1 = min(s0 + SAMPLE_BLOCK, len(ds))
        rows = slice(int(ds.offsets[s0]), int(ds.offsets[s1]))
        sample[rows] = np.repeat(np.arange(s0, s1, dtype=np.uint32), ds.n_spikes[s0:s1])
    for column in (sample, neuron, time):
        column.flush()


def _schema_text(schema: pa.Schema) -> str:
    return schema.to_string(show_schema_metadata=False).replace("\n", ", ")


def _refused(path: Path, why: str) -> MappedSplitError:
    return MappedSplitError(f"{path}: {why}; delete it to rebuild it from the Parquet data set")


def open_mapped(ds: SpikeDataset, path: str | Path) -> pa.RecordBatch:
    """The record batch of ``path``, its buffers in a read-only mapping of the file, checked
    against the data set ``ds`` (schema, recorded identity, one batch, rows, mapped buffers)."""
    path = Path(path)
    want = identity(ds)
    try:
        source = pa.memory_map(str(path), "r")
        reader = pa.ipc.open_file(source)
        if not reader.schema.equals(SPIKE_SCHEMA, check_metadata=False):
            raise _refused(path, f"schema ({_schema_text(reader.schema)}), need ({_schema_text(SPIKE_SCHEMA)})")
        recorded = (reader.schema.metadata or {}).get(METADATA_KEY)
        if recorded is None:
            raise _refused(path, f"has no {METADATA_KEY.decode()} record (not written by delgrad)")
        have = json.loads(recorded)
        differ = sorted(key for key in set(want) | set(have) if want.get(key) != have.get(key))
        if differ:
            details = ", ".join(f"{key} {have.get(key)!r} (data set: {want.get(key)!r})" for key in differ)
            raise _refused(path, f"made from other data than {ds.paths.spikes}: {details}")
        if reader.num_record_batches != 1:
            raise _refused(path, f"{reader.num_record_batches} record batches, need 1")
        batch = reader.get_batch(0)
        batch.validate()
    except MappedSplitError:
        raise
    except (OSError, pa.ArrowException, ValueError, UnicodeDecodeError) as e:
        raise _refused(path, f"not a readable Arrow IPC file of split {ds.split!r} ({type(e).__name__}: {e})") from None
    if batch.num_rows != want["n_spikes"]:
        raise _refused(path, f"{batch.num_rows} spike rows, the data set has {want['n_spikes']}")
    source.seek(0)
    mapping = source.read_buffer(source.size())
    for name, column in zip(batch.schema.names, batch.columns):
        values = column.buffers()[1]
        inside = values is not None and mapping.address <= values.address
        inside = inside and values.address + values.size <= mapping.address + mapping.size
        if batch.num_rows and not inside:
            raise _refused(path, f"column {name!r} is not stored plainly in the file (compressed?)")
    return batch


def mapped_spikes(ds: SpikeDataset) -> SpikeSet:
    """The split ``ds`` as the core's SpikeSet over its memory-mapped Arrow file, written first
    if missing (see the module docstring for reuse and refusal). Where the file cannot be
    written (a read-only or full file system), the split is read into memory as before, with a
    warning naming the file."""
    path = mapped_path(ds.directory, ds.split)
    if not path.exists():
        try:
            write_mapped(ds, path)
        except OSError as e:
            why = f"{path}: cannot be written ({e}); split {ds.split!r} is read into memory instead"
            warnings.warn(why, stacklevel=3)
            return SpikeSet(ds.all().spikes, len(ds))
    batch = open_mapped(ds, path)
    # A table not sorted by sample would make the core hold a row index (4 bytes a row) and
    # mean rows that are not the data set's order; checked a block at a time on the mapping.
    sample = batch.column("sample").to_numpy()
    for r0 in range(0, sample.size, SORT_BLOCK):
        block = sample[max(r0 - 1, 0) : r0 + SORT_BLOCK]
        if np.any(block[1:] < block[:-1]):
            raise _refused(path, f"spike rows near row {r0} are not sorted by sample")
    try:
        spikes = SpikeSet(batch, len(ds))
    except ValueError as e:  # ids or times the core refuses
        raise _refused(path, str(e)) from None
    counts = spikes.spike_counts().astype(np.int64)
    if not np.array_equal(counts, ds.n_spikes):
        first = int(np.flatnonzero(counts != ds.n_spikes)[0])
        raise _refused(path, f"sample {first} has {counts[first]} spike rows, the data set {ds.n_spikes[first]}")
    if spikes.n_channels > ds.n_inputs:
        raise _refused(path, f"neuron ids reach {spikes.n_channels - 1}, the data set has {ds.n_inputs} inputs")
    return spikes
