"""A researcher's own data, in three forms, checked and written into delgrad's data set layout.

``parquet`` — delgrad's interchange format, a directory holding

    spikes.parquet   sample (integer), neuron (integer), time (float): one row per input spike
    samples.parquet  sample (integer, unique), label (integer >= 0), optionally
                     split ("train" / "validation" / "test") and any other columns

``tonic`` — one ``.npz`` file: ``labels`` (n,), optionally ``split`` (n,) strings, and one
structured event array per sample, ``events_0`` ... ``events_{n-1}``, with fields ``t``
(microseconds, as tonic records them), ``x``, optionally ``y`` (then ``data.sensor_size =
[width, height]`` or ``[width, height, polarities]``) and ``p``. The input channel of an event
is ``x + width * (y + height * p)``; ``p`` counts only when the sensor size names polarities.

``features`` — one ``.npz`` file: ``features`` (n, d) in ``[0, 1]``, ``labels`` (n,),
optionally ``split`` (n,); the pipeline's ``[encoding]`` turns features into spikes.

The written data set's ``samples.parquet`` keeps each sample's id in the source as
``source_sample`` (the ``sample`` column, or the index of ``events_k``). Without a ``split``,
``data.validation_fraction`` and ``data.test_fraction`` of the samples go
to validation and test, drawn with ``data.seed``. The number of inputs is ``data.n_inputs`` or
the largest neuron id + 1; the number of classes the largest label + 1. Bad data is a
:class:`DataError` (a ``ValueError``) naming the file, the column and the row.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from delgrad.data.encoding import spike_batch
from delgrad.data.parquet import SpikeChunk

SPLITS = ("train", "validation", "test")
US_PER_MS = 1000.0


class DataError(ValueError):
    """A user's data set that cannot be used; the message names file, column and row."""


def split_assignment(
    n: int, given: np.ndarray | None, validation_fraction: float, test_fraction: float, seed: int, where: str
) -> np.ndarray:
    """The split of each sample: the given column (checked), or a seeded random draw."""
    if given is not None:
        names = np.asarray(given).astype(str)
        bad = np.flatnonzero(~np.isin(names, SPLITS))
        if bad.size:
            raise DataError(
                f"{where}: row {bad[0]} has split {str(names[bad[0]])!r} (expected train, validation or test)"
            )
    else:
        if validation_fraction + test_fraction >= 1.0:
            total = validation_fraction + test_fraction
            raise DataError(f"{where}: validation_fraction + test_fraction = {total} leaves no training samples")
        order = np.random.default_rng(seed).permutation(n)
        n_val, n_test = round(n * validation_fraction), round(n * test_fraction)
        names = np.full(n, "train", dtype=object)
        names[order[:n_val]] = "validation"
        names[order[n_val : n_val + n_test]] = "test"
        names = names.astype(str)
    for split in SPLITS:
        if not np.any(names == split):
            raise DataError(f"{where}: split {split!r} has no samples")
    return names


