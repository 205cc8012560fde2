"""A run's splits are memory-mapped Arrow IPC files (``data/<split>.arrow``, delgrad.data.mapped):
the same bits as the split read into memory, written once and reused, never left half-written,
refused with the file's name when they do not match the Parquet data set, and borrowed by the
core without a copy."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from delgrad import _core, pipeline
from delgrad._core import SpikeSet
from delgrad.data import mapped
from delgrad.data.encoding import SPIKE_SCHEMA
from delgrad.data.mapped import MappedSplitError, mapped_path
from delgrad.data.parquet import SpikeDataset
from delgrad.data.split import Split
from delgrad.distributed import network_arrays
from delgrad.model import Model
from delgrad.train import Trainer

ROOT = Path(__file__).resolve().parent.parent
SHD = ROOT / "pipelines" / "shd.toml"
SETS = [
    "data.synthetic=true",
    "data.n_train=40",
    "data.n_validation=12",
    "data.n_test=12",
    "data.spikes_per_sample=300",
    "network.hidden=[12]",
    "train.epochs=2",
    "train.batch_size=16",
    "augment.enabled=true",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return pipeline.run(SHD, SETS, tmp_path_factory.mktemp("mapped") / "run", progress=False)


@pytest.fixture
def data_dir(run: Path, tmp_path: Path) -> Path:
    """A copy of the run's Parquet data set, without any Arrow file."""
    out = tmp_path / "data"
    out.mkdir()
    for name in ("spikes.parquet", "samples.parquet"):
        shutil.copy(run / "data" / name, out / name)
    return out


def resident(data_dir: Path, split: str) -> Split:
    """The split read from Parquet into memory, as ``load_split`` did before it was mapped."""
    ds = SpikeDataset(data_dir, split)
    return Split(SpikeSet(ds.all().spikes, len(ds)), ds.labels.copy())


def test_a_run_on_mapped_splits_matches_one_on_resident_splits_bit_for_bit(run: Path) -> None:
    data = run / "data"
    assert sorted(p.name for p in data.glob("*.arrow")) == ["test.arrow", "train.arrow", "validation.arrow"]
    cfg = pipeline.load_config(SHD, SETS)
    train = pipeline.augmented(cfg, resident(data, "train"), 700)
    evals = {name: resident(data, name) for name in ("validation", "test")}
    net = pipeline.build_network(cfg, 700, pipeline.n_classes(cfg))
    history = Trainer(net, cfg.train, shards=cfg.distributed.shards).fit(train, evals)
    want = pl.DataFrame(history).drop("seconds")
    got = pl.read_parquet(run / "metrics.parquet").drop("seconds")
    assert got.equals(want), "the run on mapped splits has other metrics than one on resident splits"
    for saved, trained in zip(network_arrays(Model.load(run).network), network_arrays(net), strict=True):
        np.testing.assert_array_equal(saved, trained)


def test_the_mapped_split_holds_the_parquet_rows(run: Path) -> None:
    for name in pipeline.SPLITS:
        split, _, n_inputs = pipeline.load_split(run / "data", name)
        ds = SpikeDataset(run / "data", name)
        assert split.spikes.select().equals(ds.all().spikes)
        np.testing.assert_array_equal(split.labels, ds.labels)
        assert n_inputs == ds.n_inputs == 700
        picked = np.array([5, 0, 3], dtype=np.uint32)
        assert split.spikes.select(picked).equals(resident(run / "data", name).spikes.select(picked))


