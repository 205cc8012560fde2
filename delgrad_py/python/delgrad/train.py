"""The trainer, one for every network kind: exact gradients from the core, Adam on the host.

One epoch = a seeded permutation of the training split cut into batches. Each batch is chosen
by index from a :class:`SpikeSet` holding the whole split, so Python handles neither spikes nor
copies. What differs between network kinds (forward, loss, backward, what an evaluation
reports) is a *task*: :class:`TTFSTask` (DelGrad: spike-time losses, weight bumping, the
hardware forward hook) and :class:`MultiTask` (EventProp: leaky-integrator readout,
cross-entropy). Everything else is shared: per-layer learning rates, step and cosine schedules,
gradient clipping, the delay parametrisations, best-validation selection and checkpoints.

A batch is computed as a fixed number of shards whose results are combined in shard order
(:mod:`delgrad.shards`): here in one core call (:meth:`Task.shard_pass` over all shards), or by
Ray workers each computing some of them (:mod:`delgrad.distributed`), with the same bits.

A checkpoint (``RUN/checkpoint/state.npz``) is one file written atomically. It holds everything
the rest of the run depends on (parameters, optimiser moments, the RNG state at the start of the
current epoch, the position within it and the running sums, bump state, history, best epoch),
so a run resumed from any checkpoint, within an epoch or between epochs, ends with the same
metrics as an uninterrupted one.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from delgrad import _core
from delgrad._core import SpikeSet, Trace
from delgrad.config import DistributedConfig, TrainConfig
from delgrad.data.split import Split
from delgrad.losses import LossConfig, spike_time_loss
from delgrad.multi import MultiNetwork, MultiOutput
from delgrad.network import Network
from delgrad.optim import Adam, DelayParam, clip_norm, cosine_lr, step_lr
from delgrad.shards import fold, shard_sizes

__all__ = [
    "EvalResult",
    "MultiTask",
    "ShardPass",
    "Split",
    "TTFSTask",
    "TrainConfig",
    "Trainer",
    "evaluate",
    "per_layer",
]

CHECKPOINT = Path("checkpoint") / "state.npz"
DEFAULT_SHARDS = DistributedConfig().shards
# Samples per core call when a multi-spike split is evaluated without keeping its spikes.
EVAL_CHUNK = 256


@dataclass
class EvalResult:
    """A whole split through the network. ``stats`` are the per-layer activity figures that go
    into the metrics (``silent_l{k}`` for TTFS, ``spikes_l{k}`` for multi-spike networks)."""

    loss: float
    accuracy: float
    predictions: NDArray[np.int64]
    trace: Trace | None  # None: evaluated without keeping the spikes (evaluate_multi's keep_trace)
    stats: dict[str, float] = field(default_factory=dict)
    values: NDArray[np.float64] | None = None  # multi-spike: readout values (n_samples, n_classes)

    @property
    def silent(self) -> list[float]:
        return [v for k, v in self.stats.items() if k.startswith("silent_l")]


def per_layer(value: float | list[float], n: int, name: str) -> list[float]:
    """One value per layer: a number for all, a list of ``n``, or (hidden layers, last layer)."""
    if isinstance(value, (int, float)):
        return [float(value)] * n
    values = [float(x) for x in value]
    if len(values) == 2 and n > 2:
        return [values[0]] * (n - 1) + [values[1]]
    if len(values) != n:
        raise ValueError(f"train.{name}: {len(values)} values for {n} layers (give {n}, 2 or one number)")
    return values


def _accuracy(predictions: NDArray[np.int64], labels: NDArray[np.int64]) -> float:
    return float(np.mean(predictions == labels)) if len(labels) else 0.0


Forward = Callable[[Network, SpikeSet, "NDArray[np.uint32] | None"], Trace]


@dataclass
class ShardPass:
    """Some consecutive shards of a batch, computed (:meth:`Task.shard_pass`) but not yet
    combined with the batch's other shards (:meth:`Task.combine`, in shard order)."""

    losses: list[float]  # per shard: its loss sum divided by the whole batch's size
    correct: int
    # The network's gradients in the order of Task.params (delays not yet through the delay
    # parametrisation), each with a leading axis over these shards; None when skipped.
    grads: list[NDArray[np.float64]] | None
    events: int  # synaptic events of the forward pass (each spike times its fan-out)
    # TTFS: per layer, the number of silent (sample, neuron) pairs and which neurons were
    # silent in any sample (integers and flags: they combine exactly).
    silent: list[tuple[int, NDArray[np.bool_]]] | None = None
    seconds: float = 0.0  # compute time (wall)
    cpu_seconds: float = 0.0  # CPU time of the computing process (all its core threads)


