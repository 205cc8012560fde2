"""One sample of a trained network, looked at closely (``delgrad inspect``): its input raster,
the spikes of every layer, and the exact membrane potential of chosen neurons.

The potential comes from the events alone (:func:`delgrad._core.membrane_potential`): the
neuron's arrivals (source spike time plus the synapse's effective delay) and, for a multi-spike
neuron, its own spikes, which reset it. It is exact at every time it is asked for, so the figure
samples it on a display grid plus exactly at every arrival and spike, and ``V`` reaches the
threshold exactly where the network spiked.

Layers are numbered as everywhere in delgrad (:mod:`delgrad.figures`): layer ``k`` is fed by
``network.layers[k]``; ``"input"`` and ``"readout"`` are named.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from delgrad import _core
from delgrad._core import SpikeSet
from delgrad.figures import integer_ticks, layer_name, save, time_label, time_unit
from delgrad.multi import MultiNetwork
from delgrad.network import Network

__all__ = [
    "NeuronRef",
    "SampleActivity",
    "default_neurons",
    "inspect_run",
    "membrane_potential",
    "parse_neurons",
    "plot_sample",
    "sample_activity",
]

# A neuron: (layer index or "readout", index within it).
NeuronRef = tuple[int | str, int]
Spikes = tuple[NDArray[np.uint32], NDArray[np.float64]]  # (neuron, time) of one sample


@dataclass(frozen=True)
class SampleActivity:
    """One sample's spikes: ``input`` and every network layer's (``layers[k]`` is layer ``k``),
    each as ``(neuron, time)`` arrays; ``prediction`` the network's class, and for multi-spike
    networks the readout ``values``."""

    input: Spikes
    layers: list[Spikes]
    prediction: int
    values: NDArray[np.float64] | None = None


def _columns(batch) -> Spikes:
    return (
        np.ascontiguousarray(batch.column("neuron").to_numpy(), dtype=np.uint32),
        np.ascontiguousarray(batch.column("time").to_numpy(), dtype=np.float64),
    )


def sample_activity(network: Network | MultiNetwork, spikes: SpikeSet, sample: int) -> SampleActivity:
    """Runs ``network`` on sample ``sample`` of ``spikes`` and returns every layer's spikes."""
    if not 0 <= sample < len(spikes):
        raise IndexError(f"sample {sample} is out of range: the split has {len(spikes)} samples")
    select = np.array([sample], dtype=np.uint32)
    input_spikes = _columns(spikes.select(select))
    if isinstance(network, MultiNetwork):
        out = network.forward(spikes, select=select)
        trace, values = out.trace, out.values[0]
        prediction = int(np.argmax(values))
    else:
        trace, values = network.forward(spikes, select=select), None
        prediction = int(_core.predict(trace.first_times(trace.n_layers - 1))[0])
    layers = [_columns(trace.spikes(index)) for index in range(trace.n_layers)]
    return SampleActivity(input_spikes, layers, prediction, values)


def _check_ref(network: Network | MultiNetwork, ref: NeuronRef) -> tuple[int | str, int]:
    layer, neuron = ref
    multi = isinstance(network, MultiNetwork)
    if layer == "readout":
        if not multi:
            raise ValueError("a TTFS network has no readout; its output is its last layer")
        width = network.readout.layer.shape[0]
    else:
        if not isinstance(layer, (int, np.integer)) or isinstance(layer, bool):
            raise ValueError(f"layer must be an integer or 'readout', got {layer!r}")
        n_layers = len(network.layers)
        if not -n_layers <= layer < n_layers:
            raise ValueError(f"layer {layer} does not exist: the network has layers 0..{n_layers - 1}")
        layer = int(layer) % n_layers
        width = network.layers[layer].shape[0]
    if not 0 <= neuron < width:
        raise ValueError(f"neuron {neuron} does not exist in {_name(network, layer)}: it has {width} neurons")
    return layer, int(neuron)


