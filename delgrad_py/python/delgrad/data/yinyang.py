"""The Yin-Yang data set (Kriener, Göltz & Petrovici 2021, arXiv:2102.08211).

This reproduces ``YinYangDataset`` of the published repository (lkriener/yin_yang_data_set,
``dataset.py``) bit for bit: the same ``np.random.RandomState(seed)`` stream consumed in the
same order, the same class criteria, the same floating-point operations.  The published code
draws, per sample, ``goal = rng.randint(3)`` and then ``x, y = rng.rand(2) * 2 * r_big`` until
the point lies inside the big circle and has the goal class.

Instead of calling the RNG once per attempt, we draw the raw 32-bit Mersenne-Twister words of
the same stream in one block and decode them the way numpy's legacy ``RandomState`` does:

* ``randint(3)`` is masked rejection sampling: one word per try, value ``word & 3``, rejected
  when it equals 3;
* ``rand()`` consumes two words ``a, b``: ``((a >> 5) * 2**26 + (b >> 6)) / 2**53``;
  ``rand(2)`` is two such doubles, so one point attempt consumes exactly four words.

Every candidate point is evaluated at every word offset at once (vectorised); only the walk
that picks the accepted offsets is sequential, one O(1) step per *sample*.  The test suite
checks this against a literal transcription of the published loop.
"""

from __future__ import annotations

import numpy as np

__all__ = ["YINYANG_CLASS_NAMES", "inside_circle", "yinyang", "yinyang_class", "yinyang_splits"]

#: Class names in label order, as in the published ``YinYangDataset.class_names``.
YINYANG_CLASS_NAMES: tuple[str, str, str] = ("yin", "yang", "dot")

# (size, seed) of the published splits (README of lkriener/yin_yang_data_set).
_SPLITS: dict[str, tuple[int, int]] = {
    "train": (5000, 42),
    "validation": (1000, 41),
    "test": (1000, 40),
}

_TWO_26 = 67108864.0
_TWO_53 = 9007199254740992.0
# Initial block of raw words: 40 per sample + 4096 (see yinyang()); module constants so the
# tests can shrink them and exercise the doubling path.
_WORDS_PER_SAMPLE = 40
_WORDS_EXTRA = 4096
# Sentinel "no such offset" for the next-index tables; larger than any word index.
_NONE = np.iinfo(np.int64).max


def _pow2(a: np.ndarray) -> np.ndarray:
    """``a ** 2`` rounded exactly as the published scalar code rounds it.

    The published code squares numpy float64 *scalars*, which calls libm ``pow``; numpy's array
    fast path for ``** 2`` computes ``a * a`` instead, and the two differ in the last bit for
    about one value in a thousand.  An array exponent avoids the fast path, so the class
    decision near a boundary matches the published one.
    """
    return np.power(a, np.full_like(a, 2.0))


def _classify(x: np.ndarray, y: np.ndarray, r_small: float, r_big: float) -> tuple[np.ndarray, np.ndarray]:
    """``(inside big circle, class)`` with the published formulas, vectorised.

    ``(y - r_big) ** 2`` enters all three distances; computing it once saves a third of the
    (slow, libm) squarings.
    """
    dy2 = _pow2(y - r_big)
    inside = ~(np.sqrt(_pow2(x - r_big) + dy2) > r_big)
    d_right = np.sqrt(_pow2(x - 1.5 * r_big) + dy2)
    d_left = np.sqrt(_pow2(x - 0.5 * r_big) + dy2)
    criterion1 = d_right <= r_small
    criterion2 = (d_left > r_small) & (d_left <= 0.5 * r_big)
    criterion3 = (y > r_big) & (d_right > 0.5 * r_big)
    is_yin = criterion1 | criterion2 | criterion3
    is_circles = (d_right < r_small) | (d_left < r_small)
    return inside, np.where(is_circles, 2, is_yin.astype(np.int64)).astype(np.int64)


def yinyang_class(x: np.ndarray | float, y: np.ndarray | float, r_small: float = 0.1, r_big: float = 0.5) -> np.ndarray:
    """Class of points ``(x, y)``: 0 = yin, 1 = yang, 2 = dot (published ``which_class``).

    Vectorised over any broadcastable ``x``, ``y`` (e.g. a meshgrid for plotting the class
    map).  Points outside the big circle get whatever class the formula gives them; the
    published sampler never produces such points, so mask them with :func:`inside_circle`
    when plotting.  Returns an int64 array of the broadcast shape.
    """
    x, y = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    return _classify(x, y, r_small, r_big)[1]


def inside_circle(x: np.ndarray | float, y: np.ndarray | float, r_big: float = 0.5) -> np.ndarray:
    """Whether ``(x, y)`` lies inside the big circle, with the published (inclusive) test."""
    x, y = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    return ~(np.sqrt(_pow2(x - r_big) + _pow2(y - r_big)) > r_big)


