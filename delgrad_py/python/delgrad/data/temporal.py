"""A temporal-pattern task that a spiking network solves with delays and cannot without them.

Every sample has ``n_channels`` input channels that each spike once. The class is the *order*
in which the channels fire: class ``k`` is the ``k``-th permutation of the channels (in
lexicographic order), channel ``perm[r]`` firing at ``onset + r * gap`` plus Gaussian jitter,
with a random onset per sample. Every sample of every class has the same channels, the same
number of spikes and the same spread of times; only the relative timing across channels
differs.

Why delays are needed: with ``gap`` many membrane and synaptic time constants long, the
postsynaptic potentials of two input spikes never overlap, so without delays every neuron
sees the same isolated responses in every class, only reordered in time, and an
order-invariant readout (the maximum voltage of a leaky integrator) is at chance,
``1 / n_classes``. A neuron whose input delays undo its preferred order gets all its inputs at
once and fires only for that class: a coincidence detector per class.

Features are the spike times divided by ``span`` (so in ``[0, 1]``); encode them with
``LatencyEncoder(t_early=0, t_late=span, bias_time=None)`` to get the spikes back.
"""

from __future__ import annotations

import itertools

import numpy as np

__all__ = ["temporal_patterns", "temporal_splits"]

_SPLITS = {"train": (3000, 0), "validation": (600, 1), "test": (600, 2)}


def temporal_patterns(
    n: int,
    *,
    n_channels: int = 3,
    n_classes: int | None = None,
    gap: float = 10.0,
    jitter: float = 0.3,
    onset_max: float = 5.0,
    span: float = 30.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` samples: features ``(n, n_channels)`` (spike time / span) and labels ``(n,)``.

    ``n_classes`` (default: every permutation, ``n_channels!``) takes the first permutations
    in lexicographic order. Times are clipped to ``[0, span]``; choose ``span`` above
    ``onset_max + (n_channels - 1) * gap`` plus a few ``jitter``.
    """
    perms = np.array(list(itertools.permutations(range(n_channels))), dtype=np.int64)
    n_classes = len(perms) if n_classes is None else int(n_classes)
    if not 2 <= n_classes <= len(perms):
        raise ValueError(f"n_classes must be in [2, {len(perms)}] for {n_channels} channels, got {n_classes}")
    if n < 0 or gap <= 0 or jitter < 0 or onset_max < 0:
        raise ValueError("need n >= 0, gap > 0, jitter >= 0, onset_max >= 0")
    if span < onset_max + (n_channels - 1) * gap:
        raise ValueError(f"span {span} is shorter than the patterns ({onset_max + (n_channels - 1) * gap})")
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    onset = rng.uniform(0.0, onset_max, n)
    rank = np.argsort(perms[labels], axis=1)  # rank[s, c]: position of channel c in the order
    times = onset[:, None] + rank * gap + rng.normal(0.0, jitter, (n, n_channels))
    return np.clip(times, 0.0, span) / span, labels


def temporal_splits(seed: int = 0, **kwargs) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Train / validation / test splits (3000 / 600 / 600), each with its own seed stream."""
    return {name: temporal_patterns(n, seed=1000 * seed + s, **kwargs) for name, (n, s) in _SPLITS.items()}