def _bounds(sizes: list[int]) -> list[tuple[int, int]]:
    edges = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    return list(zip(edges[:-1], edges[1:]))


def _synaptic_events(input_spikes: int, trace: Trace, fan_out: list[int]) -> int:
    """Synaptic events of a forward pass: every input spike reaches each neuron of the first
    layer, every spike of layer ``k`` each target of ``fan_out[k]`` (next layer, recurrent
    connection, readout)."""
    return input_spikes * trace.sizes[0] + sum(trace.n_spikes(k) * fan_out[k] for k in range(trace.n_layers))


class Task(Protocol):
    """What the trainer needs of a network kind."""

    n_layers: int
    params: list[NDArray[np.float64]]  # the optimiser's view, updated in place
    roles: list[tuple[int, str]]  # (layer, "w" or "d") of each entry of params
    shards: int

    def shard_pass(
        self,
        split: Split,
        select: NDArray[np.uint32],
        sizes: list[int],
        batch_size: int,
        local: bool = False,
        epoch: int = 0,
    ) -> ShardPass:
        """Forward, loss and backward of the consecutive shards ``sizes`` made of the samples
        ``select``, in a batch of ``batch_size`` samples (one core call each way). ``local``:
        these are all of the batch's shards, so a step that will be skipped skips the backward.
        ``epoch`` picks the augmented samples of an augmented split (:meth:`Split.take`)."""
        ...

    def combine(self, passes: list[ShardPass], batch_size: int) -> tuple[float, int, list[NDArray[np.float64]] | None]:
        """The batch's (mean loss, correct, gradients or None to skip) from its shards' passes,
        in shard order."""
        ...

    def step(
        self, split: Split, select: NDArray[np.uint32], epoch: int = 0
    ) -> tuple[float, int, list[NDArray[np.float64]] | None]:
        """Forward, loss and backward of one batch: (mean loss, correct, gradients or None to skip)."""
        ...

    def sync(self) -> None:
        """Brings the network's delays in line with the optimiser's raw parameters."""
        ...

    def evaluate(self, split: Split) -> EvalResult: ...

    def state(self) -> dict[str, Any]: ...

    def load_state(self, state: dict[str, Any]) -> None: ...


class _DelayParams:
    """The delays of some layers seen through a :class:`DelayParam`: raw arrays for the optimiser."""

    def __init__(self, layers: list[Any], param: DelayParam) -> None:
        self.layers, self.param = layers, param
        self.raw = [param.to_raw(layer.delays) for layer in layers]

    def grad(self, index: int, grad_delay: NDArray[np.float64]) -> NDArray[np.float64]:
        return self.param.grad_raw(self.raw[index], grad_delay)

    def sync(self) -> None:
        for layer, raw in zip(self.layers, self.raw):
            self.param.project(raw)
            layer.delays = np.ascontiguousarray(self.param.to_delay(raw))