def _raw_words(seed: int, n: int) -> np.ndarray:
    """The first ``n`` raw 32-bit outputs of ``np.random.RandomState(seed)``.

    Copying the legacy-seeded state into a bare ``MT19937`` is the public way to get at the
    words without any transformation.
    """
    key, pos = np.random.RandomState(seed).get_state()[1:3]
    bitgen = np.random.MT19937()
    bitgen.state = {"bit_generator": "MT19937", "state": {"key": key, "pos": pos}}
    return bitgen.random_raw(n).astype(np.uint32)


def _next_index(mask: np.ndarray) -> np.ndarray:
    """For each position ``p``: the smallest ``q >= p`` with ``mask[q]``, else ``_NONE``."""
    idx = np.where(mask, np.arange(mask.size, dtype=np.int64), _NONE)
    return np.minimum.accumulate(idx[::-1])[::-1]


def _try_generate(
    size: int, seed: int, r_small: float, r_big: float, n_words: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Generate from the first ``n_words`` words, or ``None`` if they do not suffice."""
    words = _raw_words(seed, n_words)
    hi = (words >> 5).astype(np.float64)
    lo = (words >> 6).astype(np.float64)
    # uniform[k]: the double that rand() returns when its first word is words[k].
    uniform = (hi[:-1] * _TWO_26 + lo[1:]) / _TWO_53
    # A point attempt starting at word k uses doubles at k and k + 2 (four words in all).
    n_cand = n_words - 3
    xs = uniform[:n_cand] * 2.0 * r_big
    ys = uniform[2 : n_cand + 2] * 2.0 * r_big
    inside, cls = _classify(xs, ys, r_small, r_big)
    cls = np.where(inside, cls, -1)

    # Attempts following a goal draw at word q start at q + 1, q + 5, ...: the next accepted
    # attempt of class c from offset p is the next index with the same residue mod 4.
    next_of_class = np.full((3, n_cand), _NONE, dtype=np.int64)
    for c in range(3):
        for r in range(4):
            nxt = _next_index(cls[r::4] == c)
            hit = nxt != _NONE
            next_of_class[c, r::4][hit] = nxt[hit] * 4 + r
    next_goal = _next_index((words & 3) != 3)
    goal_of = (words & 3).astype(np.int64)

    # The only sequential part: one O(1) step per sample (not per attempt or per word).
    accepted = np.empty(size, dtype=np.int64)
    pos = 0
    for i in range(size):
        if pos >= n_cand:
            return None
        q = int(next_goal[pos])
        if q + 1 >= n_cand:  # also catches _NONE
            return None
        a = int(next_of_class[goal_of[q], q + 1])
        if a == _NONE:
            return None
        accepted[i] = a
        pos = a + 4
    x = xs[accepted]
    y = ys[accepted]
    features = np.stack([x, y, 1.0 - x, 1.0 - y], axis=1)
    return features, cls[accepted].astype(np.int64)


def yinyang(size: int, seed: int, r_small: float = 0.1, r_big: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``size`` Yin-Yang samples exactly as the published ``YinYangDataset``.

    Returns ``(features, labels)``: features ``(size, 4)`` float64 ``[x, y, 1 - x, 1 - y]``,
    labels ``(size,)`` int64 in ``{0: yin, 1: yang, 2: dot}``.  Identical, bit for bit, to
    ``YinYangDataset(r_small, r_big, size, seed)`` of lkriener/yin_yang_data_set (both its
    ``RandomState(seed)`` version and the older ``np.random.seed(seed)`` one, which draw the
    same stream).
    """
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    if not 0 < r_small < r_big:
        raise ValueError(f"need 0 < r_small < r_big, got r_small={r_small}, r_big={r_big}")
    if size == 0:
        return np.empty((0, 4), dtype=np.float64), np.empty(0, dtype=np.int64)
    # Expected need is ~29 words per sample (1.3 per goal draw, 4 per attempt, and the dots,
    # 8 % of the square, take ~16 attempts); start above that and double if it falls short.
    n_words = max(_WORDS_PER_SAMPLE * size + _WORDS_EXTRA, 8)
    while (out := _try_generate(size, seed, r_small, r_big, n_words)) is None:
        n_words *= 2
        # The published loop would spin forever if a class had no area for these radii.
        if n_words > max(1000 * size, 1 << 22):
            raise RuntimeError(f"a class is (nearly) unreachable for r_small={r_small}, r_big={r_big}")
    return out


def yinyang_splits(r_small: float = 0.1, r_big: float = 0.5) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The published splits: train 5000 (seed 42), validation 1000 (seed 41), test 1000 (seed 40).

    Returns ``{"train": (features, labels), "validation": ..., "test": ...}`` in that order,
    the form :func:`delgrad.data.parquet.write_dataset` takes.
    """
    return {name: yinyang(size, seed, r_small, r_big) for name, (size, seed) in _SPLITS.items()}
