"""Spike tables enter the Rust core without copies when they already have the schema's types
(DESIGN.md). `delgrad._core._column_addresses(batch)` returns the data-buffer addresses the core
reads; they must be the caller's Arrow buffers."""

from __future__ import annotations

import delgrad
import numpy as np
import pyarrow as pa
from delgrad import _core
from helpers import batch

COLS = ("sample", "neuron", "time")


def _batch(n=1000, sample_type=pa.uint32()):
    rng = np.random.default_rng(0)
    return batch(
        np.sort(rng.integers(0, 50, n)).astype(np.uint32),
        rng.integers(0, 8, n).astype(np.uint32),
        rng.uniform(0, 3, n),
        sample_type=sample_type,
    )


def _buffer_addresses(rb):
    return {name: rb.column(k).buffers()[1].address for k, name in enumerate(COLS)}


def test_record_batch_is_read_in_place():
    rb = _batch()
    got = _core._column_addresses(rb)
    assert set(got) == set(COLS)
    assert got == _buffer_addresses(rb)


def test_sliced_record_batch_is_read_in_place_at_its_offset():
    rb = _batch().slice(37, 500)
    got = _core._column_addresses(rb)
    base = _buffer_addresses(rb)
    # The slice shares the parent's buffers; the core reads from the slice's first element.
    want = {"sample": base["sample"] + 37 * 4, "neuron": base["neuron"] + 37 * 4, "time": base["time"] + 37 * 8}
    assert got == want


def test_single_chunk_table_is_read_in_place():
    rb = _batch()
    table = pa.Table.from_batches([rb])
    assert _core._column_addresses(table) == _buffer_addresses(rb)


def test_numpy_backed_columns_are_read_in_place():
    """pyarrow wraps numpy arrays without a copy; the core then reads numpy's memory."""
    s = np.zeros(100, np.uint32)
    n = np.arange(100, dtype=np.uint32) % 4
    t = np.linspace(0, 1, 100)
    rb = pa.record_batch({"sample": pa.array(s), "neuron": pa.array(n), "time": pa.array(t)})
    got = _core._column_addresses(rb)
    assert got == {"sample": s.ctypes.data, "neuron": n.ctypes.data, "time": t.ctypes.data}


def test_int64_sample_column_is_cast_documented_copy():
    """Documentation of behaviour: a column of another type is cast to uint32, which copies it,
    so its address differs; the columns that already have the right type are still borrowed."""
    rb = _batch(sample_type=pa.int64())
    assert rb.schema.field("sample").type == pa.int64()
    got = _core._column_addresses(rb)
    base = _buffer_addresses(rb)
    assert got["sample"] != base["sample"]
    assert got["neuron"] == base["neuron"]
    assert got["time"] == base["time"]


def test_layer_forward_does_not_modify_input():
    rb = _batch()
    before = [rb.column(k).to_numpy().copy() for k in range(3)]
    delgrad.layer_forward(rb, np.full((3, 8), 0.7), None, delgrad.Neuron(), n_samples=50)
    for k in range(3):
        np.testing.assert_array_equal(rb.column(k).to_numpy(), before[k])


def test_all_samples_of_a_set_sorted_by_sample_are_its_own_buffers():
    """``SpikeSet.select()`` of a table sorted by sample returns the table the set borrows (what
    a memory-mapped split puts into Ray's object store without a copy in between); a table in
    another order is grouped, so its samples come out in order, in new buffers."""
    rb = _batch()
    spikes = delgrad.SpikeSet(rb, 50)
    whole = spikes.select()
    assert _buffer_addresses(whole) == _buffer_addresses(rb)
    assert all(whole.column(name).equals(rb.column(name)) for name in COLS)
    shuffled = rb.take(pa.array(np.random.default_rng(1).permutation(rb.num_rows)))
    regrouped = delgrad.SpikeSet(shuffled, 50).select()
    assert not set(_buffer_addresses(regrouped).values()) & set(_buffer_addresses(shuffled).values())
    assert regrouped.column("sample").equals(rb.column("sample"))
    # Same rows per sample, in the shuffled table's order within each sample.
    for s in (0, 17, 49):
        rows = shuffled.filter(pa.compute.equal(shuffled.column("sample"), s))
        got = regrouped.filter(pa.compute.equal(regrouped.column("sample"), s))
        assert got.column("time").equals(rows.column("time"))