class _ShardedTask:
    """What both tasks share: a batch as shards (:mod:`delgrad.shards`), combined in order."""

    params: list[NDArray[np.float64]]
    roles: list[tuple[int, str]]
    delays: _DelayParams
    shards: int = DEFAULT_SHARDS

    def step(
        self, split: Split, select: NDArray[np.uint32], epoch: int = 0
    ) -> tuple[float, int, list[NDArray[np.float64]] | None]:
        batch_size = len(select)
        sizes = shard_sizes(batch_size, self.shards)
        passes = [self.shard_pass(split, select, sizes, batch_size, local=True, epoch=epoch)]
        return self.combine(passes, batch_size)

    def shard_pass(
        self,
        split: Split,
        select: NDArray[np.uint32],
        sizes: list[int],
        batch_size: int,
        local: bool = False,
        epoch: int = 0,
    ) -> ShardPass:
        # An augmented split makes the batch's augmented samples here, in whichever process runs it.
        split, select = split.take(select, epoch)
        return self._pass(split, select, sizes, batch_size, local)

    def _pass(
        self, split: Split, select: NDArray[np.uint32], sizes: list[int], batch_size: int, local: bool
    ) -> ShardPass:
        """:meth:`shard_pass` of the samples ``select`` of ``split`` (the batch's own samples)."""
        raise NotImplementedError

    def combine(self, passes: list[ShardPass], batch_size: int) -> tuple[float, int, list[NDArray[np.float64]] | None]:
        loss = 0.0
        for p in passes:
            for shard_loss in p.losses:
                loss += shard_loss
        correct = sum(p.correct for p in passes)
        if self._skip(passes, batch_size):
            return loss, correct, None
        grads, delay_index = [], 0
        for index, (_, what) in enumerate(self.roles):
            grad = fold([shard for p in passes for shard in p.grads[index]])
            if what == "d":
                grad = self.delays.grad(delay_index, grad)
                delay_index += 1
            grads.append(grad)
        return loss, correct, grads

    def _skip(self, passes: list[ShardPass], batch_size: int) -> bool:
        """Whether this batch makes no gradient step (TTFS: weight bumping instead)."""
        return False

    def _losses(
        self,
        loss: Callable[..., tuple[float, NDArray[np.float64], NDArray[np.int64]]],
        output: NDArray[np.float64],
        labels: NDArray[np.int64],
        sizes: list[int],
        batch_size: int,
    ) -> tuple[list[float], int, NDArray[np.float64]]:
        """Per-shard losses, the number correct and the loss gradient of every row of ``output``
        (scaled by the whole batch, so a row's gradient does not depend on its shard)."""
        losses, grads, correct = [], [], 0
        for a, b in _bounds(sizes):
            value, grad, predictions = loss(output[a:b], labels[a:b], batch_size)
            losses.append(value)
            grads.append(grad)
            correct += int(np.sum(predictions == labels[a:b]))
        return losses, correct, np.ascontiguousarray(np.concatenate(grads))


