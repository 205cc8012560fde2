"""The training pipeline end to end: run directory contents, determinism, resume, Model API,
CLI, and the host-side optimisation pieces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import delgrad
import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from delgrad import pipeline
from delgrad.config import SPIKING_AUDIO
from delgrad.losses import LossConfig, spike_time_loss
from delgrad.optim import Adam, DelayParam
from delgrad.rundir import RunDir
from delgrad.train import Split, TrainConfig, Trainer

ROOT = Path(__file__).resolve().parent.parent
SYN = ROOT / "pipelines" / "yinyang_synaptic.toml"
FAST = ["train.epochs=4", "train.checkpoint_every=2"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return pipeline.run(SYN, FAST, tmp_path_factory.mktemp("run") / "r", progress=False)


def test_run_directory_holds_everything(run_dir: Path) -> None:
    for f in [
        "config.toml",
        "metrics.parquet",
        "spikes_test.parquet",
        "report.md",
        "model/network.npz",
        "model/model.json",
        "data/spikes.parquet",
        "data/samples.parquet",
    ]:
        assert (run_dir / f).exists(), f
    for png in ["curves", "classification_map", "output_times", "raster", "delays"]:
        assert (run_dir / "plots" / f"{png}.png").stat().st_size > 5000
    m = pl.read_parquet(run_dir / "metrics.parquet")
    assert m["epoch"].to_list() == [1, 2, 3, 4]
    for col in ["train_loss", "train_acc", "validation_acc", "test_acc", "validation_silent_l0", "seconds"]:
        assert col in m.columns
    assert m["train_acc"][-1] > 0.6, "four epochs already learn a good part of Yin-Yang"
    spikes = pq.read_table(run_dir / "spikes_test.parquet")
    assert spikes.schema.names == ["sample", "neuron", "time", "layer"]
    layers = set(spikes.column("layer").to_pylist())
    assert layers == {0, 1}
    assert "| test |" in (run_dir / "report.md").read_text()


def test_same_seed_same_result_and_resume_matches(run_dir: Path, tmp_path: Path) -> None:
    ref = pl.read_parquet(run_dir / "metrics.parquet").drop("seconds")
    ref_net = delgrad.Model.load(run_dir).network

    # Interrupt after epoch 3 (the last checkpoint is epoch 2), then start again in place.
    out = tmp_path / "interrupted"

    class Stop(Exception):
        pass

    def stop_after_3(row):
        if row["epoch"] == 3:
            raise Stop

    cfg = pipeline.load_config(SYN, FAST)
    with pytest.raises(Stop), RunDir.open(out, cfg):
        data_dir = pipeline.encode(cfg, out)
        train, _, n_in = pipeline.load_split(data_dir, "train")
        val, _, _ = pipeline.load_split(data_dir, "validation")
        test, _, _ = pipeline.load_split(data_dir, "test")
        net = pipeline.build_network(cfg, n_in, 3)
        Trainer(net, cfg.train).fit(train, {"validation": val, "test": test}, run_dir=out, on_epoch=stop_after_3)
    assert (out / "checkpoint" / "state.npz").exists()
    resumed = pipeline.run(SYN, FAST, out, progress=False)
    got = pl.read_parquet(resumed / "metrics.parquet").drop("seconds")
    assert got.equals(ref), "a resumed run ends exactly where an uninterrupted one does"
    net = delgrad.Model.load(resumed).network
    for a, b in zip(net.layers, ref_net.layers):
        np.testing.assert_array_equal(a.weights, b.weights)
        np.testing.assert_array_equal(a.delays, b.delays)


def test_model_predict_takes_xy_or_published_rows(run_dir: Path) -> None:
    model = delgrad.Model.load(run_dir)
    from delgrad.data.yinyang import yinyang

    x, y = yinyang(300, 40)
    p4 = model.predict(x)
    np.testing.assert_array_equal(p4, model.predict(x[:, :2]))
    pl.read_parquet(run_dir / "metrics.parquet")
    assert p4.shape == (300,) and set(np.unique(p4)) <= {-1, 0, 1, 2}
    assert np.mean(p4 == y) > 0.5
    with pytest.raises(ValueError, match="expected shape"):
        model.predict(np.zeros((3, 3)))


def test_cli_evaluate_and_set(run_dir: Path, tmp_path: Path) -> None:
    exe = [sys.executable, "-m", "delgrad.cli"]
    r = subprocess.run([*exe, "evaluate", str(run_dir)], capture_output=True, text=True, check=True)
    assert "test_acc" in r.stdout
    r = subprocess.run(
        [
            *exe,
            "run",
            str(SYN),
            "--set",
            "train.epochs=1",
            "--set",
            "network.hidden=[7]",
            "--quiet",
            "--out",
            str(tmp_path / "cli"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert delgrad.Model.load(tmp_path / "cli").network.sizes == [5, 7, 3]
    assert "hidden = [7]" in (tmp_path / "cli" / "config.toml").read_text()
    r = subprocess.run(
        [*exe, "run", str(SYN), "--set", "data.dataset=mnist", "--out", str(tmp_path / "bad")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "data.dataset: expected one of 'yinyang'" in r.stderr and "'mnist'" in r.stderr
    assert "Traceback" not in r.stderr


def test_every_shipped_pipeline_parses_and_runs_one_epoch(tmp_path: Path) -> None:
    for toml in sorted((ROOT / "pipelines").glob("*.toml")):
        cfg = pipeline.load_config(toml)
        if cfg.data.dataset == "digits":
            pytest.importorskip("sklearn")
        extra = []
        if cfg.data.dataset in SPIKING_AUDIO:  # no HDF5 files here: tiny stand-in
            extra = [
                "data.synthetic=true",
                "data.n_train=20",
                "data.n_validation=10",
                "data.n_test=10",
                "data.spikes_per_sample=300",
                f"network.hidden={[8] * len(cfg.network.hidden)}",
            ]
        d = pipeline.run(toml, ["train.epochs=1", *extra], tmp_path / toml.stem, progress=False)
        assert (d / "report.md").exists(), toml.name


def test_bumping_wakes_a_silent_network() -> None:
    rng = np.random.default_rng(0)
    from delgrad.data.encoding import encode_latency

    x = rng.uniform(size=(60, 4))
    spikes, n_in = encode_latency(x, bias_time=0.9)
    net = delgrad.Network.random([n_in, 8, 3], delgrad.Neuron(), weight_mean=0.0, weight_std=0.01, seed=1)
    split = Split(delgrad.SpikeSet(spikes, 60), rng.integers(0, 3, 60))
    tr = Trainer(net, TrainConfig(epochs=30, batch_size=20, bump=0.05))
    assert np.isinf(net.forward(split.spikes).first_times(0)).all()
    tr.fit(split, {})
    assert not np.isinf(net.forward(split.spikes).first_times(0)).all()


def test_sigmoid_delay_parametrisation_chain_rule() -> None:
    p = DelayParam("sigmoid", 0.0, 2.0)
    raw = np.array([-1.0, 0.0, 2.5])
    h = 1e-6
    num = (p.to_delay(raw + h) - p.to_delay(raw - h)) / (2 * h)
    np.testing.assert_allclose(p.grad_raw(raw, np.ones(3)), num, rtol=1e-7)
    np.testing.assert_allclose(p.to_delay(p.to_raw(np.array([0.3, 1.7]))), [0.3, 1.7], rtol=1e-9)


def test_adam_matches_reference_formula() -> None:
    w = np.array([1.0, -2.0])
    opt = Adam([0.1])
    g = np.array([0.5, -0.25])
    opt.step([w], [g])
    # First Adam step moves every coordinate by lr * sign(g) (bias-corrected m/sqrt(v) = g/|g|).
    np.testing.assert_allclose(w, [0.9, -1.9], rtol=1e-6)


def test_loss_wrapper_reports_bad_labels() -> None:
    with pytest.raises(ValueError, match="label 3 at sample 1"):
        spike_time_loss(np.ones((2, 3)), [0, 3], LossConfig())
    r = spike_time_loss([[1.0, np.inf, 2.0]], [1], LossConfig(kind="ce"))
    assert np.isfinite(r.loss) and r.grad[0, 1] == 0.0 and r.predictions[0] == 0
