"""Data layer: Yin-Yang (against the published generator), digits, latency encoding, Parquet."""

from __future__ import annotations

import functools
import importlib
import sys

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from delgrad.data import (
    SPIKE_SCHEMA,
    LatencyEncoder,
    SpikeDataset,
    digits,
    digits_splits,
    encode_latency,
    inside_circle,
    write_dataset,
    yinyang,
    yinyang_class,
    yinyang_splits,
)

# The package re-exports the function yinyang(), which shadows the submodule as an attribute.
yinyang_module = importlib.import_module("delgrad.data.yinyang")


# --------------------------------------------------------------------------------------------
# A literal transcription of YinYangDataset from lkriener/yin_yang_data_set (dataset.py):
# the same RandomState calls in the same order, scalar arithmetic, Python control flow.
# It is the reference the vectorised generator must match bit for bit.
# --------------------------------------------------------------------------------------------


class PublishedYinYang:
    def __init__(self, r_small=0.1, r_big=0.5, size=1000, seed=42):
        self.rng = np.random.RandomState(seed)
        self.r_small = r_small
        self.r_big = r_big
        self.vals = []
        self.cs = []
        for _ in range(size):
            goal_class = self.rng.randint(3)
            x, y, c = self.get_sample(goal=goal_class)
            x_flipped = 1.0 - x
            y_flipped = 1.0 - y
            self.vals.append(np.array([x, y, x_flipped, y_flipped]))
            self.cs.append(c)

    def get_sample(self, goal=None):
        found_sample_yet = False
        while not found_sample_yet:
            x, y = self.rng.rand(2) * 2.0 * self.r_big
            if np.sqrt((x - self.r_big) ** 2 + (y - self.r_big) ** 2) > self.r_big:
                continue
            c = self.which_class(x, y)
            if goal is None or c == goal:
                found_sample_yet = True
                break
        return x, y, c

    def which_class(self, x, y):
        d_right = self.dist_to_right_dot(x, y)
        d_left = self.dist_to_left_dot(x, y)
        criterion1 = d_right <= self.r_small
        criterion2 = d_left > self.r_small and d_left <= 0.5 * self.r_big
        criterion3 = y > self.r_big and d_right > 0.5 * self.r_big
        is_yin = criterion1 or criterion2 or criterion3
        is_circles = d_right < self.r_small or d_left < self.r_small
        if is_circles:
            return 2
        return int(is_yin)

    def dist_to_right_dot(self, x, y):
        return np.sqrt((x - 1.5 * self.r_big) ** 2 + (y - self.r_big) ** 2)

    def dist_to_left_dot(self, x, y):
        return np.sqrt((x - 0.5 * self.r_big) ** 2 + (y - self.r_big) ** 2)

    def arrays(self):
        return np.array(self.vals), np.array(self.cs, dtype=np.int64)


@functools.cache
def published(size, seed, r_small=0.1, r_big=0.5):
    return PublishedYinYang(r_small, r_big, size, seed).arrays()


# ------------------------------------------------------------------------------- Yin-Yang ----


def test_yinyang_first_samples_of_seed_42():
    # Values printed by the literal transcription above (full float64 repr); the first sample
    # is a dot (near the right dot centre (0.75, 0.5)), the second lies in the ring around the
    # left dot (criterion 2), hence class 1.
    expected = np.array(
        [
            [0.6803075385877797, 0.450499251969543, 0.3196924614122203, 0.549500748030457],
            [0.09767211400638387, 0.6842330265121569, 0.9023278859936161, 0.3157669734878431],
            [0.7553614103176525, 0.4251558744912447, 0.24463858968234753, 0.5748441255087553],
            [0.5978999788110851, 0.9218742350231168, 0.40210002118891486, 0.07812576497688317],
        ]
    )
    expected_labels = np.array([2, 1, 2, 1])
    ref_x, ref_c = published(4, 42)
    np.testing.assert_array_equal(ref_x, expected)
    np.testing.assert_array_equal(ref_c, expected_labels)
    x, c = yinyang(4, 42)
    np.testing.assert_array_equal(x, expected)
    np.testing.assert_array_equal(c, expected_labels)
    # A prefix of a longer data set is the same: sample i does not depend on the size.
    np.testing.assert_array_equal(yinyang(5000, 42)[0][:4], expected)