class TTFSTask(_ShardedTask):
    """Time-to-first-spike networks (DelGrad): spike-time loss, weight bumping, and ``forward``
    replaceable by a hardware loop (:class:`delgrad.hardware.HardwareLoop`): it maps
    ``(network, spikes, select)`` to a :class:`Trace` of recorded spikes, and the exact gradients
    are evaluated at those times, with ``forward.backward_network(net)`` when it has one. The
    evaluations use it too, so the accuracies in the history are the hardware's."""

    def __init__(
        self, net: Network, config: TrainConfig, forward: Forward | None = None, shards: int = DEFAULT_SHARDS
    ) -> None:
        self.net, self.cfg, self.shards = net, config, shards
        self.n_layers = len(net.layers)
        self.max_silent = per_layer(config.max_silent, self.n_layers, "max_silent")
        self.eval_forward = forward
        self.forward = forward or (lambda net, spikes, sel: net.forward(spikes, select=sel))
        delayed = [layer for layer in net.layers if layer.delay_kind != "none"]
        self.delays = _DelayParams(delayed, config.delay)
        self.params, self.roles = [], []
        raw = iter(self.delays.raw)
        for index, layer in enumerate(net.layers):
            self.params.append(layer.weights)
            self.roles.append((index, "w"))
            if layer.delay_kind != "none":
                self.params.append(next(raw))
                self.roles.append((index, "d"))
        self.bump_streak = 0

    def backward_network(self) -> Network:
        """The network the gradient formulas are evaluated with: the trained (float) network,
        or, in the loop, the network the hardware realised (``forward.backward_network``), so
        the formulas see the weights that produced the recorded times and the gradient passes
        straight through the quantisation to the float parameters."""
        realised = getattr(self.forward, "backward_network", None)
        return realised(self.net) if realised is not None else self.net

    def _bumped_layers(self, silent: list[tuple[int, NDArray[np.bool_]]], batch_size: int) -> list[int]:
        """Layers whose silent fraction over the batch exceeds ``max_silent``."""
        return [
            index
            for index, (count, flags) in enumerate(silent)
            if flags.size and count / (batch_size * flags.size) > self.max_silent[index]
        ]

    def _skip(self, passes: list[ShardPass], batch_size: int) -> bool:
        """Weight bumping from the whole batch's silent statistics (counts added, flags OR-ed):
        True if any layer was bumped (then the gradient step is skipped)."""
        silent = list(passes[0].silent or [])
        for p in passes[1:]:
            silent = [(c + pc, f | pf) for (c, f), (pc, pf) in zip(silent, p.silent or [])]
        bumped = self._bumped_layers(silent, batch_size)
        value = self.cfg.bump * (2.0**self.bump_streak if self.cfg.bump_exponential else 1.0)
        for index in bumped:
            self.net.layers[index].weights[silent[index][1], :] += value
        self.bump_streak = self.bump_streak + 1 if bumped else 0
        return bool(bumped)

    def _pass(
        self, split: Split, select: NDArray[np.uint32], sizes: list[int], batch_size: int, local: bool
    ) -> ShardPass:
        t0, cpu0 = time.perf_counter(), time.process_time()
        trace = self.forward(self.net, split.spikes, select)
        labels = split.labels[select]
        cfg, tau_s = self.cfg.loss, self.net.neuron.tau_s

        def loss(times, batch_labels, n):
            res = spike_time_loss(times, batch_labels, cfg, tau_s, batch_size=n)
            return res.loss, res.grad, res.predictions

        losses, correct, grad = self._losses(loss, trace.first_times(trace.n_layers - 1), labels, sizes, batch_size)
        silent_matrices = [np.isinf(trace.first_times(index)) for index in range(trace.n_layers)]
        silent = [(int(m.sum()), m.any(axis=0)) for m in silent_matrices]
        fan_out = [layer.shape[0] for layer in self.net.layers[1:]] + [0]
        events = _synaptic_events(int(split.counts[select].sum()), trace, fan_out)
        grads = None
        if not (local and self._bumped_layers(silent, batch_size)):
            g = self.backward_network().backward(
                split.spikes, trace, grad, select=select, min_slope=self.cfg.min_slope, shards=sizes
            )
            grads = []
            for (grad_w, grad_d), layer in zip(g.layers, self.net.layers):
                grads.append(grad_w)
                if layer.delay_kind != "none":
                    grads.append(grad_d)
        return ShardPass(losses, correct, grads, events, silent, time.perf_counter() - t0, time.process_time() - cpu0)

    def sync(self) -> None:
        self.delays.sync()

    def evaluate(self, split: Split) -> EvalResult:
        return evaluate(self.net, split, self.cfg.loss, self.eval_forward)

    def state(self) -> dict[str, Any]:
        return {"bump_streak": self.bump_streak}

    def load_state(self, state: dict[str, Any]) -> None:
        self.bump_streak = int(state.get("bump_streak", 0))


