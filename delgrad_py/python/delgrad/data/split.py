"""A data split as the trainer sees it: spikes grouped once in the core, labels as int64."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from delgrad._core import SpikeSet

if TYPE_CHECKING:
    from delgrad.data.augment import EpochAugmentation


@dataclass
class Split:
    """One split of a data set, ready for the core; batches select samples by index.

    With ``augment`` (a training split under ``[augment]``) an epoch has :attr:`epoch_size` =
    twice ``len(split)`` samples: ids ``n..2n-1`` are that epoch's augmented copies of samples
    ``0..n-1``, made per batch by :meth:`take`."""

    spikes: SpikeSet
    labels: NDArray[np.int64]
    augment: EpochAugmentation | None = None
    _counts: NDArray[np.int64] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def counts(self) -> NDArray[np.int64]:
        """Input spikes per sample (from the core's grouping, read once)."""
        if self._counts is None:
            self._counts = self.spikes.spike_counts().astype(np.int64)
        return self._counts

    @property
    def epoch_size(self) -> int:
        """Samples in a training epoch: the split, plus its augmented copy with ``augment``."""
        return 2 * len(self) if self.augment is not None else len(self)

    def take(self, select: NDArray[np.uint32], epoch: int) -> tuple[Split, NDArray[np.uint32]]:
        """What the batch ``select`` of epoch ``epoch`` is read from: this split and ``select``
        themselves, or, when the batch holds augmented samples, a split of exactly the batch's
        samples (in ``select``'s order) and ``0..len(select)-1``."""
        n = len(self)
        select = np.asarray(select)
        if self.augment is None or not select.size or int(select.max()) < n:
            return self, select
        if int(select.max()) >= 2 * n:
            raise IndexError(f"sample id {int(select.max())} is outside the epoch's 0..{2 * n - 1}")
        from delgrad.data.encoding import spike_batch

        augmented = select >= n
        at_original, at_augmented = np.flatnonzero(~augmented), np.flatnonzero(augmented)
        original = self.spikes.select(select[~augmented].astype(np.uint32))
        extra, extra_labels = self.augment.samples(self.spikes, self.labels, select[augmented] - n, epoch)
        parts = [(original, at_original), (extra, at_augmented)]
        sample = np.concatenate([at[batch.column("sample").to_numpy()] for batch, at in parts])
        # Stable: every sample's rows keep the order they were made in.
        order = np.argsort(sample, kind="stable")
        neuron = np.concatenate([batch.column("neuron").to_numpy() for batch, _ in parts])[order]
        time = np.concatenate([batch.column("time").to_numpy() for batch, _ in parts])[order]
        labels = np.empty(select.size, dtype=np.int64)
        labels[at_original] = self.labels[select[~augmented]]
        labels[at_augmented] = extra_labels
        batch = Split(SpikeSet(spike_batch(sample[order], neuron, time), select.size), labels)
        return batch, np.arange(select.size, dtype=np.uint32)
