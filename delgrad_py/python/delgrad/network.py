"""Feed-forward TTFS networks: parameters in numpy, passes in the Rust core."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray

from delgrad import _core
from delgrad._arrays import DELAY_KINDS, as_f64, delay_kind_of
from delgrad._core import Neuron, ParameterError, ShapeError, SpikeSet, Trace
from delgrad.functional import SpikesLike


@dataclass
class Layer:
    """One fully connected layer: ``weights`` ``(n_out, n_in)`` and delays of one kind."""

    weights: NDArray[np.float64]
    delays: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    delay_kind: str = "none"

    def __post_init__(self) -> None:
        self.weights = as_f64(self.weights, "weights", ndim=2)
        d = as_f64(self.delays, "delays") if self.delays is not None else None
        if self.delay_kind == "none":
            d = np.zeros(0)
        else:
            self.delay_kind = delay_kind_of(self.weights, d, self.delay_kind)
        self.delays = d

    @property
    def shape(self) -> tuple[int, int]:
        return self.weights.shape  # type: ignore[return-value]

    def as_args(self) -> tuple[NDArray[np.float64], str, NDArray[np.float64] | None]:
        return self.weights, self.delay_kind, (None if self.delay_kind == "none" else self.delays)


@dataclass(frozen=True)
class NetworkGrad:
    """Gradients for every layer (``layers[l] = (dL/dweights, dL/ddelays)``) and for every
    input spike row (``inputs``)."""

    layers: list[tuple[NDArray[np.float64], NDArray[np.float64]]]
    inputs: NDArray[np.float64]


def as_spike_set(spikes: SpikesLike | SpikeSet, n_samples: int | None) -> SpikeSet:
    """A :class:`SpikeSet` for ``spikes`` (validated and grouped once)."""
    if isinstance(spikes, SpikeSet):
        return spikes
    if n_samples is None:
        raise ShapeError("n_samples is required when spikes is a table")
    return SpikeSet(spikes, int(n_samples))


def _select(select: ArrayLike | None) -> NDArray[np.uint32] | NDArray[np.int64] | NDArray[np.uint64] | None:
    """Sample ids as the core takes them, never narrowed here: the core checks every id against
    the set (naming the id and its position) before it becomes a ``uint32``."""
    if select is None:
        return None
    a = np.asarray(select)
    if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
        raise ShapeError("select must be a 1-d array of non-negative sample indices")
    if a.dtype == np.uint32:
        return np.ascontiguousarray(a)
    return np.ascontiguousarray(a, dtype=np.uint64 if a.dtype.kind == "u" else np.int64)


def _shards(shards: Sequence[int] | None) -> list[int] | None:
    """Shard sizes as the core takes them (it checks that they cover the batch)."""
    if shards is None:
        return None
    sizes = [int(s) for s in shards]
    if not sizes or min(sizes) < 1:
        raise ShapeError(f"shards must be a non-empty list of positive sizes, got {list(shards)}")
    return sizes


def neuron_meta(n: Neuron) -> dict:
    """A neuron's parameters as saved with a network (``Neuron(**meta)`` rebuilds it)."""
    return {"tau_m": n.tau_m, "tau_s": n.tau_s, "theta": n.theta, "mode": n.mode, "t_ref": n.t_ref, "t_end": n.t_end}


def _write_npz(path: str | Path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """A saved network: its arrays plus the architecture as JSON in the array ``meta``."""
    with open(path, "wb") as f:
        np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)


