"""The hardware part of a run report: what ran where, hardware and simulation labelled and
plotted side by side.

:func:`hardware_section` reads ``hardware.json`` and ``spikes_test_hw.parquet`` (written by
:func:`delgrad.hardware.session.write_hardware_record`) and the simulation's
``spikes_test.parquet``; it returns the markdown lines and writes its plots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402


def _first_times(spikes: pl.DataFrame, layer: int, n_samples: int, n_neurons: int) -> np.ndarray:
    """First spike time per (sample, neuron) of one layer; inf where silent."""
    out = np.full((n_samples, n_neurons), np.inf)
    d = spikes.filter(pl.col("layer") == layer).group_by("sample", "neuron").agg(pl.col("time").min())
    out[d["sample"].to_numpy(), d["neuron"].to_numpy()] = d["time"].to_numpy()
    return out


def hardware_label(hw: dict[str, Any]) -> str:
    backend = hw.get("backend", {})
    caps = backend.get("capabilities", {})
    profile = caps.get("profile")
    return (
        f"`{backend.get('backend', '?')}`"
        + (f", chip profile `{profile}`" if profile else "")
        + f", chip seed {caps.get('chip_seed', '?')}"
    )


def plot_hw_vs_sim(hw_times: np.ndarray, sim_times: np.ndarray, labels: np.ndarray, title: str, out: Path) -> str:
    """Output spike times on the test set, hardware (left) and simulation (middle) by true
    class, and hardware against simulation per spike (right)."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    finite = np.concatenate([hw_times[np.isfinite(hw_times)], sim_times[np.isfinite(sim_times)]])
    bins = np.linspace(finite.min(), finite.max(), 40) if finite.size else 10
    n_out = hw_times.shape[1]
    for ax, times, name in ((axes[0], hw_times, "hardware (recorded)"), (axes[1], sim_times, "simulation (ideal)")):
        for c in range(n_out):
            t = times[labels == c, c]  # the correct neuron's spike, per class
            ax.hist(t[np.isfinite(t)], bins=bins, alpha=0.6, label=f"class {c}: neuron {c}")
        ax.set_title(f"{name}: correct neuron's spike"), ax.set_xlabel("spike time [tau_s]")
        ax.legend(fontsize=7)
    both = np.isfinite(hw_times) & np.isfinite(sim_times)
    ax = axes[2]
    ax.scatter(sim_times[both], hw_times[both], s=3, alpha=0.4)
    if both.any():
        lo, hi = (
            float(min(sim_times[both].min(), hw_times[both].min())),
            float(max(sim_times[both].max(), hw_times[both].max())),
        )
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="hardware = simulation")
        ax.legend(fontsize=7)
    ax.set_xlabel("simulation [tau_s]"), ax.set_ylabel("hardware [tau_s]")
    ax.set_title("every output spike of the test set")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "hardware_vs_simulation.png", dpi=110)
    plt.close(fig)
    return "hardware_vs_simulation.png"


def hardware_section(
    run_dir: Path, hw: dict[str, Any], sim_results: dict[str, float], test_labels: np.ndarray, plots: Path
) -> tuple[list[str], list[tuple[str, str | None]]]:
    """Markdown lines (the accuracy tables, hardware and simulation labelled) and the figures
    ``(title, file)`` for the report."""
    run_dir = Path(run_dir)
    c = hw.get("counters", {})
    caps = hw.get("backend", {}).get("capabilities", {})
    restarts = hw.get("daemon_restarts")
    lines = [
        f"Trained in the loop on `{hw.get('backend', {}).get('backend', '?')}` ({caps.get('model', '')}, chip "
        f"profile `{caps.get('profile', '?')}`, chip seed {caps.get('chip_seed', '?')}) through "
        f"`{hw.get('endpoint')}`: {c.get('runs', 0)} runs, {c.get('configures', 0)} configurations, "
        f"{c.get('dropped_inputs', 0)} dropped inputs, {c.get('lost_events', 0)} lost events"
        + (f", {restarts} daemon restarts" if restarts else "")
        + ".",
        "",
        f"**Hardware** ({hardware_label(hw)}): the trained parameters measured on the hardware.",
        "",
        "| split | accuracy (hardware) | loss (hardware) |",
        "|---|---|---|",
    ]
    for name, r in hw.get("accuracy", {}).items():
        lines.append(f"| {name} | {100 * r['acc']:.2f} % | {r['loss']:.5f} |")
    lines += [
        "",
        "**Simulation**: the same (float) parameters in delgrad's ideal simulation, no hardware effects.",
        "",
        "| split | accuracy (simulation) | loss (simulation) |",
        "|---|---|---|",
    ]
    for split in ("train", "validation", "test"):
        lines.append(f"| {split} | {100 * sim_results[f'{split}_acc']:.2f} % | {sim_results[f'{split}_loss']:.5f} |")
    figs: list[tuple[str, str | None]] = []
    hw_file, sim_file = run_dir / "spikes_test_hw.parquet", run_dir / "spikes_test.parquet"
    if hw_file.exists() and sim_file.exists():
        hw_spikes, sim_spikes = pl.read_parquet(hw_file), pl.read_parquet(sim_file)
        out_layer = int(sim_spikes["layer"].max()) if sim_spikes.height else 0
        n_out = int(max(test_labels.max() + 1, 1))
        n = len(test_labels)
        hw_t = _first_times(hw_spikes, out_layer, n, n_out)
        sim_t = _first_times(sim_spikes, out_layer, n, n_out)
        both = np.isfinite(hw_t) & np.isfinite(sim_t)
        diff = np.abs(hw_t - sim_t)[both]
        lines += [
            "",
            f"Test-set output spikes: {int(both.sum())} on both, {int(np.sum(np.isfinite(hw_t) & ~np.isfinite(sim_t)))}"
            f" only on the hardware, {int(np.sum(~np.isfinite(hw_t) & np.isfinite(sim_t)))} only in the simulation; "
            + (f"median |hardware - simulation| {np.median(diff):.4f} tau_s." if diff.size else "none on both."),
            "The recorded hardware spikes are in `spikes_test_hw.parquet` (same columns as `spikes_test.parquet`).",
        ]
        figs.append(
            (
                "Hardware and simulation, side by side (test set)",
                plot_hw_vs_sim(
                    hw_t,
                    sim_t,
                    test_labels,
                    f"hardware: {hardware_label(hw)} vs. ideal simulation".replace("`", ""),
                    plots,
                ),
            )
        )
    return lines, figs
