"""The run report: ``report.md`` with PNG plots, written from the run directory's own files.

Every figure follows :mod:`delgrad.figures`: time units of the data set, integer class ticks,
and one layer numbering (layer ``k`` is fed by ``network.layers[k]``, as in
``spikes_test.parquet``; ``input`` and ``readout`` are named).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from delgrad.config import PipelineConfig  # noqa: E402
from delgrad.figures import (  # noqa: E402
    TAU_S,
    integer_ticks,
    layer_convention,
    layer_name,
    save,
    time_label,
    time_unit,
)

# Test samples in the report's raster plot.
RASTER_SAMPLES = 4


def plot_curves(metrics: pl.DataFrame, out: Path) -> str:
    """Loss and accuracy per epoch; every epoch is a marked point, so a one-epoch run shows one."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    e = metrics["epoch"].to_numpy()
    style = {"marker": "o", "ms": 4 if len(e) <= 40 else 0}
    for col in [c for c in metrics.columns if c.endswith("_loss")]:
        a.plot(e, metrics[col].to_numpy(), label=col.removesuffix("_loss"), **style)
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.set_yscale("log"), a.legend()
    # Plain numbers on the log axis: a narrow range otherwise reads "3.6 x 10^0".
    plain = matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}")
    a.yaxis.set_major_formatter(plain), a.yaxis.set_minor_formatter(plain)
    acc_cols = [c for c in metrics.columns if c.endswith("_acc")]
    for col in acc_cols:
        b.plot(e, 100 * metrics[col].to_numpy(), label=col.removesuffix("_acc"), **style)
    b.set_xlabel("epoch"), b.set_ylabel("accuracy [%]"), b.legend()
    lowest = min(float(np.nanmin(metrics[c].to_numpy())) for c in acc_cols) if acc_cols else 0.0
    b.set_ylim(max(0.0, 100 * lowest - 5), 100.5)
    for ax in (a, b):
        integer_ticks(ax, "x")
        if len(e) == 1:  # one point: give it room on both sides
            ax.set_xlim(e[0] - 1, e[0] + 1)
    return save(fig, out / "curves.png")


def plot_yinyang_map(model, out: Path, features: np.ndarray, labels: np.ndarray, pred: np.ndarray) -> str:
    from delgrad.data.yinyang import inside_circle, yinyang_class

    n = 160
    xs = np.linspace(0, 1, n)
    gx, gy = np.meshgrid(xs, xs)
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1)
    mask = inside_circle(grid[:, 0], grid[:, 1])
    cls = np.full(len(grid), np.nan)
    cls[mask] = model.predict(grid[mask])
    truth = np.full(len(grid), np.nan)
    truth[mask] = yinyang_class(grid[mask, 0], grid[mask, 1])
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.4))
    colors = ["#4c72b0", "#dd8452", "#55a868"]
    cmap = matplotlib.colors.ListedColormap(colors)
    for ax, img, title in [(axes[0], truth, "true classes"), (axes[1], cls, "network")]:
        ax.imshow(img.reshape(n, n), origin="lower", extent=(0, 1, 0, 1), cmap=cmap, vmin=0, vmax=2)
        ax.set_title(title), ax.set_xlabel("x"), ax.set_ylabel("y")
    wrong = pred != labels
    axes[1].scatter(features[wrong, 0], features[wrong, 1], s=12, c="k", marker="x", label="test errors")
    handles = [matplotlib.patches.Patch(color=c, label=f"class {k}") for k, c in enumerate(colors)]
    axes[0].legend(handles=handles, loc="upper right", fontsize=8)
    axes[1].legend(loc="upper right", fontsize=8)
    return save(fig, out / "classification_map.png")


def _heat_map_side(k: int) -> float:
    """Inches for a k-by-k class map: cells large enough to see, the figure not too big."""
    return float(np.clip(3.2 + 0.17 * k, 4.2, 9.0))


def _median_iqr(x: np.ndarray) -> tuple[float, float, float]:
    x = x[np.isfinite(x)]
    if not x.size:
        return np.nan, np.nan, np.nan
    lo, mid, hi = np.percentile(x, [25, 50, 75])
    return float(mid), float(mid - lo), float(hi - mid)