class MultiTask(_ShardedTask):
    """Multi-spike networks (EventProp): leaky-integrator readout and its cross-entropy. The
    layers for per-layer rates are the hidden layers (a recurrent connection shares its layer's
    rate) and the readout."""

    def __init__(self, net: MultiNetwork, config: TrainConfig, shards: int = DEFAULT_SHARDS) -> None:
        self.net, self.cfg, self.shards = net, config, shards
        self.n_layers = len(net.layers) + 1
        entries: list[tuple[int, Any, str]] = []
        for index, layer in enumerate(net.layers):
            for connection in (layer, net.recurrent[index]):
                if connection is None:
                    continue
                entries.append((index, connection, "w"))
                if connection.delay_kind != "none":
                    entries.append((index, connection, "d"))
        entries.append((len(net.layers), net.readout.layer, "w"))
        self.delays = _DelayParams([c for _, c, what in entries if what == "d"], config.delay)
        raw = iter(self.delays.raw)
        self.params = [c.weights if what == "w" else next(raw) for _, c, what in entries]
        self.roles = [(index, what) for index, _, what in entries]

    def _pass(
        self, split: Split, select: NDArray[np.uint32], sizes: list[int], batch_size: int, local: bool
    ) -> ShardPass:
        t0, cpu0 = time.perf_counter(), time.process_time()
        out = self.net.forward(split.spikes, select=select)
        labels = split.labels[select]

        def loss(values, batch_labels, n):
            return _core.readout_cross_entropy(np.ascontiguousarray(values), batch_labels, batch_size=n)

        losses, correct, dy = self._losses(loss, out.values, labels, sizes, batch_size)
        net = self.net
        fan_out = [
            (net.layers[k + 1].shape[0] if k + 1 < len(net.layers) else net.readout.layer.shape[0])
            + (net.recurrent[k].shape[0] if net.recurrent[k] is not None else 0)
            for k in range(len(net.layers))
        ]
        events = _synaptic_events(int(split.counts[select].sum()), out.trace, fan_out)
        reg = self.cfg.spike_count.as_args(len(net.layers))
        g = net.backward(split.spikes, out, dy, select=select, shards=sizes, spike_count=reg, batch_size=batch_size)
        grads = net.flat_grads(g)
        return ShardPass(losses, correct, grads, events, None, time.perf_counter() - t0, time.process_time() - cpu0)

    def sync(self) -> None:
        self.delays.sync()

    def evaluate(self, split: Split) -> EvalResult:
        # The epoch's figures need no spikes; chunks keep an SHD-sized split's evaluation small.
        return evaluate_multi(self.net, split, keep_trace=False)

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass


def evaluate(net: Network, split: Split, loss: LossConfig, forward: Forward | None = None) -> EvalResult:
    """Loss, accuracy and silent fractions of a TTFS network on a whole split (one core call,
    or ``forward(net, spikes, None)`` when given: a hardware loop evaluates on the hardware)."""
    trace = forward(net, split.spikes, None) if forward else net.forward(split.spikes)
    res = spike_time_loss(trace.first_times(trace.n_layers - 1), split.labels, loss, net.neuron.tau_s)
    silent = {
        f"silent_l{index}": float(np.mean(np.isinf(trace.first_times(index)))) if trace.n_samples else 0.0
        for index in range(trace.n_layers)
    }
    return EvalResult(res.loss, _accuracy(res.predictions, split.labels), res.predictions, trace, silent)


