"""Plots that read right, checked through the CLI on real one-epoch runs: time units follow the
data set, class ticks are integers, a one-epoch run shows its point, layers are numbered the same
in spikes_test.parquet, raster.png, delays.png and the inspect figure; and ``delgrad inspect``
writes its figure for TTFS and multi-spike runs (with refused bad input).

What a figure shows is read back from the summary every delgrad PNG carries
(:func:`delgrad.figures.read_summary`), taken from the figure itself when it was saved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from delgrad import cli
from delgrad.figures import TAU_S, read_summary
from delgrad.model import Model
from delgrad.report import plot_output_times, plot_readout_values

ROOT = Path(__file__).resolve().parent.parent
SHD_SMALL = [
    "train.epochs=1",
    "data.synthetic=true",
    "data.n_train=40",
    "data.n_validation=10",
    "data.n_test=10",
    "network.hidden=[32]",
]


def _run(pipeline: str, sets: list[str], out: Path) -> Path:
    args = ["run", str(ROOT / "pipelines" / pipeline), "--out", str(out), "--quiet"]
    for s in sets:
        args += ["--set", s]
    assert cli.main(args) == 0
    return out


@pytest.fixture(scope="module")
def yinyang(tmp_path_factory) -> Path:
    return _run("yinyang_synaptic.toml", ["train.epochs=1"], tmp_path_factory.mktemp("yy") / "run")


@pytest.fixture(scope="module")
def shd(tmp_path_factory) -> Path:
    return _run("shd.toml", SHD_SMALL, tmp_path_factory.mktemp("shd") / "run")


def _integers(values: list[float]) -> bool:
    return bool(values) and all(float(v).is_integer() for v in values)


def test_one_epoch_curves_show_their_point(yinyang: Path, shd: Path) -> None:
    for run in (yinyang, shd):
        axes = read_summary(run / "plots" / "curves.png")
        lines = [a for ax in axes for a in ax["artists"] if a["kind"] == "line"]
        assert len(lines) >= 4
        for line in lines:
            assert line["points"] == 1 and line["marker"] not in ("None", "", " "), line
        assert _integers(axes[0]["xticks"])


def test_time_units_follow_the_data_set(yinyang: Path, shd: Path) -> None:
    for run, unit in ((yinyang, TAU_S), (shd, "ms")):
        for name in ("raster", "delays"):
            labels = [ax["xlabel"] for ax in read_summary(run / "plots" / f"{name}.png")]
            assert labels and all(label.endswith(f"[{unit}]") for label in labels), (run, name, labels)
    assert read_summary(yinyang / "plots" / "output_times.png")[1]["ylabel"].endswith(f"[{TAU_S}]")
    assert "Times are in milliseconds." in (shd / "report.md").read_text()
    assert "Times are in units of tau_s." in (yinyang / "report.md").read_text()


def test_class_ticks_are_integers(yinyang: Path, shd: Path) -> None:
    heat, per_class = read_summary(yinyang / "plots" / "output_times.png")
    assert _integers(heat["xticks"]) and _integers(heat["yticks"]) and _integers(per_class["xticks"])
    (readout,) = read_summary(shd / "plots" / "readout_values.png")
    assert readout["xlabel"] == "readout unit" and readout["ylabel"] == "true class"
    assert _integers(readout["xticks"]) and _integers(readout["yticks"])


@pytest.mark.parametrize("k", [3, 35])
def test_output_time_plots_stay_legible_up_to_35_classes(tmp_path: Path, k: int) -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(k), 8)
    times = rng.uniform(1.0, 3.0, (labels.size, k))
    times[np.arange(labels.size), labels] -= 0.5
    times[rng.random(times.shape) < 0.1] = np.inf
    heat, per_class = read_summary(tmp_path / plot_output_times(times, labels, tmp_path, "ms"))
    for ticks in (heat["xticks"], heat["yticks"], per_class["xticks"]):
        assert _integers(ticks) and 2 <= len(ticks) <= 13
    # One marker series per role, not one histogram per class: the legend names the roles.
    assert per_class["legend"] == ["neuron of the true class", "earliest other neuron"]
    (ro,) = read_summary(tmp_path / plot_readout_values(rng.normal(size=(labels.size, k)), labels, tmp_path))
    assert _integers(ro["xticks"]) and len(ro["xticks"]) <= 13


def test_layers_are_numbered_the_same_everywhere(yinyang: Path, shd: Path) -> None:
    for run, names in (
        (yinyang, ["input", "layer 0 (hidden)", "layer 1 (output)"]),
        (shd, ["input", "layer 0 (hidden)"]),
    ):
        net = Model.load(run).network
        spikes = pl.read_parquet(run / "spikes_test.parquet")
        for k, layer in enumerate(net.layers):
            ids = spikes.filter(pl.col("layer") == k)["neuron"]
            assert ids.len() == 0 or ids.max() < layer.shape[0], "layer k of the file is network.layers[k]"
        assert set(spikes["layer"].unique().to_list()) <= set(range(len(net.layers)))
        raster = read_summary(run / "plots" / "raster.png")[0]
        assert [label.split("\n")[0] for label in raster["yticklabels"]] == names
        delays = read_summary(run / "plots" / "delays.png")[0]["legend"]
        assert delays[0] == f"into layer 0 (hidden), {net.layers[0].delay_kind}"
        assert "layer k is the population fed by `network.layers[k]`" in (run / "report.md").read_text()
    assert "recurrent in layer 0, synaptic" in read_summary(shd / "plots" / "delays.png")[0]["legend"]


def test_inspect_writes_its_figure_for_ttfs_and_multi_spike_runs(yinyang: Path, shd: Path, tmp_path: Path) -> None:
    out = tmp_path / "yy.png"
    assert cli.main(["inspect", str(yinyang), "--sample", "3", "--neurons", "0:5,1:2", "--out", str(out)]) == 0
    axes = read_summary(out)
    rasters, potentials = axes[:3], axes[3:]
    assert [ax["ylabel"] for ax in rasters] == ["input\nneuron", "layer 0 (hidden)\nneuron", "layer 1 (output)\nneuron"]
    assert len(potentials) == 2 and potentials[-1]["xlabel"] == f"time [{TAU_S}]"
    for ax in potentials:
        drawn = sum(a["points"] for a in ax["artists"] if a["label"] in ("V", "V after the first spike"))
        assert drawn >= 1500, "display grid plus arrivals"
        assert any(a["label"].startswith("threshold") for a in ax["artists"])

    # Multi-spike run, default neurons, default place (inside the run, under its lock).
    assert cli.main(["inspect", str(shd), "--sample", "1", "--split", "validation"]) == 0
    axes = read_summary(shd / "plots" / "inspect-validation-1.png")
    assert [ax["ylabel"] for ax in axes[:2]] == ["input\nneuron", "layer 0 (hidden)\nneuron"]
    assert axes[-1]["xlabel"] == "time [ms]"
    potentials = axes[2:]
    assert 2 <= len(potentials) <= 4
    assert not any(a["label"].startswith("threshold") for a in potentials[-1]["artists"]), "readout: no threshold"


def test_inspect_refuses_bad_requests(yinyang: Path, shd: Path, tmp_path: Path, capsys) -> None:
    cases = [
        (["--sample", "100000"], "out of range"),
        (["--sample", "0", "--neurons", "7:0"], "layer 7 does not exist"),
        (["--sample", "0", "--neurons", "0:999"], "neuron 999 does not exist in layer 0"),
        (["--sample", "0", "--neurons", "readout:0"], "no readout"),
        (["--sample", "0", "--neurons", "zero"], "not LAYER:NEURON"),
    ]
    for extra, message in cases:
        assert cli.main(["inspect", str(yinyang), *extra, "--out", str(tmp_path / "x.png")]) == 2
        assert message in capsys.readouterr().err
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"a user's file")
    assert cli.main(["inspect", str(yinyang), "--sample", "0", "--out", str(mine)]) == 2
    assert "not a figure delgrad wrote" in capsys.readouterr().err
    assert mine.read_bytes() == b"a user's file"
    assert cli.main(["inspect", str(tmp_path), "--sample", "0"]) == 2