def _name(network: Network | MultiNetwork, layer: int | str) -> str:
    if layer == "readout":
        return "readout"
    return layer_name(int(layer), len(network.layers), isinstance(network, MultiNetwork))


def membrane_potential(
    network: Network | MultiNetwork,
    activity: SampleActivity,
    ref: NeuronRef,
    times: NDArray[np.float64],
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``V`` of neuron ``ref`` at ``times`` in the sample of ``activity``, exactly, and its
    arrivals ``(time, weight)`` sorted by time. ``V`` is left-continuous: at a spike time it is
    the value just before the reset (the threshold)."""
    layer, neuron = _check_ref(network, ref)
    times = np.ascontiguousarray(times, dtype=np.float64)
    multi = isinstance(network, MultiNetwork)
    if layer == "readout":
        last = activity.layers[-1]
        connections = [(*last, network.readout.layer.as_args())]
        return _core.membrane_potential(network.readout.neuron, neuron, connections, times)
    source = activity.input if layer == 0 else activity.layers[layer - 1]
    connections = [(*source, network.layers[layer].as_args())]
    own = None
    if multi:
        recurrent = network.recurrent[layer]
        if recurrent is not None:
            connections.append((*activity.layers[layer], recurrent.as_args()))
        ids, spike_times = activity.layers[layer]
        own = np.ascontiguousarray(spike_times[ids == neuron])
    return _core.membrane_potential(network.neuron, neuron, connections, times, own)


def parse_neurons(text: str) -> list[NeuronRef]:
    """``"0:3,1:2,readout:4"`` -> ``[(0, 3), (1, 2), ("readout", 4)]`` (layer ``-1`` is the last)."""
    refs: list[NeuronRef] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"(-?\d+|readout|input):(\d+)", part)
        if m is None:
            raise ValueError(f"--neurons: {part!r} is not LAYER:NEURON (e.g. 0:3, -1:2, readout:4)")
        if m.group(1) == "input":
            raise ValueError("--neurons: input channels have no membrane potential; choose a layer or the readout")
        layer = m.group(1) if m.group(1) == "readout" else int(m.group(1))
        refs.append((layer, int(m.group(2))))
    if not refs:
        raise ValueError("--neurons: no neuron given")
    return refs


def default_neurons(network: Network | MultiNetwork, activity: SampleActivity, label: int | None) -> list[NeuronRef]:
    """The neurons worth a look: the output (TTFS) or readout (multi-spike) unit of the true class
    and of the predicted one, and in each hidden layer its first (TTFS) or busiest (multi-spike)
    neuron."""
    multi = isinstance(network, MultiNetwork)
    refs: list[NeuronRef] = []
    hidden = activity.layers if multi else activity.layers[:-1]
    for index, (ids, times) in enumerate(hidden):
        if len(ids):
            if multi:
                pick = int(np.bincount(ids).argmax())
            else:
                pick = int(ids[np.argmin(times)])
            refs.append((index, pick))
    out_layer: int | str = "readout" if multi else len(network.layers) - 1
    for unit in (label, activity.prediction):
        if unit is not None and unit >= 0 and (out_layer, unit) not in refs:
            refs.append((out_layer, int(unit)))
    return refs[-4:] if len(refs) > 4 else refs


def _window(network: Network | MultiNetwork, activity: SampleActivity) -> tuple[float, float]:
    neuron = network.neuron
    t_end = neuron.t_end if isinstance(network, MultiNetwork) else np.inf
    all_times = np.concatenate([activity.input[1], *(times for _, times in activity.layers)])
    start = min(0.0, float(all_times.min())) if all_times.size else 0.0
    if np.isfinite(t_end):
        return start, float(t_end)
    last = float(all_times.max()) if all_times.size else 0.0
    # A TTFS neuron's first spike is all that counts: show a little of what follows the last one.
    return start, last + neuron.tau_m


def _trajectory(
    network: Network | MultiNetwork, activity: SampleActivity, ref: NeuronRef, window: tuple[float, float]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """``(t, V)`` for drawing (display grid plus every arrival and spike, with the reset drawn
    as a vertical drop), the neuron's spike times and its arrivals."""
    layer, neuron = _check_ref(network, ref)
    _, arrivals = membrane_potential(network, activity, ref, np.zeros(0))
    spikes = np.zeros(0)
    if layer != "readout":
        ids, times = activity.layers[layer]
        spikes = times[ids == neuron]
    t_ref = network.neuron.t_ref
    grid = np.linspace(*window, 1500)
    inside = (arrivals[:, 0] >= window[0]) & (arrivals[:, 0] <= window[1])
    t = np.unique(np.concatenate([grid, arrivals[inside, 0], spikes, spikes + t_ref]))
    t = t[(t >= window[0]) & (t <= window[1])]
    v, _ = membrane_potential(network, activity, ref, t)
    if isinstance(network, MultiNetwork) and spikes.size:
        # V is left-continuous (theta at the spike); the reset to 0 follows at the same time.
        at = np.searchsorted(t, spikes) + 1
        t, v = np.insert(t, at, spikes), np.insert(v, at, 0.0)
    return t, v, spikes, arrivals


def plot_sample(
    network: Network | MultiNetwork,
    activity: SampleActivity,
    neurons: list[NeuronRef],
    out: Path,
    *,
    unit: str,
    title: str,
    label: int | None = None,
) -> Path:
    """Writes the inspect figure: input raster, a raster per layer (chosen neurons ringed), and
    the membrane potential of each chosen neuron with its threshold, spikes and arrivals."""
    import matplotlib.pyplot as plt

    multi = isinstance(network, MultiNetwork)
    refs = [_check_ref(network, r) for r in neurons]
    window = _window(network, activity)
    rasters = [("input", activity.input)] + [
        (_name(network, index), spikes) for index, spikes in enumerate(activity.layers)
    ]
    heights = [1.6] * len(rasters) + [1.5] * len(refs)
    fig, axes = plt.subplots(
        len(heights), 1, figsize=(9, sum(heights) + 0.6), sharex=True, gridspec_kw={"height_ratios": heights}
    )
    axes = np.atleast_1d(axes)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (name, (ids, times)) in zip(axes, rasters):
        ax.scatter(times, ids, s=4 if len(ids) < 500 else 1, color="k", label=name, linewidths=0)
        ax.set_ylabel(f"{name}\nneuron", fontsize=8)
        integer_ticks(ax, "y")
        for k, (layer, neuron) in enumerate(refs):
            if name == _name(network, layer):
                mine = ids == neuron
                ax.scatter(times[mine], ids[mine], s=40, facecolors="none", edgecolors=colors[k % len(colors)])
                ax.axhline(neuron, color=colors[k % len(colors)], lw=0.6, alpha=0.5)
        if not len(ids):
            ax.text(0.5, 0.5, "no spikes", transform=ax.transAxes, ha="center", va="center", color="0.4")
    axes[0].set_title(title, fontsize=10)
    for k, (ax, ref) in enumerate(zip(axes[len(rasters) :], refs)):
        layer, neuron = ref
        t, v, spikes, arrivals = _trajectory(network, activity, ref, window)
        color = colors[k % len(colors)]
        is_output = layer == "readout" or (not multi and layer == len(network.layers) - 1)
        name = f"{_name(network, layer)}, {'unit' if layer == 'readout' else 'neuron'} {neuron}"
        if is_output:
            roles = [
                role for role, unit in (("true class", label), ("predicted", activity.prediction)) if unit == neuron
            ]
            name += f" ({', '.join(roles)})" if roles else ""
        if not multi and spikes.size:
            # A TTFS neuron has no reset: V goes on after its first spike, which alone counts.
            before, after = t <= spikes[0], t >= spikes[0]  # both hold the spike itself
            ax.plot(t[before], v[before], color=color, lw=1.1, label="V")
            ax.plot(t[after], v[after], color=color, lw=1.1, alpha=0.35, label="V after the first spike")
        else:
            ax.plot(t, v, color=color, lw=1.1, label="V")
        # The y range follows what counts: for TTFS, V up to the first spike (what follows may leave it).
        counted = v[t <= spikes[0]] if not multi and spikes.size else v
        high, low = max(float(counted.max(initial=0.0)), 0.0), min(float(counted.min(initial=0.0)), 0.0)
        if layer != "readout":
            theta = network.neuron.theta
            high = max(high, theta)
            ax.axhline(theta, color="0.3", ls="--", lw=0.8, label=r"threshold $\vartheta$")
            ax.plot(spikes, np.full(spikes.size, theta), "v", color=color, ms=6, label=f"spikes ({spikes.size})")
        elif activity.values is not None:
            how = "max of V" if network.readout.kind == "max" else "time-weighted mean of V"
            name += f": readout value {activity.values[neuron]:.3g} ({how})"
        # Arrivals as a rug below V: green excitatory, red inhibitory.
        pad = 0.08 * (high - low or 1.0)
        rug = low - pad
        shown = arrivals[(arrivals[:, 0] >= window[0]) & (arrivals[:, 0] <= window[1])]
        for sign, c, what in ((1, "tab:green", "excitatory"), (-1, "tab:red", "inhibitory")):
            pick = shown[np.sign(shown[:, 1]) == sign]
            if len(pick):
                ax.plot(pick[:, 0], np.full(len(pick), rug), "|", color=c, ms=7, alpha=0.6, label=f"{what} arrivals")
        ax.set_ylim(rug - pad, high + 3 * pad)  # room above for the panel's name
        ax.set_ylabel("V", fontsize=8)
        ax.text(
            0.01, 0.97, name, transform=ax.transAxes, va="top", fontsize=8, bbox={"fc": "w", "ec": "none", "pad": 1}
        )
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    axes[-1].set_xlabel(time_label(unit))
    axes[-1].set_xlim(*window)
    path = Path(out)
    save(fig, path)
    return path


def inspect_run(
    run_dir: str | Path,
    sample: int,
    neurons: list[NeuronRef] | None = None,
    split: str = "test",
    out: str | Path | None = None,
) -> Path:
    """Plots sample ``sample`` of ``split`` of a finished run (see the module doc); returns the
    figure's path. Default ``out``: ``plots/inspect-<split>-<sample>.png`` in the run directory
    (written under the run's lock). An existing ``out`` is replaced only if delgrad wrote it."""
    from delgrad.figures import read_summary
    from delgrad.model import Model
    from delgrad.pipeline import load_split
    from delgrad.rundir import RunDir, read_config

    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    if split not in ("train", "validation", "test"):
        raise ValueError(f"split must be train, validation or test, got {split!r}")
    model = Model.load(run_dir)
    # The run's mapped split (delgrad.data.mapped): the split is not copied into memory.
    data, _, _ = load_split(run_dir / "data", split)
    labels, spikes = data.labels, data.spikes
    activity = sample_activity(model.network, spikes, sample)
    label = int(labels[sample])
    refs = neurons if neurons is not None else default_neurons(model.network, activity, label)
    for r in refs:
        _check_ref(model.network, r)
    unit = time_unit(cfg.data.dataset, getattr(cfg.data, "time_unit", None))
    title = f"{cfg.name}: {split} sample {sample}, true class {label}, predicted {activity.prediction}"

    def draw(path: Path) -> Path:
        return plot_sample(model.network, activity, refs, path, unit=unit, title=title, label=label)

    if out is None:
        with RunDir.attach(run_dir):
            (run_dir / "plots").mkdir(exist_ok=True)
            return draw(run_dir / "plots" / f"inspect-{split}-{sample}.png")
    out = Path(out)
    if out.exists():
        try:
            read_summary(out)
        except Exception:
            raise FileExistsError(f"{out} exists and is not a figure delgrad wrote; choose another --out") from None
    return draw(out)