def evaluate_multi(net: MultiNetwork, split: Split, *, keep_trace: bool = True, chunk: int = EVAL_CHUNK) -> EvalResult:
    """Loss, accuracy, readout values and spikes per sample of every hidden layer.

    Without ``keep_trace`` the split goes through the core ``chunk`` samples at a time and
    only the readout values and spike counts are kept: the hidden spikes of an SHD-sized split
    take gigabytes. The figures are the same bits either way (samples are simulated
    independently, and the loss is computed once over all values)."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    n_samples = len(split)
    trace: Trace | None = None
    if keep_trace or n_samples <= chunk:
        out: MultiOutput = net.forward(split.spikes)
        values = out.values
        counts = [out.trace.n_spikes(index) for index in range(out.trace.n_layers)]
        trace = out.trace if keep_trace else None
    else:
        parts, counts = [], [0] * len(net.layers)
        for start in range(0, n_samples, chunk):
            out = net.forward(split.spikes, select=np.arange(start, min(start + chunk, n_samples), dtype=np.uint32))
            parts.append(out.values)
            counts = [total + out.trace.n_spikes(index) for index, total in enumerate(counts)]
        values = np.concatenate(parts)
    loss, _, predictions = _core.readout_cross_entropy(values, split.labels)
    n = max(n_samples, 1)
    stats = {f"spikes_l{index}": count / n for index, count in enumerate(counts)}
    return EvalResult(loss, _accuracy(predictions, split.labels), predictions, trace, stats, values)


def evaluate_any(
    net: Network | MultiNetwork,
    split: Split,
    config: TrainConfig,
    forward: Forward | None = None,
    *,
    keep_trace: bool = True,
) -> EvalResult:
    """:func:`evaluate` or :func:`evaluate_multi`, by the network's kind (a TTFS trace, one first
    spike per neuron, is always kept: its loss is computed from it)."""
    if isinstance(net, MultiNetwork):
        return evaluate_multi(net, split, keep_trace=keep_trace)
    return evaluate(net, split, config.loss, forward)


class ShardExecutor(Protocol):
    """Computes a batch's shards elsewhere (:class:`delgrad.distributed.RayShards`): the
    passes of all ``sizes`` made of the samples ``select`` of the training split, in shard
    order, with the trainer's current parameters."""

    def run(self, select: NDArray[np.uint32], sizes: list[int], batch_size: int, epoch: int) -> list[ShardPass]: ...


