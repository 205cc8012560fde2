"""Losses on output first-spike times (computed in the Rust core)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from delgrad import _core
from delgrad._arrays import as_f64


@dataclass(frozen=True)
class LossConfig:
    """Which loss and its constants.

    ``kind="mse"``: DelGrad's shift-invariant MSE, ``1/2 sum_{n != l} (t_n - t_l - delta)^2``.
    ``kind="ce"``: Fast&Deep's cross-entropy on ``softmax(-t / (xi tau_s))`` plus
    ``alpha (exp(t_l / (beta tau_s)) - 1)``.
    Silent outputs enter at ``t_silent`` with zero gradient.
    """

    kind: Literal["mse", "ce"] = "mse"
    delta: float = 0.3
    xi: float = field(default=0.2, metadata={"gt": 0.0})
    alpha: float = 0.005
    beta: float = field(default=2.7, metadata={"gt": 0.0})
    t_silent: float = 5.0


@dataclass(frozen=True)
class LossResult:
    loss: float
    grad: NDArray[np.float64]
    predictions: NDArray[np.int64]


def spike_time_loss(
    times: ArrayLike, labels: ArrayLike, config: LossConfig, tau_s: float = 1.0, *, batch_size: int | None = None
) -> LossResult:
    """Mean loss over the batch, ``dL/dt`` shaped like ``times``, and predictions (earliest
    output spike; -1 when all outputs are silent). ``batch_size``: the rows are part of a
    batch of that many samples (a shard): loss and gradient are divided by it instead of the
    number of rows, so each row's gradient is the one the whole batch would give it."""
    t = as_f64(times, "times", ndim=2)
    lab = np.ascontiguousarray(labels, dtype=np.int64)
    loss, grad, pred = _core.loss(
        t,
        lab,
        config.kind,
        tau_s,
        config.t_silent,
        delta=config.delta,
        xi=config.xi,
        alpha=config.alpha,
        beta=config.beta,
        batch_size=batch_size,
    )
    return LossResult(loss=loss, grad=grad, predictions=pred)
