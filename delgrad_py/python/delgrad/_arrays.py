"""Parameter conversion shared by the functional and network APIs."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from delgrad._core import ParameterError, ShapeError

DELAY_KINDS = ("none", "synaptic", "axonal", "dendritic")


def as_f64(x: ArrayLike, name: str, ndim: int | None = None) -> NDArray[np.float64]:
    """A C-contiguous float64 view of ``x`` (no copy when it already is one)."""
    try:
        a = np.ascontiguousarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ShapeError(f"{name}: cannot be read as a float64 array ({e})") from None
    if ndim is not None and a.ndim != ndim:
        raise ShapeError(f"{name}: expected a {ndim}-dimensional array, got shape {a.shape}")
    return a


def delay_kind_of(weights: NDArray[np.float64], delays: NDArray[np.float64] | None, kind: str | None) -> str:
    """The delay parametrisation: explicit, or read off the shape of ``delays``."""
    if kind is not None:
        if kind not in DELAY_KINDS:
            raise ParameterError(f"delay_kind must be one of {DELAY_KINDS}, got {kind!r}")
        if kind == "none" and delays is not None and delays.size:
            raise ParameterError("delay_kind is 'none' but delays were given")
        return kind
    if delays is None:
        return "none"
    n_out, n_in = weights.shape
    if delays.ndim == 2:
        return "synaptic"
    if delays.ndim == 1 and n_in != n_out:
        if delays.shape[0] == n_in:
            return "axonal"
        if delays.shape[0] == n_out:
            return "dendritic"
    if delays.ndim == 1 and n_in == n_out:
        raise ShapeError(
            "delays: a 1-d delay vector is ambiguous for a square layer; pass delay_kind='axonal' or 'dendritic'"
        )
    raise ShapeError(
        f"delays: shape {delays.shape} fits no parametrisation of weights {weights.shape} "
        f"(synaptic ({n_out}, {n_in}), axonal ({n_in},), dendritic ({n_out},))"
    )
