"""The run report: ``report.md`` with PNG plots, written from the run directory's own files."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from delgrad.config import PipelineConfig  # noqa: E402


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def plot_curves(metrics: pl.DataFrame, out: Path) -> str:
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    e = metrics["epoch"].to_numpy()
    for col in [c for c in metrics.columns if c.endswith("_loss")]:
        a.plot(e, metrics[col].to_numpy(), label=col.removesuffix("_loss"))
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.set_yscale("log"), a.legend()
    for col in [c for c in metrics.columns if c.endswith("_acc")]:
        b.plot(e, 100 * metrics[col].to_numpy(), label=col.removesuffix("_acc"))
    b.set_xlabel("epoch"), b.set_ylabel("accuracy [%]"), b.legend()
    b.set_ylim(max(0, 100 * float(metrics["train_acc"].min()) - 5), 100)
    return _save(fig, out / "curves.png")


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
    cmap = matplotlib.colors.ListedColormap(["#4c72b0", "#dd8452", "#55a868"])
    for ax, img, title in [(axes[0], truth, "true classes"), (axes[1], cls, "network")]:
        ax.imshow(img.reshape(n, n), origin="lower", extent=(0, 1, 0, 1), cmap=cmap, vmin=0, vmax=2)
        ax.set_title(title), ax.set_xlabel("x"), ax.set_ylabel("y")
    wrong = pred != labels
    axes[1].scatter(features[wrong, 0], features[wrong, 1], s=12, c="k", marker="x", label="test errors")
    axes[1].legend(loc="upper right", fontsize=8)
    return _save(fig, out / "classification_map.png")


def plot_output_times(times: np.ndarray, labels: np.ndarray, out: Path) -> str:
    n_out = times.shape[1]
    fig, axes = plt.subplots(1, n_out, figsize=(3.2 * n_out if n_out <= 4 else 14, 3), squeeze=False)
    finite = times[np.isfinite(times)]
    bins = np.linspace(finite.min(), finite.max(), 40) if finite.size else 10
    for j, ax in enumerate(axes[0]):
        for c in range(n_out):
            t = times[labels == c, j]
            ax.hist(t[np.isfinite(t)], bins=bins, alpha=0.6, label=f"class {c}")
        ax.set_title(f"output neuron {j}"), ax.set_xlabel("spike time [tau_s]")
    if n_out <= 4:
        axes[0][0].legend(fontsize=8)
    return _save(fig, out / "output_times.png")


def plot_raster(spikes: pl.DataFrame, sizes: list[int], out: Path, samples: int = 4) -> str:
    fig, axes = plt.subplots(1, samples, figsize=(3.2 * samples, 3.6), sharey=True)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for s, ax in enumerate(np.atleast_1d(axes)):
        d = spikes.filter(pl.col("sample") == s)
        for index in range(len(sizes)):
            dl = d.filter(pl.col("layer") == index)
            ax.scatter(
                dl["time"].to_numpy(),
                dl["neuron"].to_numpy() + offsets[index],
                s=8,
                color=colors[index % len(colors)],
                label=("input" if index == 0 else f"layer {index}"),
            )
        ax.set_title(f"test sample {s}"), ax.set_xlabel("time [tau_s]")
    np.atleast_1d(axes)[0].set_ylabel("neuron (stacked by layer)")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    return _save(fig, out / "raster.png")


def plot_delays(network, out: Path) -> str | None:
    layers = [(index, layer) for index, layer in enumerate(network.layers) if layer.delay_kind != "none"]
    if not layers:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for index, layer in layers:
        ax.hist(layer.delays.ravel(), bins=40, alpha=0.6, label=f"layer {index} ({layer.delay_kind})")
    ax.set_xlabel("delay [tau_s]"), ax.set_ylabel("count"), ax.legend(fontsize=8)
    return _save(fig, out / "delays.png")


def _finish_report(
    run_dir: Path, lines: list[str], figs: list[tuple[str, str | None]], layers: str, model: str
) -> Path:
    """Appends the figures and the list of files to ``lines`` and writes ``report.md``."""
    for title, name in figs:
        if name:
            lines += ["", f"## {title}", "", f"![{title}](plots/{name})"]
    lines += [
        "",
        f"Files: `metrics.parquet` (per epoch), `spikes_test.parquet` (test spikes of {layers}), "
        f"`data/` (encoded data set), {model}, `config.toml`.",
    ]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _test_spikes(run_dir: Path) -> pl.DataFrame:
    """The test set's input spikes (layer 0) and every network layer's (layer 1...), one table."""
    from delgrad.data.parquet import SpikeDataset

    test_in = SpikeDataset(run_dir / "data", "test").all().spikes
    layer_spikes = pl.read_parquet(run_dir / "spikes_test.parquet").with_columns(pl.col("layer") + 1)
    inputs = pl.from_arrow(test_in).with_columns(pl.lit(0, dtype=pl.UInt16).alias("layer"))
    return pl.concat([inputs, layer_spikes.with_columns(pl.col("layer").cast(pl.UInt16))])


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
            ("Output spike times on the test set, by true class", plot_output_times(out_times, split.labels, plots))
        )
        layer_sizes = net.sizes
    figs.append(("Spikes of a few test samples", plot_raster(_test_spikes(run_dir), layer_sizes, plots)))
    figs.append(("Learned delays", plot_delays(net, plots)))

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
    lines = [f"# {cfg.name}", "", description, ""]
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


def plot_readout_values(values: np.ndarray, labels: np.ndarray, out: Path) -> str:
    """Mean readout value of every class unit, per true class (a learned readout is diagonal)."""
    k = values.shape[1]
    mean = np.stack([values[labels == c].mean(axis=0) if np.any(labels == c) else np.full(k, np.nan) for c in range(k)])
    fig, ax = plt.subplots(figsize=(4.6, 3.8))
    im = ax.imshow(mean, cmap="viridis")
    ax.set_xlabel("readout unit"), ax.set_ylabel("true class")
    fig.colorbar(im, ax=ax, label="mean readout value")
    return _save(fig, out / "readout_values.png")