@pytest.mark.parametrize(
    ("size", "seed", "r_small", "r_big"),
    [
        (5000, 42, 0.1, 0.5),  # published train split
        (1000, 41, 0.1, 0.5),  # published validation split
        (1000, 40, 0.1, 0.5),  # published test split
        (2000, 0, 0.1, 0.5),
        (500, 7, 0.15, 0.6),
        (1, 3, 0.1, 0.5),
    ],
)
def test_yinyang_bit_identical_to_published_loop(size, seed, r_small, r_big):
    x, c = yinyang(size, seed, r_small, r_big)
    ref_x, ref_c = published(size, seed, r_small, r_big)
    assert x.dtype == np.float64 and x.shape == (size, 4)
    assert c.dtype == np.int64 and c.shape == (size,)
    np.testing.assert_array_equal(x, ref_x)  # exact, not approximate
    np.testing.assert_array_equal(c, ref_c)


def test_yinyang_word_block_growth_does_not_change_the_data(monkeypatch):
    # Start from a tiny block of raw RNG words so the generator has to double it repeatedly.
    monkeypatch.setattr(yinyang_module, "_WORDS_PER_SAMPLE", 1)
    monkeypatch.setattr(yinyang_module, "_WORDS_EXTRA", 0)
    x, c = yinyang(300, 11)
    ref_x, ref_c = published(300, 11)
    np.testing.assert_array_equal(x, ref_x)
    np.testing.assert_array_equal(c, ref_c)


