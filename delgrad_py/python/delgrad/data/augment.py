"""Augmentations of spike data (Nowotny, Turner & Knight 2025, "Loss shaping enhances exact
gradient learning with EventProp in spiking neural networks"): a random channel shift and the
blending of two samples of the same class.

Both work on a whole batch of spikes at once (SPIKE_SCHEMA rows, ``sample`` local
``0..n_samples-1``, sorted by ``(sample, neuron)``), vectorised with numpy — no Python loop
over spikes or samples — and take a ``numpy.random.Generator``, so the result is a pure function
of the seed.  Outputs are again sorted by ``(sample, neuron, time)``.

What exactly is implemented:

:func:`channel_shift`
    Sample ``s`` gets one integer shift ``k_s`` drawn as
    ``rng.integers(-max_shift, max_shift + 1, n_samples)`` (that one call, so the shifts can
    be reproduced); every spike of the sample moves from channel ``c`` to ``c + k_s``; spikes
    that leave ``0..n_channels-1`` are dropped.  Times are unchanged.
:func:`blend_pairs` / :func:`blend`
    Output sample ``k`` mixes parents ``a_k`` and ``b_k``: each spike of ``a_k`` is kept with
    probability ``p`` and each spike of ``b_k`` with probability ``1 - p`` (independent
    Bernoulli draws, default 0.5).  The parents are first aligned in time: with ``m_a``, ``m_b``
    their mean spike times and ``m = (m_a + m_b) / 2``, ``a``'s times are shifted by ``m - m_a``
    and ``b``'s by ``m - m_b`` (a parent without spikes is not shifted); shifted times below 0
    are clipped to 0.  :func:`blend` draws the pairs: ``a`` runs over the batch (or ``n_out``
    samples drawn uniformly), ``b`` uniformly among the samples of ``a``'s class (possibly
    ``a`` itself when it is alone in its class); the label is the class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from delgrad._core import SpikeSet
from delgrad.data.encoding import spike_batch

__all__ = ["Blended", "EpochAugmentation", "blend", "blend_pairs", "channel_shift"]


def _columns(spikes: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        spikes.column("sample").to_numpy().astype(np.int64),
        spikes.column("neuron").to_numpy().astype(np.int64),
        spikes.column("time").to_numpy().astype(np.float64),
    )


def _n_samples(sample: np.ndarray, n_samples: int | None) -> int:
    if n_samples is None:
        return int(sample.max()) + 1 if sample.size else 0
    if sample.size and sample.max() >= n_samples:
        raise ValueError(f"spikes have sample ids >= n_samples={n_samples}")
    return int(n_samples)


def channel_shift(
    spikes: pa.RecordBatch,
    max_shift: int,
    n_channels: int,
    rng: np.random.Generator,
    *,
    n_samples: int | None = None,
    return_shifts: bool = False,
) -> pa.RecordBatch | tuple[pa.RecordBatch, np.ndarray]:
    """Shift every sample's channels by its own random integer in ``[-max_shift, max_shift]``;
    drop spikes leaving ``0..n_channels-1``.  ``n_samples`` defaults to ``max(sample) + 1``."""
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    sample, neuron, time = _columns(spikes)
    n = _n_samples(sample, n_samples)
    shifts = rng.integers(-max_shift, max_shift + 1, n)
    moved = neuron + shifts[sample]
    ok = (moved >= 0) & (moved < n_channels)
    # A constant shift per sample keeps the (sample, neuron) order; dropping rows keeps it too.
    out = spike_batch(sample[ok], moved[ok], time[ok])
    return (out, shifts) if return_shifts else out


class Blended(NamedTuple):
    spikes: pa.RecordBatch
    labels: np.ndarray
    parents: np.ndarray  # (n_out, 2): the a and b sample of each output sample


def _rows_of(sample: np.ndarray, n: int, which: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the samples ``which`` (in that order) and the output position of each."""
    counts = np.bincount(sample, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    lens = counts[which]
    ends = np.cumsum(lens)
    rows = np.arange(int(lens.sum()), dtype=np.int64) + np.repeat(starts[which] - (ends - lens), lens)
    return rows, np.repeat(np.arange(which.size), lens)


def blend_pairs(
    spikes: pa.RecordBatch,
    pairs: np.ndarray,
    rng: np.random.Generator,
    *,
    p: float = 0.5,
    n_samples: int | None = None,
) -> pa.RecordBatch:
    """Blend the parent pairs ``pairs`` (``(n_out, 2)`` sample ids) into ``n_out`` new samples
    (see the module docstring); output sample ``k`` comes from ``pairs[k]``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    sample, neuron, time = _columns(spikes)
    n = _n_samples(sample, n_samples)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if pairs.size and (pairs.min() < 0 or pairs.max() >= n):
        raise ValueError(f"pairs reference samples outside 0..{n - 1}")
    counts = np.bincount(sample, minlength=n)
    sums = np.bincount(sample, weights=time, minlength=n)
    mean = np.divide(sums, counts, out=np.zeros(n), where=counts > 0)
    a, b = pairs[:, 0], pairs[:, 1]
    both = (counts[a] > 0) & (counts[b] > 0)
    centre = (mean[a] + mean[b]) / 2
    shift_a = np.where(both, centre - mean[a], 0.0)
    shift_b = np.where(both, centre - mean[b], 0.0)
    rows_a, out_a = _rows_of(sample, n, a)
    rows_b, out_b = _rows_of(sample, n, b)
    keep_a = rng.random(rows_a.size) < p
    keep_b = rng.random(rows_b.size) >= p
    out_sample = np.concatenate([out_a[keep_a], out_b[keep_b]])
    out_neuron = np.concatenate([neuron[rows_a[keep_a]], neuron[rows_b[keep_b]]])
    out_time = np.concatenate(
        [
            time[rows_a[keep_a]] + shift_a[out_a[keep_a]],
            time[rows_b[keep_b]] + shift_b[out_b[keep_b]],
        ]
    )
    np.maximum(out_time, 0.0, out=out_time)
    order = np.lexsort((out_time, out_neuron, out_sample))
    return spike_batch(out_sample[order], out_neuron[order], out_time[order])


def blend(
    spikes: pa.RecordBatch,
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    n_out: int | None = None,
    p: float = 0.5,
) -> Blended:
    """Blend same-class pairs of the batch: ``n_out`` (default: batch size) new samples."""
    labels = np.asarray(labels, dtype=np.int64)
    n = labels.size
    if n == 0:
        return Blended(spikes.slice(0, 0), labels, np.zeros((0, 2), np.int64))
    a = np.arange(n) if n_out is None else rng.integers(0, n, int(n_out))
    by_class = np.argsort(labels, kind="stable")
    classes, first, count = np.unique(labels[by_class], return_index=True, return_counts=True)
    c = np.searchsorted(classes, labels[a])
    b = by_class[first[c] + np.floor(rng.random(a.size) * count[c]).astype(np.int64)]
    pairs = np.stack([a, b], axis=1)
    return Blended(blend_pairs(spikes, pairs, rng, p=p, n_samples=n), labels[a], pairs)


@dataclass(frozen=True)
class EpochAugmentation:
    """A new augmented copy of a training split every epoch, made for each batch from its own
    samples (the copy of an SHD-sized split is a gigabyte, and making it at once took 9 GB).

    In epoch ``e``, augmented sample ``j`` (``0 <= j < n``) is sample ``j`` blended with a
    partner drawn uniformly from its class (``blend``, keeping ``j``'s spikes with probability
    ``blend_p`` as :func:`blend_pairs`), then channel-shifted (``channel_shift``, as
    :func:`channel_shift`, over ``n_channels``); every draw comes from one generator seeded
    with ``(seed, e, j)``. A sample's augmentation is a pure function of those three numbers: the
    same in any batch, in any worker process and after a resume. Its label is ``j``'s."""

    seed: int
    n_channels: int
    channel_shift: int = 0
    blend: bool = False
    blend_p: float = 0.5

    def __post_init__(self) -> None:
        if self.channel_shift < 0:
            raise ValueError(f"channel_shift must be >= 0, got {self.channel_shift}")
        if not 0.0 <= self.blend_p <= 1.0:
            raise ValueError(f"blend_p must be in [0, 1], got {self.blend_p}")

    def samples(
        self, spikes: SpikeSet, labels: NDArray[np.int64], which: NDArray[np.integer], epoch: int
    ) -> tuple[pa.RecordBatch, NDArray[np.int64]]:
        """The augmented samples of the originals ``which`` in epoch ``epoch``, as one batch
        (its sample ``k`` made from ``which[k]``), and their labels."""
        labels = np.asarray(labels, dtype=np.int64)
        which = np.asarray(which, dtype=np.int64)
        if which.size and (which.min() < 0 or which.max() >= labels.size):
            raise IndexError(f"augmented sample ids must be in 0..{labels.size - 1}")
        by_class = np.argsort(labels, kind="stable")
        classes, first, count = np.unique(labels[by_class], return_index=True, return_counts=True)
        columns: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        # One small, vectorised piece of work per sample of the batch: per-sample generators are
        # what makes a sample's draws independent of the batch it is in.
        for k, j in enumerate(which.tolist()):
            rng = np.random.default_rng([self.seed, epoch, j])
            if self.blend:
                c = np.searchsorted(classes, labels[j])
                partner = int(by_class[first[c] + rng.integers(count[c])])
                parents = spikes.select(np.array([j, partner], dtype=np.uint32))
                sample = blend_pairs(parents, np.array([[0, 1]]), rng, p=self.blend_p, n_samples=2)
            else:
                sample = spikes.select(np.array([j], dtype=np.uint32))
            if self.channel_shift:
                sample = channel_shift(sample, self.channel_shift, self.n_channels, rng, n_samples=1)
            _, neuron, time = _columns(sample)
            columns.append((np.full(neuron.size, k, dtype=np.int64), neuron, time))
        if not columns:
            return spike_batch(np.zeros(0), np.zeros(0), np.zeros(0)), labels[which]
        sample, neuron, time = (np.concatenate(parts) for parts in zip(*columns))
        return spike_batch(sample, neuron, time), labels[which]
