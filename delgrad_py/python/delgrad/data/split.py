"""A data split as the trainer sees it: spikes grouped once in the core, labels as int64."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from delgrad._core import SpikeSet


@dataclass
class Split:
    """One split of a data set, ready for the core; batches select samples by index."""

    spikes: SpikeSet
    labels: NDArray[np.int64]
    _counts: NDArray[np.int64] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def counts(self) -> NDArray[np.int64]:
        """Input spikes per sample (from the core's grouping, read once)."""
        if self._counts is None:
            self._counts = self.spikes.spike_counts().astype(np.int64)
        return self._counts
