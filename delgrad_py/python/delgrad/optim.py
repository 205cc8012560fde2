"""Optimisation on the host: Adam with per-layer learning rates, a step schedule, gradient norm
cap, and DelGrad's delay parametrisations. Parameters are small dense arrays; the spike work
happened in the core."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray


@dataclass
class Adam:
    """Adam (Kingma & Ba) over a list of arrays, one learning rate per array."""

    lrs: list[float]
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self) -> None:
        self.m: list[NDArray[np.float64]] | None = None
        self.v: list[NDArray[np.float64]] | None = None
        self.t = 0

    def step(self, params: list[NDArray[np.float64]], grads: list[NDArray[np.float64]], scale: float = 1.0) -> None:
        if self.m is None:
            self.m = [np.zeros_like(p) for p in params]
            self.v = [np.zeros_like(p) for p in params]
        assert self.v is not None
        self.t += 1
        c1 = 1.0 - self.beta1**self.t
        c2 = 1.0 - self.beta2**self.t
        for p, g, m, v, lr in zip(params, grads, self.m, self.v, self.lrs):
            m *= self.beta1
            m += (1.0 - self.beta1) * g
            v *= self.beta2
            v += (1.0 - self.beta2) * g * g
            p -= (lr * scale) * (m / c1) / (np.sqrt(v / c2) + self.eps)

    def state(self) -> dict:
        return {"t": self.t, "m": self.m, "v": self.v}

    def load_state(self, state: dict) -> None:
        self.t, self.m, self.v = state["t"], state["m"], state["v"]


def step_lr(epoch: int, step_size: int, gamma: float) -> float:
    """StepLR: the factor on the base learning rate at ``epoch``."""
    return gamma ** (epoch // step_size) if step_size > 0 else 1.0


def cosine_lr(epoch: int, epochs: int, floor: float) -> float:
    """Cosine annealing from 1 at epoch 0 to ``floor`` at the last epoch."""
    if epochs <= 1:
        return 1.0
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * epoch / (epochs - 1)))


def clip_norm(grads: list[NDArray[np.float64]], max_norm: float | None) -> float:
    """Scales ``grads`` in place to a global norm of at most ``max_norm``; returns the norm."""
    norm = float(np.sqrt(sum(float(np.sum(g * g)) for g in grads)))
    if max_norm and norm > max_norm:
        for g in grads:
            g *= max_norm / norm
    return norm


@dataclass(frozen=True)
class DelayParam:
    """How the optimiser sees delays.

    ``"clip"``: the delay itself, clipped to ``[low, high]`` after each step (``high=None``:
    no upper bound).
    ``"sigmoid"``: DelGrad's ``d = low + (high - low) * sigmoid(p)`` over an unconstrained ``p``.
    """

    kind: Literal["clip", "sigmoid"] = "clip"
    low: float = field(default=0.0, metadata={"ge": 0.0})
    high: float | None = field(default=None, metadata={"ge": 0.0})

    def __post_init__(self) -> None:
        if self.kind not in ("clip", "sigmoid"):
            raise ValueError(f"delay parametrisation must be 'clip' or 'sigmoid', got {self.kind!r}")
        if self.kind == "sigmoid" and (self.high is None or self.high <= self.low):
            raise ValueError(
                f"the sigmoid delay parametrisation needs high > low, got low={self.low}, high={self.high}"
            )

    def to_raw(self, d: NDArray[np.float64]) -> NDArray[np.float64]:
        if self.kind == "clip":
            return d.copy()
        x = np.clip((d - self.low) / (self.high - self.low), 1e-6, 1 - 1e-6)
        return np.log(x / (1 - x))

    def to_delay(self, p: NDArray[np.float64]) -> NDArray[np.float64]:
        if self.kind == "clip":
            return p
        return self.low + (self.high - self.low) / (1.0 + np.exp(-p))

    def grad_raw(self, p: NDArray[np.float64], g_delay: NDArray[np.float64]) -> NDArray[np.float64]:
        if self.kind == "clip":
            return g_delay
        s = 1.0 / (1.0 + np.exp(-p))
        return g_delay * (self.high - self.low) * s * (1 - s)

    def project(self, p: NDArray[np.float64]) -> None:
        if self.kind == "clip":
            np.clip(p, max(self.low, 0.0), self.high, out=p)
