"""The sweep report: DelGrad's accuracy-versus-parameters figure and a table, from the results.

Trials are grouped by every axis except ``report.over`` (the seeds); each group is one point:
its parameter count, and the median, minimum and maximum of ``report.y`` over the group's
finished trials. Groups with the same ``report.curve`` value (the delay type) form one curve.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from delgrad.sweep_spec import SweepSpec, short_keys, value_label  # noqa: E402

FIGURE = "accuracy_vs_params.png"


@dataclass
class Group:
    """Trials that differ only in the ``over`` axis (one point of the figure)."""

    key: tuple[tuple[str, Any], ...]  # (axis, value) for every axis but ``over``
    curve: str
    x: list[float]
    y: list[float]
    final: list[float]
    wall: list[float]
    n: int

    def stats(self) -> tuple[float, float, float]:
        return float(np.median(self.y)), float(np.min(self.y)), float(np.max(self.y))


def groups(spec: SweepSpec, table: pl.DataFrame) -> list[Group]:
    """The points of the figure, in the order their first trial appears in the sweep."""
    rep = spec.report
    keys = [a for a in spec.axes if a != rep["over"]]
    out: dict[str, Group] = {}
    for r in table.iter_rows(named=True):
        key = tuple((k, r[k]) for k in keys)
        ident = repr(key)
        g = out.get(ident)
        if g is None:
            curve = value_label(r[rep["curve"]]) if rep["curve"] else "all"
            g = out[ident] = Group(key, curve, [], [], [], [], 0)
        g.n += 1
        if r["status"] == "ok" and r[rep["y"]] is not None:
            g.x.append(float(r[rep["x"]]))
            g.y.append(float(r[rep["y"]]))
            g.final.append(float(r["test_acc_final"]))
            g.wall.append(float(r["wall_s"]))
    return list(out.values())


def plot(spec: SweepSpec, gs: list[Group], path: Path) -> None:
    rep = spec.report
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    curves = list(dict.fromkeys(g.curve for g in gs))
    for i, c in enumerate(curves):
        pts = sorted((float(np.median(g.x)), *g.stats(), g.x, g.y) for g in gs if g.curve == c and g.y)
        if not pts:
            continue
        x = np.array([p[0] for p in pts])
        med, lo, hi = (100 * np.array([p[k] for p in pts]) for k in (1, 2, 3))
        color = f"C{i}"
        ax.fill_between(x, lo, hi, color=color, alpha=0.18, linewidth=0)
        ax.plot(x, med, "o-", color=color, label=c, markersize=4)
        for p in pts:  # every trial, faintly: the spread is visible without a legend entry
            ax.scatter(p[4], 100 * np.array(p[5]), s=7, color=color, alpha=0.45, linewidths=0)
    over = f"median and min–max over {short_keys([rep['over']])[rep['over']]}" if rep["over"] else "one trial per point"
    ax.set_xlabel("number of parameters (weights + delays)" if rep["x"] == "n_params" else rep["x"])
    ax.set_ylabel(f"{_y_label(rep['y'])} [%]")
    ax.set_title(f"{spec.name}: {over}", fontsize=10)
    if rep["curve"]:
        ax.legend(title=short_keys([rep["curve"]])[rep["curve"]])
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _y_label(y: str) -> str:
    return {
        "test_acc_best_val": "test accuracy (best-validation epoch)",
        "test_acc_final": "test accuracy (last epoch)",
    }.get(y, y)


def _pct(v: float) -> str:
    return f"{100 * v:.2f}"


def table_md(spec: SweepSpec, gs: list[Group]) -> list[str]:
    rep = spec.report
    keys = [k for k, _ in gs[0].key] if gs else []
    short = short_keys(keys)
    over = short_keys([rep["over"]])[rep["over"]] if rep["over"] else "trials"
    head = [short[k] for k in keys] + [
        "params",
        f"median {rep['y']} %",
        "min %",
        "max %",
        "median test_acc_final %",
        f"{over} ok",
        "median wall s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in gs:
        cells = [value_label(v) for _, v in g.key]
        if g.y:
            med, lo, hi = g.stats()
            cells += [
                f"{np.median(g.x):.0f}",
                _pct(med),
                _pct(lo),
                _pct(hi),
                _pct(float(np.median(g.final))),
                f"{len(g.y)}/{g.n}",
                f"{np.median(g.wall):.1f}",
            ]
        else:
            cells += ["", "", "", "", "", f"0/{g.n}", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_report(sweep_dir: Path, spec: SweepSpec, table: pl.DataFrame, summary: dict[str, Any]) -> Path:
    """Writes ``report.md`` and the figure into ``sweep_dir``; returns the report's path."""
    gs = groups(spec, table)
    plot(spec, gs, sweep_dir / FIGURE)
    trial_wall = float(table.filter(pl.col("status") == "ok")["wall_s"].sum() or 0.0)
    lines = [
        f"# Sweep {spec.name}",
        "",
        f"Base pipeline `{spec.pipeline.name}`; axes: {', '.join(f'`{a}`' for a in spec.axes)}.",
        f"Trials: {summary['trials']} ({summary['ok']} ok, {summary['failed']} failed); this invocation ran "
        f"{summary['ran']} and reused {summary['reused']} finished earlier.",
        f"Wall time of this invocation: {summary['wall_s']:.1f} s ({summary['address']} Ray, "
        f"max parallel {summary['max_parallel'] or 'by CPUs'}, {summary['cpus_per_trial']:g} CPU per trial); "
        f"sum of the finished trials' own wall times: {trial_wall:.1f} s.",
        "",
        f"`{spec.report['y']}`: test accuracy of the epoch with the best validation accuracy (the saved "
        'model when `train.select_on = "validation"`); `test_acc_final`: test accuracy after the last epoch.',
        "",
        f"![accuracy versus parameters]({FIGURE})",
        "",
        *table_md(spec, gs),
    ]
    failed = table.filter(pl.col("status") == "failed")
    if len(failed):
        lines += ["", "## Failed trials", ""]
        lines += [f"- `{r['trial']}`: {str(r['error'])[:300]}" for r in failed.iter_rows(named=True)]
    path = sweep_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
