"""A researcher's own data from the command line: delgrad's Parquet interchange format, tonic
event arrays and feature arrays, with input and class counts from the data, and bad data
refused with the file, column and row named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from delgrad import pipeline
from delgrad.config import load_config
from delgrad.data.parquet import SpikeDataset
from delgrad.data.user import DataError

ROOT = Path(__file__).resolve().parent.parent
SYN = ROOT / "pipelines" / "yinyang_synaptic.toml"
SHD = ROOT / "pipelines" / "events.toml"


def write_parquet_set(directory: Path, n: int = 90, n_inputs: int = 6, split: bool = False, seed: int = 0) -> Path:
    """Latency-coded samples of 3 classes with scattered sample ids (not 0..n-1)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    ids = rng.permutation(10 * n)[:n] + 7
    rows = []
    for sample, label in zip(ids, labels):
        for neuron in range(n_inputs):
            # Class k fires channel k early; the rest late, with jitter.
            t = (0.3 if neuron % 3 == label else 1.5) + rng.normal(0, 0.05)
            rows.append((int(sample), neuron, float(max(t, 0.0))))
    directory.mkdir(parents=True, exist_ok=True)
    spikes = pl.DataFrame(rows, schema={"sample": pl.Int64, "neuron": pl.Int64, "time": pl.Float64}, orient="row")
    spikes.sample(fraction=1.0, shuffle=True, seed=seed).write_parquet(directory / "spikes.parquet")
    samples = {"sample": ids, "label": labels, "speaker": rng.integers(0, 4, n)}
    if split:
        samples["split"] = np.array(["train", "validation", "test"])[np.arange(n) % 3]
    pl.DataFrame(samples).write_parquet(directory / "samples.parquet")
    return directory


def run(pipeline_file: Path, out: Path, *sets: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "delgrad.cli", "run", str(pipeline_file), "--out", str(out), "--quiet"]
    for s in sets:
        args += ["--set", s]
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


def test_own_parquet_spikes_train_with_a_shipped_ttfs_pipeline(tmp_path: Path) -> None:
    data = write_parquet_set(tmp_path / "mine")
    r = run(SYN, tmp_path / "run", "data.dataset=parquet", f"data.path={data}", "train.epochs=3")
    assert r.returncode == 0, r.stderr
    model = pytest.importorskip("delgrad").Model.load(tmp_path / "run")
    assert model.network.sizes == [6, 30, 3], "inputs and classes come from the data"
    sizes = {s: len(SpikeDataset(tmp_path / "run" / "data", s)) for s in ("train", "validation", "test")}
    assert sizes == {"train": 72, "validation": 9, "test": 9}, "seeded 10 % / 10 % split by sample"
    assert "| test |" in (tmp_path / "run" / "report.md").read_text()


def test_own_parquet_spikes_train_with_the_shd_pipeline_and_a_given_split(tmp_path: Path) -> None:
    data = write_parquet_set(tmp_path / "mine", split=True)
    r = run(SHD, tmp_path / "run", "data.dataset=parquet", f"data.path={data}", "train.epochs=1", "network.hidden=[8]")
    assert r.returncode == 0, r.stderr
    model = pytest.importorskip("delgrad").Model.load(tmp_path / "run")
    assert model.network.sizes == [6, 8, 3]
    assert len(SpikeDataset(tmp_path / "run" / "data", "test")) == 30


def test_spikes_keep_their_times_and_samples_their_labels(tmp_path: Path) -> None:
    data = write_parquet_set(tmp_path / "mine", split=True)
    cfg = load_config(SYN, ["data.dataset=parquet", f"data.path={data}"])
    (tmp_path / "run").mkdir()
    data_dir = pipeline.encode(cfg, tmp_path / "run")
    spikes = pl.read_parquet(data / "spikes.parquet")
    samples = pl.read_parquet(data / "samples.parquet")
    test_ids = samples.filter(pl.col("split") == "test")["sample"].to_list()
    ds = SpikeDataset(data_dir, "test").all()
    np.testing.assert_array_equal(ds.labels, samples.filter(pl.col("split") == "test")["label"].to_numpy())
    mine = spikes.filter(pl.col("sample") == test_ids[4]).sort("neuron")
    got = pl.from_arrow(ds.spikes).filter(pl.col("sample") == 4).sort("neuron")
    np.testing.assert_array_equal(got["time"].to_numpy(), mine["time"].to_numpy())
    np.testing.assert_array_equal(got["neuron"].to_numpy(), mine["neuron"].to_numpy())


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda s, m: (
                s,
                m.with_columns(
                    pl.when(pl.col("sample") == m["sample"][5]).then(None).otherwise(pl.col("label")).alias("label")
                ),
            ),
            "samples.parquet: column 'label' is missing at row 5",
        ),
        (lambda s, m: (s, m.drop("label")), "samples.parquet: no column 'label'"),
        (
            lambda s, m: (
                s.with_columns(
                    pl.when(pl.int_range(pl.len()) == 11).then(float("nan")).otherwise(pl.col("time")).alias("time")
                ),
                m,
            ),
            "spikes.parquet: row 11: column 'time' is NaN",
        ),
        (
            lambda s, m: (
                s.with_columns(
                    pl.when(pl.int_range(pl.len()) == 3).then(40).otherwise(pl.col("neuron")).alias("neuron")
                ),
                m,
            ),
            "spikes.parquet: row 3: column 'neuron' is beyond the declared data.n_inputs = 6",
        ),
        (lambda s, m: (s, m.with_columns(pl.lit("train").alias("split"))), "split 'validation' has no samples"),
        (lambda s, m: (s, m.with_columns(pl.lit("dev").alias("split"))), "row 0 has split 'dev'"),
        (lambda s, m: (s, m.with_columns((pl.col("label") - 1).alias("label"))), "column 'label': row"),
        (lambda s, m: (s, m.filter(pl.col("sample") != s["sample"][0])), "spikes.parquet: row 0 has sample"),
    ],
)
def test_bad_user_data_names_file_column_and_row(tmp_path: Path, damage, message: str) -> None:
    data = write_parquet_set(tmp_path / "mine")
    spikes, samples = damage(pl.read_parquet(data / "spikes.parquet"), pl.read_parquet(data / "samples.parquet"))
    spikes.write_parquet(data / "spikes.parquet")
    samples.write_parquet(data / "samples.parquet")
    r = run(SYN, tmp_path / "run", "data.dataset=parquet", f"data.path={data}", "data.n_inputs=6", "train.epochs=1")
    assert r.returncode != 0 and message in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "run" / "data").exists()