def test_yinyang_deterministic_and_seed_dependent():
    a = yinyang(1000, 5)
    b = yinyang(1000, 5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    other = yinyang(1000, 6)[0]
    assert not np.any(np.all(a[0] == other, axis=1))


def test_yinyang_geometry_balance_and_features():
    x, c = yinyang(5000, 42)
    # Every point inside the big circle (radius 0.5 around (0.5, 0.5)).
    assert np.all(np.hypot(x[:, 0] - 0.5, x[:, 1] - 0.5) <= 0.5)
    assert np.all(inside_circle(x[:, 0], x[:, 1]))
    # Rejection sampling towards a uniformly drawn goal class: about a third each.
    share = np.bincount(c, minlength=3) / c.size
    np.testing.assert_allclose(share, 1 / 3, atol=0.03)
    # Mirrored features.
    np.testing.assert_array_equal(x[:, 2], 1.0 - x[:, 0])
    np.testing.assert_array_equal(x[:, 3], 1.0 - x[:, 1])
    np.testing.assert_allclose(x[:, 0] + x[:, 2], 1.0, rtol=0, atol=2**-52)
    np.testing.assert_allclose(x[:, 1] + x[:, 3], 1.0, rtol=0, atol=2**-52)
    assert np.all((x >= 0) & (x <= 1))


def test_yinyang_labels_consistent_with_which_class():
    x, c = yinyang(1000, 41)
    np.testing.assert_array_equal(yinyang_class(x[:, 0], x[:, 1]), c)
    ref = PublishedYinYang(size=0)
    literal = [ref.which_class(np.float64(px), np.float64(py)) for px, py in x[:, :2]]
    np.testing.assert_array_equal(literal, c)


def test_yinyang_class_map_matches_published_which_class():
    # A grid over the whole square, including points outside the circle and on the axes of
    # symmetry, plus the dot centres.
    g = np.linspace(0.0, 1.0, 41)
    gx, gy = np.meshgrid(g, g)
    classes = yinyang_class(gx, gy)
    assert classes.shape == gx.shape and classes.dtype == np.int64
    ref = PublishedYinYang(size=0)
    literal = np.array(
        [ref.which_class(np.float64(px), np.float64(py)) for px, py in zip(gx.ravel(), gy.ravel())]
    ).reshape(gx.shape)
    np.testing.assert_array_equal(classes, literal)
    assert yinyang_class(0.75, 0.5) == 2 and yinyang_class(0.25, 0.5) == 2
    assert set(np.unique(classes[inside_circle(gx, gy)])) == {0, 1, 2}


def test_yinyang_splits_are_the_published_ones():
    splits = yinyang_splits()
    assert list(splits) == ["train", "validation", "test"]
    published_splits = {"train": (5000, 42), "validation": (1000, 41), "test": (1000, 40)}
    for name, (size, seed) in published_splits.items():
        x, c = splits[name]
        np.testing.assert_array_equal(x, published(size, seed)[0])
        np.testing.assert_array_equal(c, published(size, seed)[1])


def test_yinyang_arguments():
    x, c = yinyang(0, 1)
    assert x.shape == (0, 4) and c.shape == (0,)
    with pytest.raises(ValueError):
        yinyang(-1, 1)
    with pytest.raises(ValueError):
        yinyang(10, 1, r_small=0.6, r_big=0.5)


# ------------------------------------------------------------------------------- encoding ----


def _columns(batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(batch.column(name).to_numpy() for name in ("sample", "neuron", "time"))


def _assert_sorted(batch: pa.RecordBatch) -> None:
    sample, neuron, _ = _columns(batch)
    key = sample.astype(np.uint64) << np.uint64(32) | neuron.astype(np.uint64)
    assert np.all(key[1:] > key[:-1]), "rows must be sorted by (sample, neuron), no duplicates"


def test_latency_times_and_order():
    x = np.array([[0.0, 0.5, 1.0], [0.25, 1.0, 0.0]])
    spikes, n_inputs = encode_latency(x, t_early=0.15, t_late=2.0)
    assert n_inputs == 3
    assert spikes.schema.equals(SPIKE_SCHEMA)
    sample, neuron, time = _columns(spikes)
    np.testing.assert_array_equal(sample, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(neuron, [0, 1, 2, 0, 1, 2])
    np.testing.assert_allclose(time, 0.15 + x.ravel() * 1.85, rtol=0, atol=1e-15)
    assert time[0] == 0.15 and time[2] == 2.0  # value 0 -> early, 1 -> late
    _assert_sorted(spikes)


def test_latency_invert_bias_replicate():
    x = np.array([[0.0, 0.5, 1.0], [0.25, 1.0, 0.0]])
    spikes, n_inputs = encode_latency(x, t_early=0.1, t_late=1.1, invert=True, replicate=2, bias_time=0.7)
    assert n_inputs == 3 * 2 + 1
    sample, neuron, time = _columns(spikes)
    assert spikes.num_rows == 2 * 7
    _assert_sorted(spikes)
    t = time.reshape(2, 7)
    expected = 0.1 + (1.0 - x) * 1.0  # bright is early
    # Copy r of channel c is neuron r * n_features + c.
    np.testing.assert_allclose(t[:, 0:3], expected, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(t[:, 3:6], t[:, 0:3])
    # Bias: last neuron id, same time in every sample.
    np.testing.assert_array_equal(neuron.reshape(2, 7)[:, 6], [6, 6])
    np.testing.assert_array_equal(t[:, 6], [0.7, 0.7])
    assert t[0, 2] == 0.1  # value 1 spikes first with invert


def test_latency_silent_value():
    x = np.array([[0.0, 0.5, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.25]])
    spikes, n_inputs = encode_latency(x, invert=True, silent_value=0.0, bias_time=0.5)
    assert n_inputs == 4
    _assert_sorted(spikes)
    sample, neuron, time = _columns(spikes)
    # Zero pixels emit nothing; the all-zero sample keeps only its bias spike.
    np.testing.assert_array_equal(sample, [0, 0, 1, 2, 2, 2])
    np.testing.assert_array_equal(neuron, [1, 3, 3, 0, 2, 3])
    np.testing.assert_allclose(time, [0.15 + 0.5 * 1.85, 0.5, 0.5, 0.15, 0.15 + 0.75 * 1.85, 0.5])
    # Without silencing, zeros spike at the latest time instead.
    spikes, _ = encode_latency(x, invert=True)
    assert spikes.num_rows == x.size and _columns(spikes)[2].max() == 2.0


def test_latency_encoder_object_matches_function():
    x = np.random.default_rng(1).random((20, 5))
    enc = LatencyEncoder(t_early=0.2, t_late=1.5, bias_time=0.9, replicate=3)
    a, na = enc(x)
    b, nb = encode_latency(x, t_early=0.2, t_late=1.5, bias_time=0.9, replicate=3)
    assert a.equals(b) and na == nb == 16
    assert enc.config()["encoder"] == "latency" and enc.config()["replicate"] == 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"features": np.array([[0.5, 1.5]])},
        {"features": np.array([[0.5, -0.1]])},
        {"features": np.array([[0.5, np.nan]])},
        {"features": np.array([0.5, 0.5])},
        {"features": np.zeros((1, 2)), "t_early": 2.0, "t_late": 1.0},
        {"features": np.zeros((1, 2)), "replicate": 0},
        {"features": np.zeros((1, 2)), "bias_time": np.inf},
    ],
)
def test_latency_rejects_bad_input(kwargs):
    with pytest.raises(ValueError):
        encode_latency(**kwargs)


# -------------------------------------------------------------------------------- Parquet ----


@pytest.fixture(scope="module")
def yinyang_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("yinyang")
    paths = write_dataset(directory, yinyang_splits(), LatencyEncoder(bias_time=0.9))
    return directory, paths


def test_parquet_files_and_schema(yinyang_dir):
    directory, paths = yinyang_dir
    assert paths.spikes.exists() and paths.samples.exists()
    assert not list(directory.glob("*.tmp"))
    spikes_file = pq.ParquetFile(paths.spikes)
    assert spikes_file.schema_arrow.equals(SPIKE_SCHEMA, check_metadata=False)
    for g in range(spikes_file.metadata.num_row_groups):
        for col in range(3):
            assert spikes_file.metadata.row_group(g).column(col).compression == "ZSTD"
    samples = pl.read_parquet(paths.samples)
    assert samples.columns == ["sample", "label", "split", "n_spikes", "f0", "f1", "f2", "f3"]
    assert samples["sample"].dtype == pl.UInt32 and samples["label"].dtype == pl.Int64
    np.testing.assert_array_equal(samples["sample"].to_numpy(), np.arange(7000))
    assert samples["split"].value_counts(sort=True).rows() == [
        ("train", 5000),
        ("validation", 1000),
        ("test", 1000),
    ]
    assert np.all(samples["n_spikes"].to_numpy() == 5)


def test_parquet_round_trip(yinyang_dir):
    directory, paths = yinyang_dir
    splits = yinyang_splits()
    spikes = pl.scan_parquet(paths.spikes).collect()
    samples = pl.scan_parquet(paths.samples).collect()
    first = 0
    encoder = LatencyEncoder(bias_time=0.9)
    for name, (x, c) in splits.items():
        rows = samples.filter(pl.col("split") == name)
        np.testing.assert_array_equal(rows["label"].to_numpy(), c)
        np.testing.assert_array_equal(rows.select("f0", "f1", "f2", "f3").to_numpy(), x)
        ref, n_inputs = encoder(x)
        got = spikes.filter(pl.col("sample").is_between(first, first + len(c) - 1))
        np.testing.assert_array_equal(got["sample"].to_numpy(), _columns(ref)[0] + first)
        np.testing.assert_array_equal(got["neuron"].to_numpy(), _columns(ref)[1])
        np.testing.assert_array_equal(got["time"].to_numpy(), _columns(ref)[2])

        ds = SpikeDataset(directory, name)
        assert len(ds) == len(c) and ds.n_inputs == n_inputs == 5
        np.testing.assert_array_equal(ds.features(), x)
        whole = ds.all()
        assert whole.spikes.equals(ref)
        np.testing.assert_array_equal(whole.labels, c)
        np.testing.assert_array_equal(whole.sample_ids, first + np.arange(len(c)))
        first += len(c)


def _check_epoch(ds, x, c, encoder, batch_size, seed, drop_last=False):
    """Run one epoch; check every batch against a fresh encoding; return the visiting order."""
    order = []
    for batch in ds.batches(batch_size, seed, drop_last=drop_last):
        local = batch.sample_ids - ds.first_sample
        assert batch.labels.dtype == np.int64
        np.testing.assert_array_equal(batch.labels, c[local])
        expected, _ = encoder(x[local])  # sample re-indexed to 0..B-1, in batch order
        assert batch.spikes.equals(expected)
        assert batch.spikes.schema.equals(SPIKE_SCHEMA)
        assert len(local) == batch_size or not drop_last
        order.append(local)
    return np.concatenate(order) if order else np.zeros(0, np.int64)


@pytest.mark.parametrize("resident", [True, False])
def test_batches_cover_every_sample_once(yinyang_dir, resident):
    directory, _ = yinyang_dir
    x, c = yinyang_splits()["validation"]
    ds = SpikeDataset(directory, "validation", resident=resident)
    encoder = LatencyEncoder(bias_time=0.9)
    plain = _check_epoch(ds, x, c, encoder, 150, None)
    np.testing.assert_array_equal(plain, np.arange(1000))  # no shuffle: stored order
    shuffled = _check_epoch(ds, x, c, encoder, 150, 3)
    np.testing.assert_array_equal(np.sort(shuffled), np.arange(1000))
    assert not np.array_equal(shuffled, plain)
    np.testing.assert_array_equal(_check_epoch(ds, x, c, encoder, 150, 3), shuffled)
    assert not np.array_equal(_check_epoch(ds, x, c, encoder, 150, 4), shuffled)
    dropped = _check_epoch(ds, x, c, encoder, 150, 3, drop_last=True)
    np.testing.assert_array_equal(dropped, shuffled[:900])


@pytest.mark.parametrize(("resident", "window"), [(True, 1), (False, 1), (False, 3)])
@pytest.mark.parametrize("seed", [None, 0, 1])
@pytest.mark.parametrize("batch_size", [1, 16, 10_000])
def test_batches_streaming_many_row_groups_and_silent_samples(tmp_path, resident, window, seed, batch_size):
    # Irregular spike counts (silent pixels, all-silent samples at the start, middle and end)
    # and tiny row groups, so windows, carries and zero-spike boundaries are all exercised.
    rng = np.random.default_rng(0)
    x = np.where(rng.random((403, 6)) < 0.4, 0.0, rng.random((403, 6)))
    x[[0, 7, 8, 200, 401, 402]] = 0.0
    c = rng.integers(0, 3, 403)
    splits = {"a": (x[:150], c[:150]), "b": (x[150:], c[150:])}
    encoder = functools.partial(encode_latency, silent_value=0.0, replicate=2)
    write_dataset(tmp_path, splits, encoder, rows_per_group=37)
    assert pq.ParquetFile(tmp_path / "spikes.parquet").metadata.num_row_groups > 10
    for name, (xs, cs) in splits.items():
        ds = SpikeDataset(tmp_path, name, resident=resident, window=window)
        assert ds.resident is resident and ds.n_inputs == 12
        order = _check_epoch(ds, xs, cs, encoder, batch_size, seed)
        np.testing.assert_array_equal(np.sort(order), np.arange(len(cs)))
        if seed is None:
            np.testing.assert_array_equal(order, np.arange(len(cs)))
        else:
            again = _check_epoch(ds, xs, cs, encoder, batch_size, seed)
            np.testing.assert_array_equal(again, order)
        assert ds.all().spikes.equals(encoder(xs)[0])


def test_resident_is_chosen_by_size(yinyang_dir):
    directory, _ = yinyang_dir
    assert SpikeDataset(directory, "train").resident
    assert not SpikeDataset(directory, "train", max_resident_bytes=1000).resident


def test_split_without_spikes(tmp_path):
    x = np.zeros((5, 3))
    write_dataset(tmp_path, {"only": (x, np.arange(5))}, LatencyEncoder(silent_value=0.0))
    ds = SpikeDataset(tmp_path, "only")
    batches = list(ds.batches(2, 1))
    assert [len(b.labels) for b in batches] == [2, 2, 1]
    assert all(b.spikes.num_rows == 0 for b in batches)
    assert ds.all().spikes.num_rows == 0 and ds.all().spikes.schema.equals(SPIKE_SCHEMA)


def test_dataset_errors(yinyang_dir, tmp_path):
    directory, _ = yinyang_dir
    with pytest.raises(KeyError, match="train"):
        SpikeDataset(directory, "nope")
    with pytest.raises(ValueError):
        next(SpikeDataset(directory, "test").batches(0))
    x = np.random.default_rng(0).random((4, 2))
    with pytest.raises(ValueError, match="features"):
        write_dataset(tmp_path, {"a": (x, np.zeros(4, int)), "b": (x[:, :1], np.zeros(4, int))})

    def unsorted(features):
        spikes, n = encode_latency(features)
        return spikes.take(pa.array(np.arange(spikes.num_rows)[::-1])), n

    with pytest.raises(ValueError, match="sorted"):
        write_dataset(tmp_path, {"a": (x, np.zeros(4, int))}, unsorted)


# --------------------------------------------------------------------------------- digits ----


def test_digits_import_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install delgrad\[digits\]"):
        digits()


def test_digits_split_and_encoding(tmp_path):
    sklearn_datasets = pytest.importorskip(
        "sklearn.datasets", reason="scikit-learn not installed (pip install delgrad[digits])"
    )
    raw = sklearn_datasets.load_digits()
    x, c = digits()
    assert x.shape == (1797, 64) and c.dtype == np.int64
    np.testing.assert_array_equal(x, raw.data / 16.0)
    assert x.min() == 0.0 and x.max() == 1.0

    splits = digits_splits(seed=0)
    assert list(splits) == ["train", "validation", "test"]
    assert sum(len(v[1]) for v in splits.values()) == 1797
    counts = np.bincount(c)
    np.testing.assert_array_equal(np.bincount(splits["test"][1]), np.rint(counts * 0.2))
    np.testing.assert_array_equal(np.bincount(splits["validation"][1]), np.rint(counts * 0.1))
    # The three splits partition the images: together they hold each image exactly as often
    # as the full set does (images are compared as rows, duplicates included).
    rows = np.concatenate([v[0] for v in splits.values()])
    full = np.unique(x, axis=0, return_counts=True)
    parts = np.unique(rows, axis=0, return_counts=True)
    np.testing.assert_array_equal(full[0], parts[0])
    np.testing.assert_array_equal(full[1], parts[1])
    again = digits_splits(seed=0)
    other = digits_splits(seed=1)
    for name in splits:
        np.testing.assert_array_equal(splits[name][0], again[name][0])
    assert not np.array_equal(splits["test"][0], other["test"][0])

    # Fast&Deep style: bright is early, blank pixels silent.
    encoder = LatencyEncoder(invert=True, silent_value=0.0)
    spikes, n_inputs = encoder(splits["test"][0])
    assert n_inputs == 64
    _assert_sorted(spikes)
    assert spikes.num_rows == np.count_nonzero(splits["test"][0])
    sample, neuron, time = _columns(spikes)
    np.testing.assert_allclose(time, 0.15 + (1.0 - splits["test"][0][sample, neuron]) * 1.85)

    write_dataset(tmp_path, splits, encoder)
    ds = SpikeDataset(tmp_path, "train")
    order = _check_epoch(ds, *splits["train"], encoder, 150, 0)
    np.testing.assert_array_equal(np.sort(order), np.arange(len(splits["train"][1])))


def test_temporal_patterns_class_is_the_firing_order():
    from delgrad.data.temporal import temporal_patterns, temporal_splits

    x, y = temporal_patterns(600, n_channels=3, gap=10.0, jitter=0.3, span=30.0, seed=5)
    assert x.shape == (600, 3) and x.min() >= 0 and x.max() <= 1
    assert set(np.unique(y)) == set(range(6))  # 3! orders
    perms = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]
    order = np.argsort(x, axis=1)
    np.testing.assert_array_equal(order, np.array(perms)[y])
    t = np.sort(x * 30.0, axis=1)
    assert np.all(np.diff(t, axis=1) > 10.0 - 6 * 0.3)  # spikes a whole gap apart
    again = temporal_patterns(600, n_channels=3, gap=10.0, jitter=0.3, span=30.0, seed=5)
    np.testing.assert_array_equal(again[0], x)
    s = temporal_splits(seed=1)
    assert [len(s[k][1]) for k in ("train", "validation", "test")] == [3000, 600, 600]
    assert not np.array_equal(s["train"][0][:600], s["test"][0])
    with pytest.raises(ValueError, match="n_classes"):
        temporal_patterns(10, n_channels=2, n_classes=3)
    with pytest.raises(ValueError, match="span"):
        temporal_patterns(10, n_channels=3, gap=10.0, span=20.0)