def plot_output_times(times: np.ndarray, labels: np.ndarray, out: Path, unit: str) -> str:
    """Output spike times by true class, legible for 3 to 35 classes: a class-by-neuron map of
    the median first-spike time (a learned network is early on the diagonal), and per class the
    median (with quartiles) of the true class's neuron against the earliest other neuron."""
    k = times.shape[1]
    side = _heat_map_side(k)
    per_class = float(np.clip(2.0 + 0.28 * k, 4.5, 12.0))
    fig, (a, b) = plt.subplots(
        1, 2, figsize=(side + 1.2 + per_class, side), gridspec_kw={"width_ratios": [side + 1.2, per_class]}
    )
    median = np.full((k, k), np.nan)
    for c in range(k):
        rows = times[labels == c]
        for j in range(k):
            median[c, j] = _median_iqr(rows[:, j])[0]
    cmap = plt.get_cmap("viridis_r").with_extremes(bad="0.85")
    im = a.imshow(np.ma.masked_invalid(median), cmap=cmap, aspect="auto")
    a.set_xlabel("output neuron"), a.set_ylabel("true class")
    a.set_title("median first spike time (grey: always silent)", fontsize=9)
    integer_ticks(a)
    fig.colorbar(im, ax=a, label=time_label(unit, "median spike time"))

    others = times.copy()
    others[np.arange(len(labels)), labels] = np.inf
    own = times[np.arange(len(labels)), labels]
    first_other = others.min(axis=1)
    classes = np.arange(k)
    for offset, values, name, color in (
        (-0.15, own, "neuron of the true class", "tab:blue"),
        (0.15, first_other, "earliest other neuron", "tab:orange"),
    ):
        stats = np.array([_median_iqr(values[labels == c]) for c in classes])
        b.errorbar(
            classes + offset, stats[:, 0], yerr=stats[:, 1:].T, fmt="o", ms=4, capsize=2, color=color, label=name
        )
    title = "median and quartiles per true class"
    if not np.all(np.isfinite(own)):
        title += f"; true-class neuron silent in {100 * np.mean(~np.isfinite(own)):.0f} % of samples"
    b.set_title(title, fontsize=9)
    b.set_xlabel("true class"), b.set_ylabel(time_label(unit, "first spike time"))
    b.set_xlim(-0.6, k - 0.4)
    integer_ticks(b, "x")
    b.legend(fontsize=8)
    return save(fig, out / "output_times.png")


def plot_readout_values(values: np.ndarray, labels: np.ndarray, out: Path) -> str:
    """Mean readout value of every class unit, per true class (a learned readout is diagonal)."""
    k = values.shape[1]
    mean = np.stack([values[labels == c].mean(axis=0) if np.any(labels == c) else np.full(k, np.nan) for c in range(k)])
    side = _heat_map_side(k)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")
    im = ax.imshow(np.ma.masked_invalid(mean), cmap=cmap, aspect="auto")
    ax.set_xlabel("readout unit"), ax.set_ylabel("true class")
    if np.isnan(mean).any():
        ax.set_title("grey: no test sample of this class", fontsize=9)
    integer_ticks(ax)
    fig.colorbar(im, ax=ax, label="mean readout value")
    return save(fig, out / "readout_values.png")