def _mappings(path: Path) -> list[tuple[int, int, str]]:
    """This process's mappings of ``path``: (start, end, permissions)."""
    found = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == str(path):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            found.append((start, end, fields[1]))
    return found


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the mappings from Linux's /proc")
def test_the_core_borrows_the_mapped_file_without_a_copy(data_dir: Path) -> None:
    split, _, _ = pipeline.load_split(data_dir, "train")
    path = mapped_path(data_dir, "train").resolve()
    regions = _mappings(path)
    assert regions, f"{path} is not mapped"
    assert all("w" not in perms for _, _, perms in regions), "the split is mapped read-only"
    # select() of a set sorted by sample hands out the buffers the SpikeSet holds.
    whole = split.spikes.select()
    addresses = _core._column_addresses(whole)
    for name in ("sample", "neuron", "time"):
        buffer = whole.column(name).buffers()[1]
        assert addresses[name] == buffer.address
        assert any(start <= buffer.address and buffer.address + buffer.size <= end for start, end, _ in regions), (
            f"column {name!r} of the SpikeSet is not in the mapping of {path}"
        )
    # A batch, an augmented batch and the training split as a trainer's worker reads it keep it.
    cfg = pipeline.load_config(SHD, SETS)
    train = pipeline.augmented(cfg, split, 700)
    batch, select = train.take(np.array([0, 41, 3, 75], dtype=np.uint32), epoch=1)
    assert len(batch) == 4 and select.tolist() == [0, 1, 2, 3]
    assert train.spikes is split.spikes
    worker = pipeline.training_split(data_dir, cfg)
    worker_whole = worker.spikes.select()
    assert any(start <= worker_whole.column("time").buffers()[1].address < end for start, end, _ in _mappings(path))


def test_the_file_is_reused_not_rewritten(run: Path) -> None:
    paths = [mapped_path(run / "data", name) for name in pipeline.SPLITS]
    before = [(p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in paths]
    pipeline.evaluate_run(run)  # reads every split again
    pipeline.training_split(run / "data", pipeline.load_config(SHD, SETS))
    again = pipeline.run(SHD, SETS, run, progress=False)  # finished: nothing to do
    assert again == run
    assert [(p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in paths] == before


def test_an_interrupted_write_leaves_no_file(data_dir: Path, monkeypatch) -> None:
    class Interrupted(Exception):
        pass

    def fail_when_filling(self):
        # The file is laid out (its temporary name exists) when the first row group is read.
        assert list(data_dir.glob(".train.arrow.tmp*"))
        raise Interrupted
        yield

    monkeypatch.setattr(SpikeDataset, "row_groups", fail_when_filling)
    with pytest.raises(Interrupted):
        pipeline.load_split(data_dir, "train")
    assert sorted(p.name for p in data_dir.iterdir()) == ["samples.parquet", "spikes.parquet"]


KILLED_WRITER = """
import sys, time
from pathlib import Path
from delgrad import pipeline
from delgrad.data.parquet import SpikeDataset

original = SpikeDataset.row_groups
def stall(self):
    Path(sys.argv[2]).write_text("writing")
    time.sleep(60)
    yield from original(self)
SpikeDataset.row_groups = stall
pipeline.load_split(Path(sys.argv[1]), "train")
"""


def test_a_killed_writer_leaves_nothing_under_the_final_name(data_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "writing"
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(data_dir), str(marker)])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the writer did not reach the middle of the file"
        assert list(data_dir.glob(".train.arrow.tmp*")), "the writer writes beside the final name"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    assert not mapped_path(data_dir, "train").exists()
    split, _, _ = pipeline.load_split(data_dir, "train")  # the next load writes it in full
    assert split.spikes.select().equals(SpikeDataset(data_dir, "train").all().spikes)
    assert not list(data_dir.glob(".train.arrow.tmp*")), "and removes what the killed writer left"


def _good_batch(data_dir: Path) -> tuple[pa.RecordBatch, dict]:
    ds = SpikeDataset(data_dir, "train")
    return ds.all().spikes, {mapped.METADATA_KEY: mapped.json.dumps(mapped.identity(ds)).encode()}


def _write(path: Path, batch: pa.RecordBatch, metadata: dict | None, **options) -> None:
    schema = batch.schema.with_metadata(metadata) if metadata else batch.schema.remove_metadata()
    with (
        pa.OSFile(str(path), "wb") as sink,
        pa.ipc.new_file(sink, schema, options=pa.ipc.IpcWriteOptions(**options)) as w,
    ):
        w.write_batch(batch.replace_schema_metadata(schema.metadata))


def _bad_files():
    """name -> (make the file from a good batch and its metadata, what the error says)."""

    def truncated(path, batch, meta):
        _write(path, batch, meta)
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)

    def foreign(path, batch, meta):
        _write(path, batch, None)

    def other_data(path, batch, meta):
        other = dict(mapped.json.loads(meta[mapped.METADATA_KEY]), source="0" * 64)
        _write(path, batch, {mapped.METADATA_KEY: mapped.json.dumps(other).encode()})

    def other_schema(path, batch, meta):
        cast = pa.record_batch(
            [batch.column(0), batch.column(1), batch.column(2).cast(pa.float32())], names=SPIKE_SCHEMA.names
        )
        _write(path, cast, meta)

    def fewer_rows(path, batch, meta):
        _write(path, batch.slice(0, batch.num_rows - 1), meta)

    def moved_rows(path, batch, meta):
        sample = batch.column("sample").to_numpy().copy()
        first = int(np.flatnonzero(sample == 1)[0])
        sample[first] = 0  # still sorted; sample 0 gains a row, sample 1 loses one
        _write(path, pa.record_batch([pa.array(sample), batch.column(1), batch.column(2)], schema=SPIKE_SCHEMA), meta)

    def unsorted(path, batch, meta):
        order = np.arange(batch.num_rows)
        order[[0, -1]] = order[[-1, 0]]
        _write(path, batch.take(pa.array(order)), meta)

    def compressed(path, batch, meta):
        _write(path, batch, meta, compression="zstd")

    def two_batches(path, batch, meta):
        schema = batch.schema.with_metadata(meta)
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as w:
            w.write_batch(batch.slice(0, 10).replace_schema_metadata(meta))
            w.write_batch(batch.slice(10).replace_schema_metadata(meta))

    def not_arrow(path, batch, meta):
        path.write_bytes(b"PAR1" + bytes(4096))

    return {
        "truncated": (truncated, "not a readable Arrow IPC file"),
        "foreign": (foreign, "not written by delgrad"),
        "other_data": (other_data, "made from other data than .*spikes.parquet: source"),
        "other_schema": (other_schema, r"schema \(.*time: float\), need \(.*time: double"),
        "fewer_rows": (fewer_rows, "spike rows, the data set has"),
        "moved_rows": (moved_rows, "sample 0 has .* spike rows, the data set"),
        "unsorted": (unsorted, "not sorted by sample"),
        "compressed": (compressed, "not stored plainly"),
        "two_batches": (two_batches, "2 record batches"),
        "not_arrow": (not_arrow, "not a readable Arrow IPC file"),
    }