def _read_npz(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The architecture and the arrays of a file written by :func:`_write_npz`."""
    with np.load(path) as z:
        return json.loads(z["meta"].tobytes().decode()), {k: z[k] for k in z.files if k != "meta"}


class Network:
    """A feed-forward network of time-to-first-spike layers.

    ``forward`` returns a :class:`Trace` holding every layer's spikes in the Rust core;
    ``backward`` turns ``dL/dT`` on the output layer's first spike times into exact gradients for
    every weight and delay. Parameters are plain numpy arrays in ``layers``.
    """

    def __init__(self, layers: Sequence[Layer], neuron: Neuron) -> None:
        if not layers:
            raise ShapeError("network: needs at least one layer")
        for index, (a, b) in enumerate(zip(layers, layers[1:])):
            if b.shape[1] != a.shape[0]:
                raise ShapeError(
                    f"network: layer {index + 1} has n_in = {b.shape[1]} but layer {index} has n_out = {a.shape[0]}"
                )
        self.layers = list(layers)
        self.neuron = neuron

    @classmethod
    def random(
        cls,
        sizes: Sequence[int],
        neuron: Neuron,
        *,
        delay_kind: str | Sequence[str] = "synaptic",
        weight_mean: float | Sequence[float] = (1.5, 0.5),
        weight_std: float | Sequence[float] = (0.8, 0.8),
        delay_range: tuple[float, float] = (0.0, 0.1),
        seed: int = 0,
    ) -> Network:
        """Gaussian weights and uniform delays, per layer, from ``numpy.random.default_rng(seed)``.

        ``sizes`` lists the widths, input first (Yin-Yang: ``[5, 30, 3]`` with a bias input).
        Per-layer settings take a scalar, a sequence with one entry per layer, or two entries
        (hidden layers, output layer).
        """
        if len(sizes) < 2:
            raise ShapeError(f"sizes needs at least an input and an output width, got {sizes}")
        n_layers = len(sizes) - 1

        def per_layer(v, name):
            vals = [v] * n_layers if isinstance(v, (int, float, str)) else list(v)
            if len(vals) == 2 and n_layers > 2:
                vals = [vals[0]] * (n_layers - 1) + [vals[1]]
            if len(vals) != n_layers:
                raise ShapeError(f"{name}: {len(vals)} values for {n_layers} layers")
            return vals

        kinds = per_layer(delay_kind, "delay_kind")
        means = per_layer(weight_mean, "weight_mean")
        stds = per_layer(weight_std, "weight_std")
        for k in kinds:
            if k not in DELAY_KINDS:
                raise ParameterError(f"delay_kind must be one of {DELAY_KINDS}, got {k!r}")
        rng = np.random.default_rng(seed)
        layers = []
        for index in range(n_layers):
            n_in, n_out = sizes[index], sizes[index + 1]
            w = rng.normal(means[index], stds[index], size=(n_out, n_in))
            d = rng.uniform(*delay_range, size=_core.delay_shape(kinds[index], n_out, n_in))
            layers.append(Layer(w, d, kinds[index]))
        return cls(layers, neuron)

    @property
    def sizes(self) -> list[int]:
        return [self.layers[0].shape[1]] + [layer.shape[0] for layer in self.layers]

    def _args(self) -> list[tuple]:
        return [layer.as_args() for layer in self.layers]

    def forward(
        self,
        spikes: SpikesLike | SpikeSet,
        n_samples: int | None = None,
        *,
        select: ArrayLike | None = None,
    ) -> Trace:
        """Spikes of every layer for a batch.

        ``spikes`` is an Arrow table (then ``n_samples`` is required) or a :class:`SpikeSet`
        holding a whole split; ``select`` picks the samples forming the batch (sample ``k`` of
        the batch is ``select[k]`` of the set).
        """
        spikes = as_spike_set(spikes, n_samples)
        return _core.network_forward(spikes, _select(select), self._args(), self.neuron)

    def backward(
        self,
        spikes: SpikesLike | SpikeSet,
        trace: Trace,
        grad_times: ArrayLike,
        *,
        select: ArrayLike | None = None,
        min_slope: float | None = None,
        shards: Sequence[int] | None = None,
    ) -> NetworkGrad:
        """Gradients given ``grad_times = dL/dT``, shape ``(n_samples, n_out)``, on the output
        layer's first spike times (entries of silent neurons are ignored).

        ``trace`` may come from :meth:`forward` or be built from recorded spikes with
        ``Trace.from_tables`` (training in the loop). ``grads.inputs`` is aligned with the rows
        of the input table (rows of unselected samples get 0).

        ``min_slope`` floors the membrane slope ``V'(T)`` in the formulas (default 1e-12, only
        ever reached at a tangency). Recorded spikes can sit where the host's model of the neuron
        is flat or falling (threshold mismatch on a chip); a floor of a few percent of
        ``theta / tau_m`` keeps their contributions bounded.

        ``shards``: sizes of consecutive shards of the batch (summing to its size). Then every
        gradient array gets a leading axis with one entry per shard, each exactly what the
        batch made of that shard alone gives (all shards in one parallel core call;
        :mod:`delgrad.shards`).
        """
        spikes = as_spike_set(spikes, trace.n_samples if select is None else None)
        g = as_f64(grad_times, "grad_times", ndim=2)
        layers, gin = _core.network_backward(
            spikes, _select(select), self._args(), self.neuron, trace, g, min_slope, _shards(shards)
        )
        return NetworkGrad(layers=layers, inputs=gin)

    def n_parameters(self) -> int:
        return int(sum(layer.weights.size + layer.delays.size for layer in self.layers))

    # --- persistence -------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Writes the parameters (``.npz``) and the architecture (inside it, as JSON)."""
        meta = {"neuron": neuron_meta(self.neuron), "delay_kinds": [layer.delay_kind for layer in self.layers]}
        arrays: dict[str, np.ndarray] = {}
        for index, layer in enumerate(self.layers):
            arrays[f"w{index}"] = layer.weights
            arrays[f"d{index}"] = layer.delays
        _write_npz(path, meta, arrays)

    @classmethod
    def load(cls, path: str | Path) -> Network:
        meta, z = _read_npz(path)
        layers = [Layer(z[f"w{index}"], z[f"d{index}"], kind) for index, kind in enumerate(meta["delay_kinds"])]
        return cls(layers, Neuron(**meta["neuron"]))

    def __repr__(self) -> str:
        kinds = ",".join(layer.delay_kind for layer in self.layers)
        return f"Network(sizes={self.sizes}, delays=[{kinds}], {self.neuron!r})"