def plot_raster(
    inputs: pl.DataFrame,
    layers: pl.DataFrame,
    sizes: list[int],
    names: list[str],
    out: Path,
    unit: str,
    samples: int = RASTER_SAMPLES,
) -> str:
    """Spikes of the first test samples: the input and every layer, each in a band of its own
    (equal heights, so that 3 input channels stay as visible as 256 hidden neurons; neuron index
    upwards within a band). ``layers`` holds the ``layer`` column of ``spikes_test.parquet``."""
    n_test = int(inputs["sample"].max()) + 1 if inputs.height else 1
    samples = max(1, min(samples, n_test))
    fig, axes = plt.subplots(1, samples, figsize=(3.2 * samples + 0.8, 3.8), sharey=True, squeeze=False)
    axes = axes[0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    bands = [inputs] + [layers.filter(pl.col("layer") == index) for index in range(len(sizes) - 1)]
    for s, ax in enumerate(axes):
        for band, (frame, name, size) in enumerate(zip(bands, names, sizes)):
            d = frame.filter(pl.col("sample") == s)
            ax.scatter(
                d["time"].to_numpy(),
                band + (d["neuron"].to_numpy() + 0.5) / size,
                s=8 if size <= 100 else 3,
                color=colors[band % len(colors)],
                label=name,
                linewidths=0,
            )
        for edge in range(1, len(bands)):
            ax.axhline(edge, color="0.7", lw=0.6)
        ax.set_title(f"test sample {s}", fontsize=9), ax.set_xlabel(time_label(unit))
    counts = [f"{size} {'channels' if band == 0 else 'neurons'}" for band, size in enumerate(sizes)]
    axes[0].set_yticks(np.arange(len(bands)) + 0.5, [f"{name}\n({count})" for name, count in zip(names, counts)])
    axes[0].tick_params(axis="y", labelsize=8, length=0)
    axes[0].set_ylim(0, len(bands))
    return save(fig, out / "raster.png")


def plot_delays(network, out: Path, unit: str, multi: bool) -> str | None:
    """Histograms of the learned delays of every layer (and recurrent connection) that has them."""
    n_layers = len(network.layers)
    groups = [
        (f"into {layer_name(index, n_layers, multi)}, {layer.delay_kind}", layer)
        for index, layer in enumerate(network.layers)
    ]
    for index, rec in enumerate(getattr(network, "recurrent", None) or []):
        if rec is not None:
            groups.append((f"recurrent in layer {index}, {rec.delay_kind}", rec))
    groups = [(name, layer) for name, layer in groups if layer.delay_kind != "none"]
    if not groups:
        return None
    fig, ax = plt.subplots(figsize=(5.6, 3.2 + 0.25 * len(groups)))
    # Densities, not counts: a recurrent matrix or an axonal vector has far fewer entries.
    for name, layer in groups:
        ax.hist(layer.delays.ravel(), bins=40, alpha=0.55, density=True, histtype="stepfilled", label=name)
    ax.set_xlabel(time_label(unit, "delay")), ax.set_ylabel("density")
    ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.01), frameon=False)
    return save(fig, out / "delays.png")