def _check_labels(labels: np.ndarray, where: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"{where}: labels must be one per sample, got shape {labels.shape}")
    if labels.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(labels) | (labels != np.round(labels)))
        if bad.size:
            raise DataError(f"{where}: row {bad[0]} has label {labels[bad[0]]} (labels are integers 0..K-1)")
    elif labels.dtype.kind not in "iu":
        raise DataError(f"{where}: labels must be integers, got {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.size and labels.min() < 0:
        row = int(np.argmin(labels))
        raise DataError(f"{where}: row {row} has label {labels[row]} (labels are integers 0..K-1)")
    return labels


# --- parquet -----------------------------------------------------------------------------------


def parquet_splits(
    path: Path, *, n_inputs: int | None, validation_fraction: float, test_fraction: float, seed: int, chunk_size: int
) -> tuple[dict[str, Iterator[SpikeChunk]], int, int]:
    """``(splits, n_inputs, n_classes)`` of a directory in delgrad's interchange format."""
    path = Path(path)
    spikes_file, samples_file = path / "spikes.parquet", path / "samples.parquet"
    for f in (spikes_file, samples_file):
        if not f.exists():
            raise DataError(f"{f} does not exist (a parquet data set is spikes.parquet + samples.parquet)")
    samples = pl.read_parquet(samples_file)
    where = str(samples_file)
    for column in ("sample", "label"):
        if column not in samples.columns:
            raise DataError(f"{where}: no column {column!r} (columns: {', '.join(samples.columns)})")
        nulls = samples[column].is_null()
        if nulls.any():
            raise DataError(f"{where}: column {column!r} is missing at row {int(nulls.arg_true()[0])}")
    ids = samples["sample"].to_numpy()
    if ids.dtype.kind not in "iu" or (ids.size and ids.min() < 0):
        raise DataError(f"{where}: column 'sample' must hold non-negative integers")
    duplicated = samples["sample"].is_duplicated()
    if duplicated.any():
        row = int(duplicated.arg_true()[0])
        raise DataError(f"{where}: sample {ids[row]} appears more than once (row {row})")
    labels = _check_labels(samples["label"].to_numpy(), f"{where}: column 'label'")
    given = samples["split"].to_numpy() if "split" in samples.columns else None
    split_of = split_assignment(len(ids), given, validation_fraction, test_fraction, seed, f"{where}: column 'split'")

    spikes = pl.scan_parquet(spikes_file)
    columns = spikes.collect_schema()
    for column in ("sample", "neuron", "time"):
        if column not in columns:
            raise DataError(f"{spikes_file}: no column {column!r} (columns: {', '.join(columns)})")
    declared = n_inputs
    _check_spikes(spikes, spikes_file, declared)
    stats = spikes.select(pl.col("neuron").max().alias("neuron"), pl.len().alias("rows")).collect()
    largest = stats["neuron"][0]
    n_inputs = declared if declared is not None else (int(largest) + 1 if largest is not None else 1)
    listed = pl.LazyFrame({"sample": ids.astype(np.int64)})
    unknown = (
        spikes.with_row_index("row")
        .select("row", pl.col("sample").cast(pl.Int64))
        .join(listed, on="sample", how="anti")
        .sort("row")
        .head(1)
        .collect()
    )
    if unknown.height:
        raise DataError(
            f"{spikes_file}: row {unknown['row'][0]} has sample {unknown['sample'][0]}, "
            f"which {samples_file.name} does not list"
        )
    n_classes = int(labels.max()) + 1 if labels.size else 0

    def chunks(split: str) -> Iterator[SpikeChunk]:
        members = np.flatnonzero(split_of == split)
        for start in range(0, members.size, chunk_size):
            rows = members[start : start + chunk_size]
            local = pl.LazyFrame({"sample": ids[rows].astype(np.int64), "local": np.arange(rows.size, dtype=np.int64)})
            part = (
                spikes.select(pl.col("sample").cast(pl.Int64), "neuron", pl.col("time").cast(pl.Float64))
                .join(local, on="sample", how="inner")
                .sort("local", "neuron", "time")
                .collect()
            )
            yield SpikeChunk(
                spike_batch(part["local"].to_numpy(), part["neuron"].to_numpy(), part["time"].to_numpy()),
                labels[rows],
                {"source_sample": ids[rows]},
            )

    return {split: chunks(split) for split in SPLITS}, n_inputs, n_classes


def _first_row(frame: pl.LazyFrame, condition: pl.Expr) -> int:
    return int(frame.with_row_index("row").filter(condition).select("row").head(1).collect()["row"][0])


def _check_spikes(spikes: pl.LazyFrame, path: Path, n_inputs: int | None) -> None:
    """Nulls, non-finite or negative times, negative or undeclared neuron ids: the first bad row."""
    time, neuron, sample = pl.col("time"), pl.col("neuron"), pl.col("sample")
    checks: list[tuple[pl.Expr, str]] = [
        (sample.is_null(), "column 'sample' is missing"),
        (neuron.is_null(), "column 'neuron' is missing"),
        (time.is_null(), "column 'time' is missing"),
        (time.cast(pl.Float64).is_nan(), "column 'time' is NaN"),
        (time.cast(pl.Float64).is_infinite(), "column 'time' is infinite"),
        (neuron < 0, "column 'neuron' is negative"),
        (sample < 0, "column 'sample' is negative"),
    ]
    if n_inputs is not None:
        checks.append((neuron >= n_inputs, f"column 'neuron' is beyond the declared data.n_inputs = {n_inputs}"))
    flags = spikes.select([condition.any().alias(str(k)) for k, (condition, _) in enumerate(checks)]).collect()
    for k, (condition, message) in enumerate(checks):
        if flags[str(k)][0]:
            row = _first_row(spikes, condition)
            value = spikes.slice(row, 1).collect().row(0, named=True)
            raise DataError(f"{path}: row {row}: {message} ({value})")


# --- tonic and features (.npz) -----------------------------------------------------------------


def _load_npz(path: Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None


def tonic_splits(
    path: Path,
    *,
    sensor_size: list[int] | None,
    n_inputs: int | None,
    validation_fraction: float,
    test_fraction: float,
    seed: int,
    chunk_size: int,
) -> tuple[dict[str, Iterator[SpikeChunk]], int, int]:
    """``(splits, n_inputs, n_classes)`` of a ``.npz`` of tonic-style event arrays (times in ms)."""
    z = _load_npz(path)
    if "labels" not in z.files:
        raise DataError(f"{path}: no array 'labels' (arrays: {', '.join(z.files)})")
    labels = _check_labels(z["labels"], f"{path}: array 'labels'")
    n = labels.size
    missing = [k for k in range(n) if f"events_{k}" not in z.files]
    if missing:
        raise DataError(f"{path}: no array 'events_{missing[0]}' for sample {missing[0]} (labels has {n} entries)")
    given = z["split"] if "split" in z.files else None
    split_of = split_assignment(n, given, validation_fraction, test_fraction, seed, f"{path}: array 'split'")
    width, height, polarities = _sensor(sensor_size)
    channels = width * height * polarities if sensor_size else None
    largest = -1
    for k in range(n):  # the checks read every sample once before anything is written
        largest = max(largest, _channels(z[f"events_{k}"], f"{path}: array 'events_{k}'", sensor_size).max(initial=-1))
    n_in = n_inputs or channels or largest + 1
    if largest >= n_in:
        raise DataError(f"{path}: channel {largest} is beyond the declared {n_in} inputs")

    def chunks(split: str) -> Iterator[SpikeChunk]:
        members = np.flatnonzero(split_of == split)
        for start in range(0, members.size, chunk_size):
            rows = members[start : start + chunk_size]
            sample, neuron, time = [], [], []
            for local, k in enumerate(rows):
                events = z[f"events_{k}"]
                channel = _channels(events, f"{path}: array 'events_{k}'", sensor_size)
                t = events["t"].astype(np.float64) / US_PER_MS
                order = np.lexsort((t, channel))
                sample.append(np.full(channel.size, local, dtype=np.int64))
                neuron.append(channel[order])
                time.append(t[order])
            yield SpikeChunk(
                spike_batch(np.concatenate(sample), np.concatenate(neuron), np.concatenate(time)),
                labels[rows],
                {"source_sample": rows.astype(np.int64)},
            )

    return {split: chunks(split) for split in SPLITS}, n_in, int(labels.max()) + 1 if n else 0


def _sensor(sensor_size: list[int] | None) -> tuple[int, int, int]:
    if not sensor_size:
        return 0, 1, 1
    polarities = int(sensor_size[2]) if len(sensor_size) > 2 else 1
    return int(sensor_size[0]), int(sensor_size[1]), polarities


def _channels(events: np.ndarray, where: str, sensor_size: list[int] | None) -> np.ndarray:
    names = events.dtype.names or ()
    if "t" not in names or "x" not in names:
        raise DataError(f"{where}: needs a structured array with fields t and x (and optionally y, p), got {names}")
    t = events["t"].astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(t) | (t < 0))
    if bad.size:
        raise DataError(f"{where}: event {bad[0]} has time {t[bad[0]]} (must be finite and >= 0)")
    x = events["x"].astype(np.int64)
    channel = x
    if "y" in names:
        if not sensor_size:
            raise DataError(
                f"{where}: events have a y field; set data.sensor_size = [width, height] to number channels"
            )
        width, height, polarities = _sensor(sensor_size)
        y = events["y"].astype(np.int64)
        for name, values, size in (("x", x, width), ("y", y, height)):
            bad = np.flatnonzero((values < 0) | (values >= size))
            if bad.size:
                raise DataError(
                    f"{where}: event {bad[0]} has {name} = {values[bad[0]]} outside the sensor (0..{size - 1})"
                )
        channel = x + width * y
        if polarities > 1 and "p" in names:
            p = events["p"].astype(np.int64)
            bad = np.flatnonzero((p < 0) | (p >= polarities))
            if bad.size:
                raise DataError(f"{where}: event {bad[0]} has p = {p[bad[0]]} outside 0..{polarities - 1}")
            channel = channel + width * height * p
    elif x.size and x.min() < 0:
        raise DataError(f"{where}: event {int(np.argmin(x))} has x = {x.min()} (must be >= 0)")
    return channel


def feature_splits(
    path: Path, *, validation_fraction: float, test_fraction: float, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (features, labels)}`` of a ``.npz`` with ``features`` and ``labels``."""
    z = _load_npz(path)
    for name in ("features", "labels"):
        if name not in z.files:
            raise DataError(f"{path}: no array {name!r} (arrays: {', '.join(z.files)})")
    features = np.asarray(z["features"], dtype=np.float64)
    labels = _check_labels(z["labels"], f"{path}: array 'labels'")
    if features.ndim != 2 or features.shape[0] != labels.size:
        raise DataError(f"{path}: features {features.shape} need one row per label ({labels.size})")
    bad = np.argwhere(~np.isfinite(features) | (features < 0) | (features > 1))
    if bad.size:
        r, c = bad[0]
        raise DataError(f"{path}: array 'features' row {r}, column {c} is {features[r, c]} (must lie in [0, 1])")
    given = z["split"] if "split" in z.files else None
    split_of = split_assignment(labels.size, given, validation_fraction, test_fraction, seed, f"{path}: array 'split'")
    return {split: (features[split_of == split], labels[split_of == split]) for split in SPLITS}
