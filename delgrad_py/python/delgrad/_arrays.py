"""Parameter conversion shared by the functional and network APIs."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from delgrad import _core
from delgrad._core import ParameterError, ShapeError

DELAY_KINDS: tuple[str, ...] = _core.DELAY_KINDS


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
    shapes = {k: tuple(_core.delay_shape(k, n_out, n_in)) for k in DELAY_KINDS if k != "none"}
    if delays.ndim == 2:
        return "synaptic"  # a wrong 2-d shape is then reported against the weights' shape
    fits = [k for k, shape in shapes.items() if delays.shape == shape]
    if len(fits) == 1:
        return fits[0]
    if fits:
        raise ShapeError(
            f"delays: shape {delays.shape} is ambiguous for weights {weights.shape} "
            f"(fits {' and '.join(fits)}); pass delay_kind={fits[0]!r} or {fits[1]!r}"
        )
    listed = ", ".join(f"{k} {shape}" for k, shape in shapes.items())
    raise ShapeError(f"delays: shape {delays.shape} fits no parametrisation of weights {weights.shape} ({listed})")
