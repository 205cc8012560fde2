"""scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), split and scaled.

The images ship inside scikit-learn (``sklearn.datasets.load_digits``), so nothing is
downloaded.  scikit-learn is an optional dependency: ``pip install delgrad[digits]``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DIGITS_SPLIT_NAMES", "digits", "digits_splits"]

#: Split names in the order :func:`digits_splits` returns them.
DIGITS_SPLIT_NAMES: tuple[str, str, str] = ("train", "validation", "test")


def digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits: features ``(1797, 64)`` float64 in ``[0, 1]`` (pixel / 16, row-major
    8x8), labels ``(1797,)`` int64 in ``0..9``, in scikit-learn's order."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # scikit-learn is an optional extra, say how to get it
        raise ImportError("the digits data set needs scikit-learn: pip install delgrad[digits]") from err
    bunch = load_digits()
    # Pixels are integer counts 0..16 (4x4 blocks of a 32x32 bitmap); /16 is exact in float64.
    features = np.asarray(bunch.data, dtype=np.float64) / 16.0
    labels = np.asarray(bunch.target, dtype=np.int64)
    return features, labels


def digits_splits(
    seed: int = 0, validation: float = 0.1, test: float = 0.2
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Deterministic stratified train/validation/test split of :func:`digits`.

    In every class, ``round(n_class * test)`` images go to test, ``round(n_class * validation)``
    to validation and the rest to train; which ones is drawn with
    ``np.random.default_rng(seed)``.  Within a split the images keep scikit-learn's order
    (shuffle at batch time).  Returns ``{"train": (features, labels), "validation": ...,
    "test": ...}``, the form :func:`delgrad.data.parquet.write_dataset` takes.
    """
    if not (0.0 <= validation and 0.0 <= test and validation + test < 1.0):
        raise ValueError(f"need validation, test >= 0 and validation + test < 1, got {validation}, {test}")
    features, labels = digits()
    n_classes = int(labels.max()) + 1
    counts = np.bincount(labels, minlength=n_classes)
    n_test = np.rint(counts * test).astype(np.int64)
    n_val = np.rint(counts * validation).astype(np.int64)

    # Sort by (class, random key): each class becomes a contiguous, randomly ordered run, and
    # an image's rank in its run decides its split — stratified without a loop over classes.
    key = np.random.default_rng(seed).random(labels.size)
    order = np.lexsort((key, labels))
    class_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(labels.size, dtype=np.int64)
    rank[order] = np.arange(labels.size) - class_start[labels[order]]
    split_of = np.where(rank < n_test[labels], 2, np.where(rank < (n_test + n_val)[labels], 1, 0))
    return {name: (features[split_of == k], labels[split_of == k]) for k, name in enumerate(DIGITS_SPLIT_NAMES)}