def _finish_report(
    run_dir: Path, lines: list[str], figs: list[tuple[str, str | None]], layers: str, model: str
) -> Path:
    """Appends the figures and the list of files to ``lines`` and writes ``report.md``."""
    for title, name in figs:
        if name:
            lines += ["", f"## {title}", "", f"![{title}](plots/{name})"]
    lines += [
        "",
        f"Files: `metrics.parquet` (per epoch), `spikes_test.parquet` (test spikes of {layers}; its `layer` "
        f"column numbers layers as above), `data/` (encoded data set), {model}, `config.toml`.",
        "",
        f"One sample up close (every layer's spikes, the exact membrane potential of chosen neurons): "
        f"`delgrad inspect {run_dir} --sample 0`.",
    ]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _test_spikes(run_dir: Path, samples: int = RASTER_SAMPLES) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The input spikes and every network layer's (``spikes_test.parquet``) of the first
    ``samples`` test samples (scanned lazily: the rest of the test set is never read)."""
    from delgrad.data.parquet import SpikeDataset

    dataset = SpikeDataset(run_dir / "data", "test")
    first = dataset.first_sample
    inputs = dataset.scan().filter(pl.col("sample") < first + samples).with_columns(pl.col("sample") - first)
    layers = pl.scan_parquet(run_dir / "spikes_test.parquet").filter(pl.col("sample") < samples)
    return inputs.collect(), layers.collect()


def write_report(
    run_dir: Path,
    cfg: PipelineConfig,
    model,
    results: dict[str, float],
    split,
    ev,
    train_seconds: float | None,
) -> Path:
    """Writes ``plots/*.png`` and ``report.md`` for a finished run of either network kind: the
    shared parts (results table, curves, raster, delays) and a section per kind (TTFS: output
    spike times and the Yin-Yang map; multi-spike: readout values and hidden activity)."""
    from delgrad.data.parquet import SpikeDataset

    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    metrics = pl.read_parquet(run_dir / "metrics.parquet") if (run_dir / "metrics.parquet").exists() else None
    net = model.network
    multi = cfg.multi
    unit = time_unit(cfg.data.dataset, getattr(cfg.data, "time_unit", None))
    figs: list[tuple[str, str | None]] = []
    if metrics is not None and metrics.height:
        figs.append(("Loss and accuracy", plot_curves(metrics, plots)))
    if multi:
        figs.append(("Readout values by true class (test set)", plot_readout_values(ev.values, split.labels, plots)))
        layer_sizes = net.sizes[:-1]
    else:
        if cfg.data.dataset == "yinyang":
            features = SpikeDataset(run_dir / "data", "test").features()
            figs.append(
                (
                    "Classification of the Yin-Yang plane",
                    plot_yinyang_map(model, plots, features, split.labels, ev.predictions),
                )
            )
        out_times = ev.trace.first_times(ev.trace.n_layers - 1)
        figs.append(
            (
                "Output spike times on the test set, by true class",
                plot_output_times(out_times, split.labels, plots, unit),
            )
        )
        layer_sizes = net.sizes
    names = ["input"] + [layer_name(index, len(net.layers), multi) for index in range(len(layer_sizes) - 1)]
    inputs, layer_spikes = _test_spikes(run_dir)
    figs.append(("Spikes of a few test samples", plot_raster(inputs, layer_spikes, layer_sizes, names, plots, unit)))
    figs.append(("Learned delays", plot_delays(net, plots, unit, multi)))

    delays = ", ".join(layer.delay_kind for layer in net.layers)
    if multi:
        recurrent = ", recurrent" if any(r is not None for r in net.recurrent) else ""
        description = (
            f"Multi-spike network {'-'.join(map(str, net.sizes))} (EventProp), hidden delays: {delays}{recurrent}; "
            f"leaky-integrator readout, loss on its `{net.readout.kind}` voltage; "
            f"{net.n_parameters()} parameters; {net.neuron!r}."
        )
    else:
        description = (
            f"Network {'-'.join(map(str, net.sizes))}, delays: {delays}, {net.n_parameters()} parameters, "
            f"{net.neuron!r}."
        )
    unit_text = "milliseconds" if unit == "ms" else ("units of tau_s" if unit == TAU_S else unit)
    lines = [f"# {cfg.name}", "", description, "", f"Times are in {unit_text}. {layer_convention(multi)}", ""]
    hw_path = run_dir / "hardware.json"
    if hw_path.exists():  # delgrad.hardware.report labels hardware and simulation and plots both
        from delgrad.hardware.report import hardware_section

        hw_lines, hw_figs = hardware_section(run_dir, json.loads(hw_path.read_text()), results, split.labels, plots)
        lines += hw_lines
        figs[1:1] = hw_figs
    else:
        lines += ["| split | accuracy | loss |", "|---|---|---|"]
        for name in ("train", "validation", "test"):
            lines.append(f"| {name} | {100 * results[f'{name}_acc']:.2f} % | {results[f'{name}_loss']:.5f} |")
    if multi:
        per_layer = [v for k, v in ev.stats.items() if k.startswith("spikes_l")]
        lines += [
            "",
            "Hidden spikes per test sample: "
            + ", ".join(f"layer {index}: {count:.1f}" for index, count in enumerate(per_layer))
            + ".",
        ]
    if metrics is not None and metrics.height and "validation_acc" in metrics.columns:
        best = metrics.sort("validation_acc", descending=True).row(0, named=True)
        lines += [
            "",
            f"Best validation accuracy {100 * best['validation_acc']:.2f} % at epoch "
            f"{best['epoch']} (test {100 * best['test_acc']:.2f} % there).",
        ]
    if cfg.train.select_on:
        lines += [
            "",
            f"The saved model holds the parameters of the epoch with the best {cfg.train.select_on} accuracy; "
            "the table above evaluates it.",
        ]
    if train_seconds is not None:
        lines += ["", f"Training wall time: {train_seconds:.1f} s."]
    if multi and cfg.network.delay_kind == "none":
        lines += ["", "No delays: the baseline that shows what the delays are for."]
    layers = "every hidden layer" if multi else "every layer"
    return _finish_report(run_dir, lines, figs, layers, "`model/` (`delgrad.Model.load`)")