class Trainer:
    """Trains a :class:`Network` or :class:`MultiNetwork` in place; see the module docstring.

    ``forward`` (TTFS only) replaces the network's own forward pass, for training in the loop.
    ``shards``: every batch is cut into this many shards (:mod:`delgrad.shards`), computed
    here in one core call or, with ``executor``, by workers; the results are the same bits.
    """

    def __init__(
        self,
        net: Network | MultiNetwork,
        config: TrainConfig | None = None,
        forward: Forward | None = None,
        *,
        shards: int = DEFAULT_SHARDS,
        executor: ShardExecutor | None = None,
    ) -> None:
        self.net = net
        self.cfg = config = config or TrainConfig()
        if shards < 1:
            raise ValueError(f"Trainer: shards must be >= 1, got {shards}")
        if isinstance(net, MultiNetwork):
            if forward is not None:
                raise ValueError("Trainer: a forward hook (training in the loop) applies to TTFS networks only")
            self.task: Task = MultiTask(net, config, shards)
        else:
            self.task = TTFSTask(net, config, forward, shards)
        if executor is not None and forward is not None:
            raise ValueError("Trainer: training in the loop (a forward hook) runs in one process, not on workers")
        self.executor = executor
        # The last batch: (samples, synaptic events of its forward pass, seconds of the step).
        self.last_step: tuple[int, int, float] = (0, 0, 0.0)
        n = self.task.n_layers
        lr = per_layer(config.lr, n, "lr")
        lr_delay = per_layer(config.lr_delay, n, "lr_delay")
        self.adam = Adam([lr_delay[index] if what == "d" else lr[index] for index, what in self.task.roles])
        self.rng = np.random.default_rng(config.seed)
        self.epoch = 0  # completed epochs
        self.position = 0  # samples of the current epoch already trained on
        self.totals = (0.0, 0)  # the current epoch's loss sum and correct count so far
        self.epoch_rng_state: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self.best: tuple[float, int, list[np.ndarray]] | None = None  # (accuracy, epoch, parameters)
        self.resumed_from: tuple[int, int] | None = None  # (epoch, position) of the loaded checkpoint

    # --- one step ---------------------------------------------------------------------------

    def lr_scale(self, epoch: int) -> float:
        if self.cfg.lr_schedule == "cosine":
            return cosine_lr(epoch, self.cfg.epochs, self.cfg.lr_min)
        return step_lr(epoch, self.cfg.lr_step, self.cfg.lr_gamma)

    def step(self, split: Split, select: NDArray[np.uint32], lr_scale: float) -> tuple[float, int]:
        """One batch: forward, loss, backward, update. Returns (loss, number correct)."""
        t0 = time.perf_counter()
        batch_size = len(select)
        sizes = shard_sizes(batch_size, self.task.shards)
        if self.executor is None:
            passes = [self.task.shard_pass(split, select, sizes, batch_size, local=True, epoch=self.epoch)]
        else:
            passes = self.executor.run(select, sizes, batch_size, self.epoch)
        loss, correct, grads = self.task.combine(passes, batch_size)
        if grads is not None:
            clip_norm(grads, self.cfg.max_grad_norm)
            self.adam.step(self.task.params, grads, scale=lr_scale * self.warmup_scale())
            self.task.sync()
        self.last_step = (batch_size, sum(p.events for p in passes), time.perf_counter() - t0)
        return loss, correct

    def warmup_scale(self) -> float:
        """Ease-in (``warmup_batches``): the rates grow exponentially from 1/1000 to 1 over the
        first updates (Mészáros et al.'s SHD recipe: x1.05 per batch from lr/1000). Counted in
        optimiser updates, so a resumed run continues the ramp where it stopped."""
        ramp = self.cfg.warmup_batches
        if not ramp or self.adam.t >= ramp:
            return 1.0
        return float(1e-3 ** (1.0 - self.adam.t / ramp))

    # --- epochs -----------------------------------------------------------------------------

    def run_epoch(
        self,
        train: Split,
        run_dir: Path | None = None,
        on_batch: Callable[[int, int, float], None] | None = None,
    ) -> dict[str, float]:
        """Trains one epoch (or the rest of one, after a mid-epoch checkpoint)."""
        lr_scale = self.lr_scale(self.epoch)
        self.epoch_rng_state = self.rng.bit_generator.state
        # An augmented split's epoch also holds its augmented copies (Split.epoch_size).
        perm = self.rng.permutation(train.epoch_size).astype(np.uint32)
        total_loss, total_correct = self.totals
        every = self.cfg.checkpoint_every_batches
        batch_size = self.cfg.batch_size
        for start in range(self.position, len(perm), batch_size):
            sel = perm[start : start + batch_size]
            loss, correct = self.step(train, sel, lr_scale)
            total_loss += loss * len(sel)
            total_correct += correct
            self.position, self.totals = start + len(sel), (total_loss, total_correct)
            if on_batch is not None:
                on_batch(self.position, len(perm), loss)
            if run_dir is not None and every and self.position < len(perm) and (start // batch_size + 1) % every == 0:
                self.save_checkpoint(run_dir)
        self.epoch += 1
        self.position, self.totals = 0, (0.0, 0)
        n = max(len(perm), 1)
        return {"train_loss": total_loss / n, "train_acc": total_correct / n, "lr_scale": lr_scale}

    def evaluate(self, split: Split) -> EvalResult:
        return self.task.evaluate(split)

    def fit(
        self,
        train: Split,
        evals: dict[str, Split],
        run_dir: Path | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        on_batch: Callable[[int, int, float], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Trains until ``config.epochs``, evaluating ``evals`` after each epoch; with ``run_dir``,
        checkpoints as configured and resumes from the last checkpoint there."""
        if run_dir is not None and self.resumed_from is None:
            self.resume(run_dir)
        while self.epoch < self.cfg.epochs and not self.patience_exhausted():
            t0 = time.perf_counter()
            row: dict[str, Any] = {"epoch": self.epoch + 1, **self.run_epoch(train, run_dir, on_batch)}
            for name, split in evals.items():
                r = self.task.evaluate(split)
                row[f"{name}_loss"] = r.loss
                row[f"{name}_acc"] = r.accuracy
                row.update({f"{name}_{k}": v for k, v in r.stats.items()})
            row["seconds"] = time.perf_counter() - t0
            self.history.append(row)
            key = f"{self.cfg.select_on}_acc" if self.cfg.select_on else None
            if key in row and (self.best is None or row[key] > self.best[0]):
                self.best = (row[key], self.epoch, self._snapshot())
            if run_dir is not None and (self.epoch % self.cfg.checkpoint_every == 0 or self.epoch == self.cfg.epochs):
                self.save_checkpoint(run_dir)
            if on_epoch:
                on_epoch(row)
        if self.best is not None:
            self._restore(self.best[2])
        return self.history

    def patience_exhausted(self) -> bool:
        """Early stopping: ``patience`` epochs have passed without a better ``select_on``
        accuracy. Decided from the history alone, so a resumed run stops where the
        uninterrupted one did."""
        patience = self.cfg.patience
        if not patience or self.best is None:
            return False
        return self.epoch - self.best[1] >= patience

    @property
    def best_epoch(self) -> int | None:
        return None if self.best is None else self.best[1]

    def _snapshot(self) -> list[np.ndarray]:
        return [p.copy() for p in self.task.params]

    def _restore(self, snapshot: list[np.ndarray]) -> None:
        for p, saved in zip(self.task.params, snapshot):
            p[...] = saved
        self.task.sync()

    # --- checkpoints ------------------------------------------------------------------------

    def save_checkpoint(self, run_dir: Path) -> None:
        """Everything the rest of the run depends on, as one file written atomically."""
        from delgrad.rundir import atomic_write

        path = Path(run_dir) / CHECKPOINT
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"p{k}": p for k, p in enumerate(self.task.params)}
        if self.best is not None:
            arrays.update({f"best{k}": a for k, a in enumerate(self.best[2])})
        for k, (m, v) in enumerate(zip(self.adam.m or [], self.adam.v or [])):
            arrays[f"m{k}"], arrays[f"v{k}"] = m, v
        mid_epoch = self.position > 0
        meta = {
            "epoch": self.epoch,
            "position": self.position,
            "totals": list(self.totals),
            # Within an epoch the permutation is drawn again from the state it was drawn from.
            "rng": self.epoch_rng_state if mid_epoch else self.rng.bit_generator.state,
            "adam_t": self.adam.t,
            "task": self.task.state(),
            "history": self.history,
            "best": None if self.best is None else [self.best[0], self.best[1]],
            "n_params": len(self.task.params),
        }
        buffer = io.BytesIO()
        np.savez(buffer, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
        atomic_write(path, buffer.getvalue())

    def resume(self, run_dir: Path) -> bool:
        """Loads the checkpoint in ``run_dir`` if there is one; :attr:`resumed_from` says where."""
        if self.load_checkpoint(run_dir):
            self.resumed_from = (self.epoch, self.position)
            return True
        return False

    def load_checkpoint(self, run_dir: Path) -> bool:
        """Restores the state saved in ``run_dir`` (False if there is none)."""
        path = Path(run_dir) / CHECKPOINT
        if not path.exists():
            return False
        with np.load(path) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            if meta["n_params"] != len(self.task.params):
                raise ValueError(
                    f"{path}: the checkpoint holds {meta['n_params']} parameter arrays, "
                    f"the network {len(self.task.params)}"
                )
            for k, p in enumerate(self.task.params):
                if z[f"p{k}"].shape != p.shape:
                    raise ValueError(f"{path}: parameter {k} has shape {z[f'p{k}'].shape}, the network {p.shape}")
                p[...] = z[f"p{k}"]
            if meta["best"] is not None:
                snapshot = [z[f"best{k}"].copy() for k in range(len(self.task.params))]
                self.best = (meta["best"][0], meta["best"][1], snapshot)
            if "m0" in z:
                self.adam.m = [z[f"m{k}"].copy() for k in range(len(self.task.params))]
                self.adam.v = [z[f"v{k}"].copy() for k in range(len(self.task.params))]
        self.adam.t = meta["adam_t"]
        self.epoch, self.position = meta["epoch"], meta["position"]
        self.totals = (float(meta["totals"][0]), int(meta["totals"][1]))
        self.rng.bit_generator.state = meta["rng"]
        self.task.load_state(meta["task"])
        self.history = meta["history"]
        self.task.sync()
        return True
