"""Conventions shared by every figure delgrad writes (the run report and ``delgrad inspect``).

- **Time units follow the data set**: SHD and SSC are in milliseconds; Yin-Yang, digits and
  the temporal task are in units of ``tau_s`` (DESIGN.md's convention).
- **Layers are numbered as in the Python API**: layer ``k`` is the population of neurons that
  ``network.layers[k]`` feeds (its weights and delays), ``trace.spikes(k)``, and ``layer == k``
  in ``spikes_test.parquet``. The input is not a layer; it is called ``input``. For TTFS networks
  the last layer is the output layer; for multi-spike networks all numbered layers are hidden
  and the leaky-integrator readout is called ``readout``.
- **Class axes have integer ticks.**
- Every PNG carries a machine-readable summary of its axes (labels, ticks, drawn points) in a
  PNG text chunk, so that tests and tools can check what a figure shows without parsing pixels
  (:func:`read_summary`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers or in CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

# Data sets whose spike times are milliseconds (delgrad.data.shd); the rest are in tau_s.
MILLISECOND_DATASETS = ("shd", "ssc", "tonic")  # tonic events: µs in the file, ms in delgrad
TAU_S = r"$\tau_s$"
SUMMARY_KEY = "delgrad:axes"


def time_unit(dataset: str, unit: str | None = None) -> str:
    """The unit of spike times for ``dataset``: ``unit`` when the data set declares one, ``ms``
    for SHD/SSC, ``tau_s`` (as mathtext) otherwise."""
    if unit:
        return unit
    return "ms" if dataset in MILLISECOND_DATASETS else TAU_S


def time_label(unit: str, what: str = "time") -> str:
    return f"{what} [{unit}]"


def layer_name(index: int, n_layers: int, multi: bool) -> str:
    """``layer k`` by the convention above, with its role: ``(output)`` for a TTFS network's last
    layer, ``(hidden)`` otherwise."""
    role = "hidden" if multi or index < n_layers - 1 else "output"
    return f"layer {index} ({role})"


LAYER_CONVENTION = (
    "Layers are numbered as in the Python API: layer k is the population fed by `network.layers[k]` "
    "(its weights and delays), `trace.spikes(k)`, and `layer == k` in `spikes_test.parquet`; the input is "
    "called *input*{readout}."
)


def layer_convention(multi: bool) -> str:
    """The numbering convention in one sentence, for reports."""
    return LAYER_CONVENTION.format(readout=", the leaky-integrator readout *readout*" if multi else "")


def integer_ticks(ax, axis: str = "both") -> None:
    """Integer-only ticks (class indices), at most about a dozen of them."""
    locator = MaxNLocator(integer=True, nbins=12)
    if axis in ("x", "both"):
        ax.xaxis.set_major_locator(locator)
    if axis in ("y", "both"):
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=12))


def summary(fig: Figure) -> list[dict[str, Any]]:
    """What each axes of ``fig`` shows: title, labels, tick values and labels within the view,
    and every line and scatter collection with its number of points (and marker)."""
    out = []
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            continue
        artists = []
        for line in ax.get_lines():
            artists.append(
                {
                    "kind": "line",
                    "label": str(line.get_label()),
                    "points": len(line.get_xdata()),
                    "marker": str(line.get_marker()),
                }
            )
        for coll in ax.collections:
            offsets = coll.get_offsets()
            artists.append({"kind": "scatter", "label": str(coll.get_label()), "points": len(offsets)})
        legend = ax.get_legend()
        out.append(
            {
                "title": ax.get_title(),
                "xlabel": ax.get_xlabel(),
                "ylabel": ax.get_ylabel(),
                **_ticks(ax, "x"),
                **_ticks(ax, "y"),
                "artists": artists,
                "legend": [t.get_text() for t in legend.get_texts()] if legend else [],
            }
        )
    return out


def _ticks(ax, axis: str) -> dict[str, list]:
    """The ticks inside the view of one axis, values and labels."""
    lo, hi = sorted(getattr(ax, f"get_{axis}lim")())
    values = getattr(ax, f"get_{axis}ticks")()
    labels = getattr(ax, f"get_{axis}ticklabels")()
    inside = [(float(v), t.get_text()) for v, t in zip(values, labels) if lo <= v <= hi]
    return {f"{axis}ticks": [v for v, _ in inside], f"{axis}ticklabels": [t for _, t in inside]}


def save(fig: Figure, path: Path) -> str:
    """Writes ``fig`` as PNG with its :func:`summary`; returns the file name."""
    fig.tight_layout()
    fig.canvas.draw()  # ticks are final only after a draw
    fig.savefig(path, dpi=110, metadata={SUMMARY_KEY: json.dumps(summary(fig))})
    plt.close(fig)
    return Path(path).name


def read_summary(path: str | Path) -> list[dict[str, Any]]:
    """The axes summary stored in a PNG written by :func:`save`."""
    from PIL import Image

    with Image.open(path) as image:
        text = image.text.get(SUMMARY_KEY)  # type: ignore[attr-defined]
    if text is None:
        raise ValueError(f"{path}: no delgrad figure summary in this PNG")
    return json.loads(text)
