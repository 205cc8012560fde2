"""A data split as the trainer sees it: spikes grouped once in the core, labels as int64."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from delgrad._core import SpikeSet


@dataclass
class Split:
    """One split of a data set, ready for the core; batches select samples by index."""

    spikes: SpikeSet
    labels: NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.labels)
