"""Shards: how a batch is cut for data-parallel training, and how the shards' results are added.

Floating-point addition is not associative, so a gradient summed over a batch depends on how
the batch was grouped. The trainer therefore fixes the grouping independently of who computes
it: a batch of ``B`` samples is cut into ``S = min(shards, B)`` contiguous shards whose sizes
differ by at most one (:func:`shard_sizes`); a shard's gradient is what the core returns for
that shard as a batch of its own (the core's backward with ``shards=``, which computes every
shard of one call in parallel); and shard gradients are added left to right in shard order
(:func:`fold`). Losses are scaled by the whole batch (``1/B``), so a sample's loss gradient
does not depend on its shard either. One process computing all shards and N workers each
computing a contiguous run of them (:func:`assign`) then give the same bits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

__all__ = ["assign", "fold", "shard_sizes"]


def shard_sizes(batch_size: int, shards: int) -> list[int]:
    """Sizes of the ``min(shards, batch_size)`` contiguous shards of a batch, the larger first."""
    if batch_size < 1 or shards < 1:
        raise ValueError(f"shard_sizes: needs batch_size >= 1 and shards >= 1, got {batch_size} and {shards}")
    count = min(shards, batch_size)
    base, extra = divmod(batch_size, count)
    return [base + 1] * extra + [base] * (count - extra)


def assign(n_shards: int, workers: int) -> list[range]:
    """Contiguous runs of shard indices, one per worker (the first ones take one more); runs of
    workers beyond ``n_shards`` are empty."""
    if workers < 1:
        raise ValueError(f"assign: needs workers >= 1, got {workers}")
    base, extra = divmod(n_shards, workers)
    runs, start = [], 0
    for k in range(workers):
        size = base + (1 if k < extra else 0)
        runs.append(range(start, start + size))
        start += size
    return runs


def fold(parts: Sequence[NDArray[np.float64]]) -> NDArray[np.float64]:
    """``parts[0] + parts[1] + ...``, added left to right (never reassociated)."""
    if not parts:
        raise ValueError("fold: no shards")
    total = np.array(parts[0], dtype=np.float64, copy=True)
    for part in parts[1:]:
        total += part
    return total
