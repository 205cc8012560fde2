"""Multi-spike networks trained with EventProp: LIF hidden layers with reset (feed-forward and
optionally recurrent, every synapse with its own continuous delay) and a non-spiking
leaky-integrator readout whose maximum voltage (``"max"``) or exponentially time-weighted mean
voltage (``"exp_mean"``) feeds a softmax cross-entropy. All numerics are in the Rust core
(``multi_network_*``, ``readout_*``); this module holds the parameters. Training is
:class:`delgrad.train.Trainer`'s, as for every network kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from delgrad import _core
from delgrad._core import Neuron, ParameterError, ShapeError, SpikeSet, Trace
from delgrad.network import Layer, _read_npz, _select, _shards, _write_npz, neuron_meta

READOUT_KINDS = ("max", "exp_mean")


@dataclass
class Readout:
    """The leaky-integrator readout: ``layer`` maps the last hidden layer to the classes;
    ``kind`` is ``"max"`` (max over ``[0, t_end]``) or ``"exp_mean"``
    (``(1/t_end) ∫ exp(-t/tau_w) V dt``, ``tau_w`` defaults to ``t_end``)."""

    layer: Layer
    neuron: Neuron
    kind: str = "max"
    t_end: float = 60.0
    tau_w: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in READOUT_KINDS:
            raise ParameterError(f"readout kind must be one of {READOUT_KINDS}, got {self.kind!r}")
        if not (np.isfinite(self.t_end) and self.t_end > 0):
            raise ParameterError(f"readout t_end must be finite and > 0, got {self.t_end}")

    def _call(self) -> tuple:
        w, kind, d = self.layer.as_args()
        return w, d, kind, self.neuron


@dataclass(frozen=True)
class MultiOutput:
    """A forward pass: every hidden layer's spikes (kept in the core) and the readout values
    ``(n_samples, n_classes)``."""

    trace: Trace
    values: NDArray[np.float64]


@dataclass(frozen=True)
class MultiGrad:
    layers: list[tuple[NDArray[np.float64], NDArray[np.float64]]]
    recurrent: list[tuple[NDArray[np.float64], NDArray[np.float64]] | None]
    readout: tuple[NDArray[np.float64], NDArray[np.float64]]


class MultiNetwork:
    """Hidden multi-spike LIF layers (``neuron.mode == "multi"``), optional recurrent
    connections per hidden layer, and a :class:`Readout`."""

    def __init__(
        self, layers: Sequence[Layer], neuron: Neuron, readout: Readout, recurrent: Sequence[Layer | None] | None = None
    ) -> None:
        if neuron.mode != "multi":
            raise ParameterError(f"MultiNetwork needs Neuron(mode='multi'), got mode={neuron.mode!r}")
        if not layers:
            raise ShapeError("MultiNetwork: needs at least one hidden layer")
        self.layers = list(layers)
        self.neuron = neuron
        self.readout = readout
        self.recurrent = list(recurrent) if recurrent is not None else [None] * len(self.layers)
        if len(self.recurrent) != len(self.layers):
            raise ShapeError(f"recurrent: {len(self.recurrent)} entries for {len(self.layers)} layers")
        widths = [layer.shape[0] for layer in self.layers]
        for index, (a, b) in enumerate(zip(self.layers, self.layers[1:])):
            if b.shape[1] != a.shape[0]:
                raise ShapeError(
                    f"layer {index + 1} has n_in = {b.shape[1]} but layer {index} has n_out = {a.shape[0]}"
                )
        for index, r in enumerate(self.recurrent):
            if r is not None and r.shape != (widths[index], widths[index]):
                raise ShapeError(
                    f"recurrent layer {index} has shape {r.shape}, expected {(widths[index], widths[index])}"
                )
        if readout.layer.shape[1] != widths[-1]:
            raise ShapeError(f"readout has n_in = {readout.layer.shape[1]} but the last layer has {widths[-1]} neurons")

    @classmethod
    def random(
        cls,
        sizes: Sequence[int],
        neuron: Neuron,
        readout_neuron: Neuron,
        *,
        delay_kind: str = "synaptic",
        weight_mean: float | Sequence[float] = (1.6, 0.5),
        weight_std: float | Sequence[float] = (0.4, 0.5),
        delay_range: tuple[float, float] = (0.0, 1.0),
        readout_kind: str = "max",
        t_end: float = 60.0,
        tau_w: float | None = None,
        recurrent: bool = False,
        recurrent_std: float = 0.1,
        recurrent_delay_range: tuple[float, float] | None = None,
        seed: int = 0,
    ) -> MultiNetwork:
        """``sizes`` = inputs, hidden widths..., classes. Hidden layers get ``delay_kind`` delays
        uniform in ``delay_range`` (recurrent connections: ``recurrent_delay_range``, by default
        the same); the readout has none. ``weight_mean`` / ``weight_std`` per
        connection stage (hidden layers, then readout)."""
        if len(sizes) < 3:
            raise ShapeError(f"sizes needs inputs, at least one hidden layer and classes, got {sizes}")
        n = len(sizes) - 1
        means = [weight_mean] * n if isinstance(weight_mean, (int, float)) else list(weight_mean)
        stds = [weight_std] * n if isinstance(weight_std, (int, float)) else list(weight_std)
        if len(means) == 2 and n > 2:  # (hidden, readout) shorthand
            means = [means[0]] * (n - 1) + [means[1]]
        if len(stds) == 2 and n > 2:
            stds = [stds[0]] * (n - 1) + [stds[1]]
        if len(means) != n or len(stds) != n:
            raise ShapeError(f"weight_mean/weight_std: need {n} values (or 2: hidden, readout)")
        rng = np.random.default_rng(seed)
        layers, rec = [], []
        for index in range(n - 1):
            n_in, n_out = sizes[index], sizes[index + 1]
            w = rng.normal(means[index], stds[index], (n_out, n_in))
            d = rng.uniform(*delay_range, _core.delay_shape(delay_kind, n_out, n_in))
            layers.append(Layer(w, d, delay_kind))
            if recurrent:
                rd = rng.uniform(*(recurrent_delay_range or delay_range), _core.delay_shape(delay_kind, n_out, n_out))
                rec.append(Layer(rng.normal(0.0, recurrent_std, (n_out, n_out)), rd, delay_kind))
            else:
                rec.append(None)
        ro = Layer(rng.normal(means[-1], stds[-1], (sizes[-1], sizes[-2])), np.zeros(0), "none")
        return cls(layers, neuron, Readout(ro, readout_neuron, readout_kind, t_end, tau_w), rec)

    @property
    def sizes(self) -> list[int]:
        return [self.layers[0].shape[1]] + [layer.shape[0] for layer in self.layers] + [self.readout.layer.shape[0]]

    def _ff(self) -> list[tuple]:
        return [layer.as_args() for layer in self.layers]

    def _rec(self) -> list[tuple | None] | None:
        return None if all(r is None for r in self.recurrent) else [r.as_args() if r else None for r in self.recurrent]

    def forward(self, spikes: SpikeSet, *, select: Any = None) -> MultiOutput:
        trace = _core.multi_network_forward(spikes, _select(select), self._ff(), self.neuron, self._rec())
        r = self.readout
        w, d, kind, ro_neuron = r._call()
        values = _core.readout_forward(
            trace.spikes(trace.n_layers - 1), w, d, kind, ro_neuron, trace.n_samples, r.kind, r.t_end, r.tau_w
        )
        return MultiOutput(trace, values)

    def backward(
        self,
        spikes: SpikeSet,
        out: MultiOutput,
        dy: NDArray[np.float64],
        *,
        select: Any = None,
        shards: Sequence[int] | None = None,
        spike_count: tuple[float, float, float] | Sequence[tuple[float, float, float]] | None = None,
        batch_size: int | None = None,
    ) -> MultiGrad:
        """Exact gradients (EventProp) of a loss with ``dy = dL/dvalues``. ``shards``: sizes of
        consecutive shards of the batch; then each gradient array has a leading axis with one
        entry per shard (as :meth:`delgrad.Network.backward`).

        ``spike_count = (target, strength_above, strength_below)`` (or a list of one per hidden
        layer) adds mlGeNN's spike-count regulariser: a pull on every hidden spike's time
        towards ``target`` spikes per neuron and sample (the core's ``spike_count`` module says
        how; it is not the gradient of a loss). ``batch_size``: the whole batch when these
        samples are part of one (default: these samples)."""
        r = self.readout
        w, d, kind, ro_neuron = r._call()
        last = out.trace.spikes(out.trace.n_layers - 1)
        sizes = _shards(shards)
        gw, gd, g_spikes = _core.readout_backward(
            last, w, d, kind, ro_neuron, out.trace.n_samples, r.kind, r.t_end, np.ascontiguousarray(dy), r.tau_w, sizes
        )
        regs = None
        if spike_count is not None:
            per_layer = [spike_count] * len(self.layers) if np.isscalar(spike_count[0]) else spike_count
            regs = [tuple(float(x) for x in r) for r in per_layer]
        layers, rec, _ = _core.multi_network_backward(
            spikes, _select(select), self._ff(), self.neuron, out.trace, g_spikes, self._rec(), sizes, regs, batch_size
        )
        return MultiGrad(layers, rec, (gw, gd))

    # --- parameters as flat lists (optimiser order) ------------------------------------------

    def _trainable(self) -> list[tuple[Layer, str]]:
        out: list[tuple[Layer, str]] = []
        for index, layer in enumerate(self.layers):
            out.append((layer, "w"))
            if layer.delay_kind != "none":
                out.append((layer, "d"))
            r = self.recurrent[index]
            if r is not None:
                out.append((r, "w"))
                if r.delay_kind != "none":
                    out.append((r, "d"))
        out.append((self.readout.layer, "w"))
        return out

    def params(self) -> list[NDArray[np.float64]]:
        return [layer.weights if what == "w" else layer.delays for layer, what in self._trainable()]

    def flat_grads(self, g: MultiGrad) -> list[NDArray[np.float64]]:
        out = []
        for index, layer in enumerate(self.layers):
            out.append(g.layers[index][0])
            if layer.delay_kind != "none":
                out.append(g.layers[index][1])
            r = self.recurrent[index]
            if r is not None:
                gr = g.recurrent[index]
                assert gr is not None
                out.append(gr[0])
                if r.delay_kind != "none":
                    out.append(gr[1])
        out.append(g.readout[0])
        return out

    def n_parameters(self) -> int:
        return int(sum(p.size for p in self.params()))

    # --- persistence -------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        r = self.readout
        meta = {
            "neuron": neuron_meta(self.neuron),
            "readout_neuron": neuron_meta(r.neuron),
            "readout": {"kind": r.kind, "t_end": r.t_end, "tau_w": r.tau_w},
            "kinds": [layer.delay_kind for layer in self.layers],
            "recurrent": [None if x is None else x.delay_kind for x in self.recurrent],
        }
        arrays = {"ro": r.layer.weights}
        for index, layer in enumerate(self.layers):
            arrays[f"w{index}"], arrays[f"d{index}"] = layer.weights, layer.delays
            if self.recurrent[index] is not None:
                arrays[f"rw{index}"], arrays[f"rd{index}"] = self.recurrent[index].weights, self.recurrent[index].delays
        _write_npz(path, meta, arrays)

    @classmethod
    def load(cls, path: str | Path) -> MultiNetwork:
        meta, z = _read_npz(path)
        layers = [Layer(z[f"w{index}"], z[f"d{index}"], k) for index, k in enumerate(meta["kinds"])]
        rec = [
            None if k is None else Layer(z[f"rw{index}"], z[f"rd{index}"], k)
            for index, k in enumerate(meta["recurrent"])
        ]
        ro = Readout(Layer(z["ro"], np.zeros(0), "none"), Neuron(**meta["readout_neuron"]), **meta["readout"])
        return cls(layers, Neuron(**meta["neuron"]), ro, rec)

    def __repr__(self) -> str:
        return (
            f"MultiNetwork(sizes={self.sizes}, delays={[layer.delay_kind for layer in self.layers]}, "
            f"readout={self.readout.kind!r}, {self.neuron!r})"
        )
