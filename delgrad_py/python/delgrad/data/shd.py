"""Spiking Heidelberg Digits (SHD) and Spiking Speech Commands (SSC), tonic-style event arrays,
and a synthetic stand-in of the same shape.

**Units.** The project's time unit for these data sets is the **millisecond**: HDF5 times (in
seconds) are multiplied by 1000 (``float64(t) * 1000.0``, computed in float64 from the stored
float16/float32 value), tonic times (in microseconds) are divided by 1000.  Time constants in
``pipelines/shd.toml`` and ``pipelines/ssc.toml`` (``tau_m = 20``, delays up to 150, ...) are
therefore milliseconds.

**The published HDF5 layout** (https://zenkelab.org/datasets/, Cramer et al. 2020): one file per
split (``shd_train.h5``, ``shd_test.h5``; ``ssc_train.h5``, ``ssc_valid.h5``, ``ssc_test.h5``),
each with ``spikes/times`` and ``spikes/units`` (variable-length arrays, one per sample:
seconds and channel ids ``0..699``), ``labels`` (one per sample), ``extra/keys`` (the class
names) and ``extra/speaker`` (speaker id per sample).  :func:`read_h5_split` reads a file
``chunk_size`` samples at a time (h5py slices of the vlen datasets), so the whole file is never
in memory, and yields :class:`~delgrad.data.parquet.SpikeChunk` s for
:func:`~delgrad.data.parquet.write_spike_dataset`.

**Splits.** SSC has its own validation file.  SHD has none: the validation split is a seeded
random 10 % of the training file's samples (``validation_fraction``, ``seed``; sample-wise, not
by speaker — SHD's test set holds speakers absent from training, so a speaker split would mimic
it better but leaves fewer training speakers; the choice is recorded in the metadata).

**Files that are missing** raise :class:`DatasetFileMissing` (a ``FileNotFoundError``) naming the
file, the directory it was looked for in and where to get it.  The data directory is, in this
order: the ``path`` given (``[data] path`` of a pipeline), the environment variable
``DELGRAD_DATA``, ``~/.cache/delgrad``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from delgrad.data.encoding import spike_batch
from delgrad.data.parquet import DatasetPaths, SpikeChunk, write_spike_dataset

__all__ = [
    "DATA_FILES",
    "DatasetFileMissing",
    "N_CHANNELS",
    "N_CLASSES",
    "data_dir",
    "from_tonic_events",
    "h5_path",
    "read_h5_split",
    "synthetic_chunks",
    "tonic_chunks",
    "write_h5_dataset",
    "write_synthetic_dataset",
]

N_CHANNELS = 700
N_CLASSES = {"shd": 20, "ssc": 35}
DATA_FILES: dict[str, dict[str, str]] = {
    "shd": {"train": "shd_train.h5", "test": "shd_test.h5"},
    "ssc": {"train": "ssc_train.h5", "validation": "ssc_valid.h5", "test": "ssc_test.h5"},
}
SOURCE_URL = "https://zenkelab.org/datasets/"
MS_PER_S = 1000.0
US_PER_MS = 1000.0


class DatasetFileMissing(FileNotFoundError):
    """An SHD/SSC file is not where delgrad looks for it (the message says where to get it)."""


def data_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The directory holding the ``.h5`` files: ``path``, else ``$DELGRAD_DATA``, else
    ``~/.cache/delgrad``."""
    if path:
        return Path(path).expanduser()
    env = os.environ.get("DELGRAD_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "delgrad"


def h5_path(dataset: str, split: str, directory: str | os.PathLike[str] | None = None) -> Path:
    """The path of ``dataset``'s ``split`` file; :class:`DatasetFileMissing` if it is absent."""
    if dataset not in DATA_FILES:
        raise ValueError(f"unknown spiking audio data set {dataset!r} (have {sorted(DATA_FILES)})")
    if split not in DATA_FILES[dataset]:
        raise ValueError(f"{dataset} has no {split!r} file (has {sorted(DATA_FILES[dataset])})")
    d = data_dir(directory)
    name = DATA_FILES[dataset][split]
    p = d / name
    if not p.is_file():
        raise DatasetFileMissing(
            f"{dataset.upper()} file {name} not found in {d}. It cannot be downloaded here: get "
            f"{name}.gz from {SOURCE_URL}, gunzip it into {d}/ (or set [data] path / "
            f"DELGRAD_DATA to the directory holding {name}), or run with "
            "--set data.synthetic=true for a generated stand-in of the same shape."
        )
    return p


def _chunk_from_lists(
    times: list[np.ndarray] | np.ndarray,
    units: list[np.ndarray] | np.ndarray,
    ids: np.ndarray | None,
    n_channels: int,
    time_scale: float,
    where: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate per-sample arrays into sorted (sample, neuron, time) columns, checked;
    errors name sample ``ids[i]`` (its index in the source) for the ``i``-th array."""
    n = len(times)
    ids = np.arange(n) if ids is None else ids
    lens_t = np.fromiter((len(t) for t in times), dtype=np.int64, count=n)
    lens_u = np.fromiter((len(u) for u in units), dtype=np.int64, count=n)
    bad = np.flatnonzero(lens_t != lens_u)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{where}: sample {ids[i]} has {lens_t[i]} times but {lens_u[i]} units")
    t = np.concatenate([np.asarray(x, dtype=np.float64) for x in times]) if n else np.zeros(0)
    u = np.concatenate([np.asarray(x).astype(np.int64) for x in units]) if n else np.zeros(0, np.int64)
    sample = np.repeat(np.arange(n, dtype=np.int64), lens_t)
    t = t * time_scale
    for mask, what in (
        (~np.isfinite(t), "a non-finite spike time"),
        (t < 0, "a negative spike time"),
        ((u < 0) | (u >= n_channels), f"a unit outside 0..{n_channels - 1}"),
    ):
        if mask.any():
            k = int(np.flatnonzero(mask)[0])
            raise ValueError(f"{where}: sample {ids[int(sample[k])]} has {what}")
    order = np.lexsort((t, u, sample))
    return sample[order], u[order], t[order]


def read_h5_split(
    path: str | os.PathLike[str],
    *,
    chunk_size: int = 512,
    select: np.ndarray | None = None,
    n_channels: int = N_CHANNELS,
    time_scale: float = MS_PER_S,
) -> Iterator[SpikeChunk]:
    """Stream one SHD/SSC file as :class:`SpikeChunk` s of up to ``chunk_size`` samples.

    Only ``chunk_size`` samples are read at a time (slices of the vlen datasets).  ``select``:
    optional boolean mask over the file's samples; only selected samples are yielded (in file
    order).  Times become ``float64(t) * time_scale`` (milliseconds by default).  Extra columns:
    ``speaker`` (if present) and ``index`` (the sample's row in the file).  Malformed samples
    (times/units length mismatch, NaN/inf/negative time, unit outside ``0..n_channels-1``)
    raise ``ValueError`` naming the sample index in the file.
    """
    import h5py

    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    path = Path(path)
    with h5py.File(path, "r") as f:
        times, units, labels = f["spikes/times"], f["spikes/units"], f["labels"]
        n = labels.shape[0]
        if times.shape[0] != n or units.shape[0] != n:
            raise ValueError(f"{path}: {times.shape[0]} time arrays, {units.shape[0]} unit arrays, {n} labels")
        speaker = f["extra/speaker"] if "extra/speaker" in f else None
        if select is not None:
            select = np.asarray(select, dtype=bool)
            if select.shape != (n,):
                raise ValueError(f"select must be a boolean mask of {n} samples, got {select.shape}")
        for s0 in range(0, n, chunk_size):
            s1 = min(n, s0 + chunk_size)
            keep = np.arange(s0, s1) if select is None else s0 + np.flatnonzero(select[s0:s1])
            if keep.size == 0:
                continue
            t_chunk, u_chunk = times[s0:s1], units[s0:s1]
            rel = keep - s0
            if select is not None:
                t_chunk, u_chunk = [t_chunk[i] for i in rel], [u_chunk[i] for i in rel]
            sample, neuron, time = _chunk_from_lists(t_chunk, u_chunk, keep, n_channels, time_scale, str(path))
            lab = np.asarray(labels[s0:s1])[rel].astype(np.int64)
            extra = {"index": keep.astype(np.int64)}
            if speaker is not None:
                extra["speaker"] = np.asarray(speaker[s0:s1])[rel].astype(np.int64)
            yield SpikeChunk(spike_batch(sample, neuron, time), lab, extra)


def class_names(path: str | os.PathLike[str]) -> list[str]:
    """The ``extra/keys`` of a file, decoded."""
    import h5py

    with h5py.File(path, "r") as f:
        if "extra/keys" not in f:
            return []
        return [k.decode() if isinstance(k, bytes) else str(k) for k in f["extra/keys"][()]]


def write_h5_dataset(
    directory: str | os.PathLike[str],
    dataset: str,
    source: str | os.PathLike[str] | None = None,
    *,
    validation_fraction: float = 0.1,
    seed: int = 0,
    chunk_size: int = 512,
) -> DatasetPaths:
    """Stream the real ``dataset`` (``"shd"`` or ``"ssc"``) files from ``source`` (see
    :func:`data_dir`) into the Parquet layout in ``directory``, splits ``train``,
    ``validation``, ``test``.  SHD's validation split is a seeded random
    ``validation_fraction`` of its training file (the rest stays ``train``)."""
    files = {split: h5_path(dataset, split, source) for split in DATA_FILES[dataset]}
    meta: dict[str, Any] = {
        "dataset": dataset,
        "time_unit": "ms",
        "files": {k: str(v) for k, v in files.items()},
        "class_names": class_names(files["train"]),
    }
    if "validation" in files:
        splits = {s: read_h5_split(files[s], chunk_size=chunk_size) for s in ("train", "validation", "test")}
    else:
        import h5py

        with h5py.File(files["train"], "r") as f:
            n = f["labels"].shape[0]
        n_val = int(round(validation_fraction * n))
        val = np.zeros(n, dtype=bool)
        val[np.random.default_rng(seed).permutation(n)[:n_val]] = True
        meta["validation"] = {
            "from": "train",
            "fraction": validation_fraction,
            "seed": seed,
            "by": "sample",
            "n": n_val,
        }
        splits = {
            "train": read_h5_split(files["train"], chunk_size=chunk_size, select=~val),
            "validation": read_h5_split(files["train"], chunk_size=chunk_size, select=val),
            "test": read_h5_split(files["test"], chunk_size=chunk_size),
        }
    return write_spike_dataset(directory, splits, N_CHANNELS, metadata=meta)


# -- tonic-style events ----------------------------------------------------------------------


def from_tonic_events(events: np.ndarray, n_channels: int = N_CHANNELS) -> tuple[np.ndarray, np.ndarray]:
    """A tonic-style structured event array (fields ``t`` in microseconds, ``x`` the channel,
    ``p`` polarity — ignored) as ``(neuron uint32, time float64 ms)``, sorted by
    ``(neuron, time)``.  ``ValueError`` on non-finite/negative times or channels out of range."""
    names = events.dtype.names or ()
    if "t" not in names or "x" not in names:
        raise ValueError(f"need a structured array with fields t and x, got fields {names}")
    t = events["t"].astype(np.float64) / US_PER_MS  # correctly rounded µs -> ms
    x = events["x"].astype(np.int64)
    if t.size and (not np.all(np.isfinite(t)) or t.min() < 0):
        raise ValueError("tonic events: non-finite or negative times")
    if x.size and (x.min() < 0 or x.max() >= n_channels):
        raise ValueError(f"tonic events: channel outside 0..{n_channels - 1}")
    order = np.lexsort((t, x))
    return x[order].astype(np.uint32), t[order]


def tonic_chunks(
    samples: Iterable[tuple[np.ndarray, int]], *, chunk_size: int = 512, n_channels: int = N_CHANNELS
) -> Iterator[SpikeChunk]:
    """``(events, label)`` pairs (e.g. a ``tonic.datasets.SHD`` object) as chunks for
    :func:`~delgrad.data.parquet.write_spike_dataset`, ``chunk_size`` samples at a time."""
    buf_t: list[np.ndarray] = []
    buf_u: list[np.ndarray] = []
    buf_y: list[int] = []

    def flush() -> SpikeChunk:
        sample, neuron, time = _chunk_from_lists(buf_t, buf_u, None, n_channels, 1.0, "tonic events")
        return SpikeChunk(spike_batch(sample, neuron, time), np.asarray(buf_y, dtype=np.int64))

    for events, label in samples:
        neuron, time = from_tonic_events(events, n_channels)
        buf_u.append(neuron)
        buf_t.append(time)
        buf_y.append(int(np.asarray(label).item() if np.ndim(label) else label))
        if len(buf_y) == chunk_size:
            yield flush()
            buf_t, buf_u, buf_y = [], [], []
    if buf_y:
        yield flush()


# -- synthetic stand-in ----------------------------------------------------------------------

SYNTHETIC_SIZES = {"train": 400, "validation": 100, "test": 100}
# Input spikes per sample, about SHD's: the recipes' weights (`pipelines/shd.toml`) are set for
# that input rate, and at a quarter of it their hidden layers start silent and learn nothing.
SYNTHETIC_SPIKES = 8000


def synthetic_chunks(
    n: int,
    n_classes: int,
    *,
    seed: int = 0,
    n_channels: int = N_CHANNELS,
    duration: float = 1000.0,
    spikes_per_sample: int = SYNTHETIC_SPIKES,
    noise_fraction: float = 0.2,
    band_width: float = 12.0,
    jitter: float = 5.0,
    chunk_size: int = 256,
) -> Iterator[SpikeChunk]:
    """``n`` generated samples of the SHD/SSC shape, in chunks (vectorised per chunk).

    Class ``k`` has a fixed random *trajectory*: a band of channels centred at
    ``c_k(t) = a_k + b_k * (t / duration)`` (start ``a_k`` and sweep ``b_k`` drawn once from
    ``seed``-independent stream 12345 + n_classes, so every split shares the classes), active
    over ``[on_k, off_k]`` of ``duration`` ms.  A sample has
    ``(1 - noise_fraction) * spikes_per_sample`` (Poisson count) band spikes — time uniform on
    the class's interval shifted by a per-sample onset jitter, channel ``c_k(t)`` plus
    Normal(0, ``band_width``) and a per-sample channel offset of Normal(0, ``band_width``) —
    and the rest noise spikes uniform over channels and ``[0, duration]``.  Times are jittered
    by Normal(0, ``jitter``) ms and clipped to ``[0, duration]``.
    """
    crng = np.random.default_rng(12345 + n_classes)
    a = crng.uniform(0.1, 0.9, n_classes) * n_channels
    b = crng.uniform(-0.5, 0.5, n_classes) * n_channels
    on = crng.uniform(0.0, 0.3, n_classes) * duration
    off = on + crng.uniform(0.4, 0.7, n_classes) * duration
    rng = np.random.default_rng(seed)
    for s0 in range(0, n, chunk_size):
        m = min(chunk_size, n - s0)
        labels = rng.integers(0, n_classes, m)
        n_sig = rng.poisson((1 - noise_fraction) * spikes_per_sample, m)
        n_noise = rng.poisson(noise_fraction * spikes_per_sample, m)
        onset = rng.normal(0.0, 3 * jitter, m)
        offset = rng.normal(0.0, band_width, m)
        ss = np.repeat(np.arange(m), n_sig)
        k = labels[ss]
        frac = rng.random(ss.size)
        t_sig = on[k] + frac * (off[k] - on[k]) + onset[ss]
        c_sig = a[k] + b[k] * (t_sig / duration) + offset[ss] + rng.normal(0.0, band_width, ss.size)
        sn = np.repeat(np.arange(m), n_noise)
        t_noise = rng.uniform(0.0, duration, sn.size)
        c_noise = rng.uniform(0.0, n_channels, sn.size)
        sample = np.concatenate([ss, sn])
        time = np.clip(np.concatenate([t_sig, t_noise]) + rng.normal(0.0, jitter, sample.size), 0.0, duration)
        chan = np.floor(np.concatenate([c_sig, c_noise])).astype(np.int64)
        ok = (chan >= 0) & (chan < n_channels)
        sample, chan, time = sample[ok], chan[ok], time[ok]
        order = np.lexsort((time, chan, sample))
        yield SpikeChunk(spike_batch(sample[order], chan[order], time[order]), labels.astype(np.int64))


def write_synthetic_dataset(
    directory: str | os.PathLike[str],
    dataset: str,
    *,
    seed: int = 0,
    sizes: Mapping[str, int] | None = None,
    **kwargs: Any,
) -> DatasetPaths:
    """The synthetic stand-in for ``dataset`` (its class count, 700 channels, ms times) with
    ``sizes`` samples per split (default 400 / 100 / 100); ``kwargs`` go to
    :func:`synthetic_chunks`."""
    sizes = {**SYNTHETIC_SIZES, **(sizes or {})}
    n_classes = N_CLASSES[dataset]
    splits = {
        name: synthetic_chunks(int(sizes[name]), n_classes, seed=1000 * seed + i, **kwargs)
        for i, name in enumerate(("train", "validation", "test"))
    }
    meta = {"dataset": dataset, "synthetic": True, "time_unit": "ms", "sizes": sizes, **kwargs}
    return write_spike_dataset(directory, splits, kwargs.get("n_channels", N_CHANNELS), metadata=meta)