def test_a_missing_path_is_a_config_error(tmp_path: Path) -> None:
    r = run(SYN, tmp_path / "run", "data.dataset=parquet")
    assert r.returncode == 2 and "data.path: the 'parquet' data set needs a path" in r.stderr


def tonic_events(n: int, rng: np.random.Generator, with_y: bool) -> tuple[list[np.ndarray], np.ndarray]:
    fields = [("t", np.int64), ("x", np.int16)] + ([("y", np.int16)] if with_y else []) + [("p", np.int8)]
    labels = rng.integers(0, 2, n)
    samples = []
    for label in labels:
        k = rng.integers(5, 15)
        ev = np.zeros(k, dtype=fields)
        ev["t"] = np.sort(rng.integers(0, 20_000, k)) + 5000 * label  # µs
        ev["x"] = rng.integers(0, 4, k)
        if with_y:
            ev["y"] = rng.integers(0, 3, k)
        ev["p"] = rng.integers(0, 2, k)
        samples.append(ev)
    return samples, labels


def test_tonic_events_with_y_and_polarity_map_to_channels(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    events, labels = tonic_events(40, rng, with_y=True)
    path = tmp_path / "dvs.npz"
    np.savez(path, labels=labels, **{f"events_{k}": ev for k, ev in enumerate(events)})
    r = run(SHD, tmp_path / "plain", "data.dataset=tonic", f"data.path={path}", "train.epochs=1")
    assert r.returncode == 2 and "set data.sensor_size" in r.stderr, "y is never collapsed onto x silently"
    r = run(
        SHD,
        tmp_path / "run",
        "data.dataset=tonic",
        f"data.path={path}",
        "data.sensor_size=[4, 3, 2]",
        "train.epochs=1",
        "network.hidden=[8]",
    )
    assert r.returncode == 0, r.stderr
    from delgrad.model import Model

    assert Model.load(tmp_path / "run").network.sizes == [24, 8, 2]
    ds = pl.read_parquet(tmp_path / "run" / "data" / "spikes.parquet")
    samples = pl.read_parquet(tmp_path / "run" / "data" / "samples.parquet")
    # Every sample, mapped by hand: channel = x + 4 y + 12 p, time in ms.
    for row in samples.iter_rows(named=True):
        ev = events[row["source_sample"]]
        assert row["label"] == labels[row["source_sample"]]
        got = ds.filter(pl.col("sample") == row["sample"]).sort("neuron", "time")
        want = pl.DataFrame(
            {"neuron": ev["x"].astype(np.int64) + 4 * ev["y"] + 12 * ev["p"], "time": ev["t"] / 1000.0}
        ).sort("neuron", "time")
        np.testing.assert_array_equal(got["neuron"].to_numpy(), want["neuron"].to_numpy())
        np.testing.assert_array_equal(got["time"].to_numpy(), want["time"].to_numpy())


def test_features_npz_goes_through_the_pipelines_encoder(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    features = rng.uniform(size=(60, 4))
    labels = (features[:, 0] > 0.5).astype(int)
    np.savez(tmp_path / "f.npz", features=features, labels=labels)
    r = run(SYN, tmp_path / "run", "data.dataset=features", f"data.path={tmp_path / 'f.npz'}", "train.epochs=2")
    assert r.returncode == 0, r.stderr
    from delgrad.model import Model

    model = Model.load(tmp_path / "run")
    assert model.network.sizes == [5, 30, 2]  # 4 features + the bias input of [encoding]
    assert model.predict(features[:5]).shape == (5,)
    features[3, 2] = 1.5
    np.savez(tmp_path / "bad.npz", features=features, labels=labels)
    r = run(SYN, tmp_path / "bad", "data.dataset=features", f"data.path={tmp_path / 'bad.npz'}", "train.epochs=1")
    assert r.returncode != 0 and "array 'features' row 3, column 2 is 1.5" in r.stderr


def test_data_error_is_a_value_error() -> None:
    assert issubclass(DataError, ValueError)