@pytest.mark.parametrize("bad", sorted(_bad_files()))
def test_a_file_that_does_not_match_is_refused_naming_it_and_kept(data_dir: Path, bad: str) -> None:
    make, match = _bad_files()[bad]
    path = mapped_path(data_dir, "train")
    make(path, *_good_batch(data_dir))
    content = path.read_bytes()
    with pytest.raises(MappedSplitError, match=match) as info:
        pipeline.load_split(data_dir, "train")
    assert str(path) in str(info.value) and "delete it to rebuild it" in str(info.value)
    assert path.read_bytes() == content, "a file delgrad cannot vouch for is neither used nor replaced"
    path.unlink()
    split, _, _ = pipeline.load_split(data_dir, "train")
    assert split.spikes.select().equals(SpikeDataset(data_dir, "train").all().spikes)


def test_an_unwritable_data_directory_reads_the_split_into_memory_with_a_warning(data_dir: Path, monkeypatch) -> None:
    def full(ds, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mapped, "write_mapped", full)
    with pytest.warns(UserWarning, match=r"train\.arrow: cannot be written .*No space left"):
        split, _, _ = pipeline.load_split(data_dir, "train")
    assert split.spikes.select().equals(SpikeDataset(data_dir, "train").all().spikes)
    assert not mapped_path(data_dir, "train").exists()


def test_an_empty_split_maps_too(tmp_path: Path) -> None:
    from delgrad.data.parquet import write_spike_dataset

    empty = pa.record_batch(
        [pa.array([], pa.uint32()), pa.array([], pa.uint32()), pa.array([], pa.float64())], schema=SPIKE_SCHEMA
    )
    write_spike_dataset(tmp_path, {"train": [(empty, np.array([0, 1, 1]))]}, n_inputs=4)
    split, _, n_inputs = pipeline.load_split(tmp_path, "train")
    assert len(split) == 3 and split.spikes.n_spikes == 0 and n_inputs == 4
    assert split.counts.tolist() == [0, 0, 0]
    split, _, _ = pipeline.load_split(tmp_path, "train")  # and is reused
