"""Training loop: exact gradients from the core, Adam on the host, DelGrad's training aids.

One epoch = a seeded permutation of the training split cut into batches. Each batch is chosen
by index from a :class:`SpikeSet` holding the whole split, so Python handles neither spikes nor
copies. Everything that influences the result (parameters, optimiser moments, RNG state, bump
state) is in the checkpoint, so a resumed run ends exactly where an uninterrupted one would.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from delgrad._core import SpikeSet, Trace
from delgrad.losses import LossConfig, spike_time_loss
from delgrad.network import Network
from delgrad.optim import Adam, DelayParam, clip_norm, step_lr


@dataclass
class TrainConfig:
    """Hyperparameters. Per-layer values take a list with one entry per layer."""

    epochs: int = 300
    batch_size: int = 150
    lr: list[float] = field(default_factory=lambda: [0.005, 0.005])
    lr_delay: list[float] = field(default_factory=lambda: [0.005, 0.005])
    lr_step: int = 20
    lr_gamma: float = 0.95
    max_grad_norm: float | None = None
    # Floor on V'(T) in the gradient formulas (None: the exact 1e-12). In the loop, recorded
    # spikes can sit where the host's model is flat; see Network.backward.
    min_slope: float | None = None
    # DelGrad / Fast&Deep weight bumping: when a layer has more silent neurons in a batch than
    # `max_silent` allows, the silent neurons' input weights grow by `bump` and the step is skipped.
    max_silent: list[float] = field(default_factory=lambda: [0.3, 0.0])
    bump: float = 0.0005
    bump_exponential: bool = True
    delay: DelayParam = field(default_factory=DelayParam)
    loss: LossConfig = field(default_factory=LossConfig)
    seed: int = 0
    checkpoint_every: int = 10
    # Early-stopping style model selection: at the end, restore the parameters of the epoch with
    # the best accuracy on this evaluation split (None: keep the last epoch's parameters).
    select_on: str | None = "validation"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        if "delay" in d and isinstance(d["delay"], dict):
            d["delay"] = DelayParam(**d["delay"])
        if "loss" in d and isinstance(d["loss"], dict):
            d["loss"] = LossConfig(**d["loss"])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Split:
    """A data split ready for the core: spikes grouped once, labels as int64."""

    spikes: SpikeSet
    labels: NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    silent: list[float]  # fraction of silent (sample, neuron) pairs per layer
    predictions: NDArray[np.int64]
    trace: Trace


def _per_layer(v: list[float] | float, n: int, name: str) -> list[float]:
    vals = [float(v)] * n if isinstance(v, (int, float)) else [float(x) for x in v]
    if len(vals) != n:
        raise ValueError(f"train.{name}: {len(vals)} values for {n} layers")
    return vals


def silent_fractions(trace: Trace) -> list[float]:
    return [float(np.mean(np.isinf(trace.first_times(l)))) if trace.n_samples else 0.0 for l in range(trace.n_layers)]


Forward = Callable[[Network, SpikeSet, "NDArray[np.uint32] | None"], Trace]


def evaluate(net: Network, split: Split, loss: LossConfig, forward: Forward | None = None) -> EvalResult:
    """Loss, accuracy and silent fractions of ``net`` on a whole split (one core call, or
    ``forward(net, spikes, None)`` when given: a hardware loop evaluates on the hardware)."""
    trace = forward(net, split.spikes, None) if forward else net.forward(split.spikes)
    res = spike_time_loss(trace.first_times(trace.n_layers - 1), split.labels, loss, net.neuron.tau_s)
    return EvalResult(
        loss=res.loss,
        accuracy=float(np.mean(res.predictions == split.labels)) if len(split) else 0.0,
        silent=silent_fractions(trace),
        predictions=res.predictions,
        trace=trace,
    )


class Trainer:
    """Trains a :class:`Network` in place; see the module docstring.

    ``forward`` may be replaced (training in the loop, :class:`delgrad.hardware.HardwareLoop`):
    it maps ``(network, spikes, select)`` to a :class:`Trace` of recorded spikes, and the exact
    gradients are evaluated at those times (with ``forward.backward_network(net)`` when it has
    one, see :meth:`backward_network`). The per-epoch evaluations use it too, so the accuracies
    in the history are the hardware's.
    """

    def __init__(
        self,
        net: Network,
        config: TrainConfig,
        forward: Forward | None = None,
    ) -> None:
        self.net = net
        self.cfg = config
        n = len(net.layers)
        self.lr = _per_layer(config.lr, n, "lr")
        self.lr_delay = _per_layer(config.lr_delay, n, "lr_delay")
        self.max_silent = _per_layer(config.max_silent, n, "max_silent")
        self.eval_forward = forward
        self.forward = forward or (lambda net, spikes, sel: net.forward(spikes, select=sel))
        # The optimiser sees raw delay parameters (identity for clipping, logits for sigmoid).
        self.raw_delays = [config.delay.to_raw(l.delays) for l in net.layers]
        lrs = []
        for l, layer in enumerate(net.layers):
            lrs.append(self.lr[l])
            if layer.delay_kind != "none":
                lrs.append(self.lr_delay[l])
        self.adam = Adam(lrs)
        self.rng = np.random.default_rng(config.seed)
        self.epoch = 0
        self.bump_streak = 0
        self.history: list[dict[str, Any]] = []
        self.best: tuple[float, int, list[np.ndarray]] | None = None  # (acc, epoch, params)

    # --- one step ---------------------------------------------------------------------------

    def backward_network(self) -> Network:
        """The network the gradient formulas are evaluated with: the trained (float) network,
        or, in the loop, the network the hardware realised (``forward.backward_network``), so
        the formulas see the weights that produced the recorded times and the gradient passes
        straight through the quantisation to the float parameters."""
        realised = getattr(self.forward, "backward_network", None)
        return realised(self.net) if realised is not None else self.net

    def _params(self) -> list[NDArray[np.float64]]:
        out = []
        for layer, raw in zip(self.net.layers, self.raw_delays):
            out.append(layer.weights)
            if layer.delay_kind != "none":
                out.append(raw)
        return out

    def _sync_delays(self) -> None:
        for layer, raw in zip(self.net.layers, self.raw_delays):
            if layer.delay_kind != "none":
                self.cfg.delay.project(raw)
                layer.delays = np.ascontiguousarray(self.cfg.delay.to_delay(raw))

    def _bump(self, trace: Trace) -> bool:
        """Weight bumping; True if any layer was bumped (then the gradient step is skipped)."""
        bumped = False
        for l, layer in enumerate(self.net.layers):
            silent = np.isinf(trace.first_times(l))
            if silent.size == 0 or silent.mean() <= self.max_silent[l]:
                continue
            neurons = silent.any(axis=0)
            value = self.cfg.bump * (2.0**self.bump_streak if self.cfg.bump_exponential else 1.0)
            layer.weights[neurons, :] += value
            bumped = True
        self.bump_streak = self.bump_streak + 1 if bumped else 0
        return bumped

    def step(self, split: Split, select: NDArray[np.uint32], lr_scale: float) -> tuple[float, int]:
        """One batch: forward, loss, backward, update. Returns (loss, number correct)."""
        trace = self.forward(self.net, split.spikes, select)
        labels = split.labels[select]
        out_l = trace.n_layers - 1
        res = spike_time_loss(trace.first_times(out_l), labels, self.cfg.loss, self.net.neuron.tau_s)
        correct = int(np.sum(res.predictions == labels))
        if self._bump(trace):
            return res.loss, correct
        g = self.backward_network().backward(split.spikes, trace, res.grad, select=select, min_slope=self.cfg.min_slope)
        grads = []
        for (gw, gd), layer, raw in zip(g.layers, self.net.layers, self.raw_delays):
            grads.append(gw)
            if layer.delay_kind != "none":
                grads.append(self.cfg.delay.grad_raw(raw, gd))
        clip_norm(grads, self.cfg.max_grad_norm)
        self.adam.step(self._params(), grads, scale=lr_scale)
        self._sync_delays()
        return res.loss, correct

    # --- epochs -----------------------------------------------------------------------------

    def run_epoch(self, train: Split) -> dict[str, float]:
        lr_scale = step_lr(self.epoch, self.cfg.lr_step, self.cfg.lr_gamma)
        perm = self.rng.permutation(len(train)).astype(np.uint32)
        total_loss, total_correct = 0.0, 0
        for k in range(0, len(perm), self.cfg.batch_size):
            sel = perm[k : k + self.cfg.batch_size]
            loss, correct = self.step(train, sel, lr_scale)
            total_loss += loss * len(sel)
            total_correct += correct
        self.epoch += 1
        return {
            "train_loss": total_loss / max(len(train), 1),
            "train_acc": total_correct / max(len(train), 1),
            "lr_scale": lr_scale,
        }

    def fit(
        self,
        train: Split,
        evals: dict[str, Split],
        run_dir: Path | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Trains until ``config.epochs``, evaluating ``evals`` after each epoch; with
        ``run_dir``, checkpoints every ``checkpoint_every`` epochs and resumes from the last one."""
        if run_dir is not None:
            self.load_checkpoint(run_dir)
        while self.epoch < self.cfg.epochs:
            t0 = time.perf_counter()
            row: dict[str, Any] = {"epoch": self.epoch + 1, **self.run_epoch(train)}
            for name, split in evals.items():
                r = evaluate(self.net, split, self.cfg.loss, self.eval_forward)
                row[f"{name}_loss"] = r.loss
                row[f"{name}_acc"] = r.accuracy
                for l, s in enumerate(r.silent):
                    row[f"{name}_silent_l{l}"] = s
            row["seconds"] = time.perf_counter() - t0
            self.history.append(row)
            sel = self.cfg.select_on
            if sel and f"{sel}_acc" in row and (self.best is None or row[f"{sel}_acc"] > self.best[0]):
                self.best = (row[f"{sel}_acc"], self.epoch, self._snapshot())
            if on_epoch:
                on_epoch(row)
            if run_dir is not None and (self.epoch % self.cfg.checkpoint_every == 0 or self.epoch == self.cfg.epochs):
                self.save_checkpoint(run_dir)
        if self.best is not None:
            self._restore(self.best[2])
        return self.history

    @property
    def best_epoch(self) -> int | None:
        return None if self.best is None else self.best[1]

    def _snapshot(self) -> list[np.ndarray]:
        return [a.copy() for l in self.net.layers for a in (l.weights, l.delays)]

    def _restore(self, snap: list[np.ndarray]) -> None:
        for k, layer in enumerate(self.net.layers):
            layer.weights = snap[2 * k].copy()
            layer.delays = snap[2 * k + 1].copy()

    # --- checkpoints ------------------------------------------------------------------------

    def save_checkpoint(self, run_dir: Path) -> None:
        """Everything the rest of the run depends on; written atomically."""
        ckpt = Path(run_dir) / "checkpoint"
        ckpt.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {}
        for l, (layer, raw) in enumerate(zip(self.net.layers, self.raw_delays)):
            arrays[f"w{l}"] = layer.weights
            arrays[f"raw{l}"] = raw
        if self.best is not None:
            for k, a in enumerate(self.best[2]):
                arrays[f"best{k}"] = a
        for k, (m, v) in enumerate(zip(self.adam.m or [], self.adam.v or [])):
            arrays[f"m{k}"] = m
            arrays[f"v{k}"] = v
        meta = {
            "epoch": self.epoch,
            "adam_t": self.adam.t,
            "bump_streak": self.bump_streak,
            "rng": self.rng.bit_generator.state,
            "history": self.history,
            "best": None if self.best is None else [self.best[0], self.best[1]],
        }
        tmp = ckpt / "state.npz.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        tmp_meta = ckpt / "meta.json.tmp"
        tmp_meta.write_text(json.dumps(meta))
        # Arrays first, then the metadata that names the epoch: a crash in between leaves the
        # previous pair's epoch pointing at newer arrays only if both renames happened.
        tmp.replace(ckpt / "state.npz")
        tmp_meta.replace(ckpt / "meta.json")

    def load_checkpoint(self, run_dir: Path) -> bool:
        ckpt = Path(run_dir) / "checkpoint"
        if not (ckpt / "meta.json").exists():
            return False
        meta = json.loads((ckpt / "meta.json").read_text())
        with np.load(ckpt / "state.npz") as z:
            for l, layer in enumerate(self.net.layers):
                layer.weights = z[f"w{l}"].copy()
                self.raw_delays[l] = z[f"raw{l}"].copy()
            if meta.get("best") is not None:
                snap = [z[f"best{k}"].copy() for k in range(2 * len(self.net.layers))]
                self.best = (meta["best"][0], meta["best"][1], snap)
            n = len(self._params())
            if "m0" in z:
                self.adam.m = [z[f"m{k}"].copy() for k in range(n)]
                self.adam.v = [z[f"v{k}"].copy() for k in range(n)]
        self.adam.t = meta["adam_t"]
        self.epoch = meta["epoch"]
        self.bump_streak = meta["bump_streak"]
        self.rng.bit_generator.state = meta["rng"]
        self.history = meta["history"]
        self._sync_delays()
        return True
