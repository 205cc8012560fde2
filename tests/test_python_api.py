"""Python first: ``delgrad.fit`` writes the same run directory as the CLI (checkpoints, resume,
report), predictions for every network kind, live metrics and TensorBoard logs."""

from __future__ import annotations

import json
from pathlib import Path

import delgrad
import numpy as np
import polars as pl
import pytest
from delgrad import pipeline
from delgrad.data.encoding import encode_latency

ROOT = Path(__file__).resolve().parent.parent


def toy_data(n: int, seed: int) -> tuple:
    """Latency-coded 2-class points: class = x > 0.5."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, 2))
    spikes, n_inputs = encode_latency(x, bias_time=0.9)
    return spikes, (x[:, 0] > 0.5).astype(np.int64), n_inputs


def test_submodules_come_with_import_delgrad() -> None:
    assert delgrad.train.Trainer is delgrad.Trainer
    assert delgrad.multi.MultiNetwork is delgrad.MultiNetwork
    assert delgrad.hardware.HardwareLoop is not None and delgrad.config.PipelineConfig is not None


def test_fit_in_memory_and_into_a_run_directory(tmp_path: Path) -> None:
    train, val, test = toy_data(200, 0), toy_data(60, 1), toy_data(60, 2)
    n_inputs = train[2]
    neuron = delgrad.Neuron(tau_m=2.0, tau_s=1.0, theta=1.0)
    config = {"epochs": 4, "batch_size": 50, "lr": 0.01, "lr_delay": 0.01, "delay": {"high": 2.0}}

    net = delgrad.Network.random([n_inputs, 10, 2], neuron, seed=0)
    memory = delgrad.fit(net, train[:2], validation=val[:2], config=config, progress=False)
    assert memory.run_dir is None and memory.history["epoch"].to_list() == [1, 2, 3, 4]

    net = delgrad.Network.random([n_inputs, 10, 2], neuron, seed=0)
    result = delgrad.fit(
        net, train[:2], validation=val[:2], test=test[:2], config=config, run_dir=tmp_path / "fit", progress=False
    )
    run = tmp_path / "fit"
    for name in ("run.json", "config.toml", "checkpoint/state.npz", "metrics.parquet", "model/model.json",
                 "predictions.parquet", "spikes_test.parquet", "report.md", "plots/curves.png"):  # fmt: skip
        assert (run / name).exists(), name
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    # Same trainer, same seed: the run directory's metrics are the in-memory ones.
    columns = ["epoch", "train_loss", "train_acc", "validation_acc"]
    assert result.history.select(columns).equals(memory.history.select(columns))
    model = delgrad.Model.load(run)
    np.testing.assert_array_equal(model.network.layers[0].weights, result.network.layers[0].weights)
    # Predictions from a spike table; the saved predictions agree.
    predicted = model.predict(test[0], n_samples=60)
    saved = pl.read_parquet(run / "predictions.parquet")
    np.testing.assert_array_equal(saved["prediction"].to_numpy(), predicted)
    assert saved["label"].to_list() == test[1].tolist()
    assert saved["output_times"].to_numpy().shape == (60, 2)
    with pytest.raises(ValueError, match="has no encoder"):
        model.predict(np.zeros((3, 2)))

    # The same call again: finished, nothing to do; other arguments into it: refused.
    before = (run / "metrics.parquet").stat().st_mtime_ns
    again = delgrad.fit(
        delgrad.Network.random([n_inputs, 10, 2], neuron, seed=0), train[:2], validation=val[:2], test=test[:2],
        config=config, run_dir=run, progress=False,
    )  # fmt: skip
    assert (run / "metrics.parquet").stat().st_mtime_ns == before and again.history.equals(result.history)
    with pytest.raises(delgrad.rundir.RunDirError, match="different configuration"):
        delgrad.fit(
            delgrad.Network.random([n_inputs, 10, 2], neuron, seed=1), train[:2], validation=val[:2],
            test=test[:2], config=config, run_dir=run, progress=False,
        )  # fmt: skip


def test_fit_checks_its_config_like_a_pipeline_file(tmp_path: Path) -> None:
    train = toy_data(20, 0)
    net = delgrad.Network.random([train[2], 4, 2], delgrad.Neuron(), seed=0)
    with pytest.raises(delgrad.ConfigError, match="train.epocs: unknown key"):
        delgrad.fit(net, train[:2], config={"epocs": 3})
    with pytest.raises(ValueError, match="pass validation= and test="):
        delgrad.fit(net, train[:2], config={"epochs": 1}, run_dir=tmp_path / "r")


def test_multi_spike_runs_predict_and_save_readout_values(tmp_path: Path) -> None:
    run = pipeline.run(ROOT / "pipelines" / "temporal.toml", ["train.epochs=2"], tmp_path / "t", progress=False)
    model = delgrad.Model.load(run)
    assert model.kind == "multi"
    saved = pl.read_parquet(run / "predictions.parquet")
    assert saved.columns == ["sample", "label", "prediction", "correct", "readout_values"]
    assert saved["readout_values"].to_numpy().shape == (600, 6)
    test = pipeline.load_split(run / "data", "test")[0]
    np.testing.assert_array_equal(model.predict(test.spikes), saved["prediction"].to_numpy())
    spikes = test.spikes.select()  # the test split as one pyarrow table
    np.testing.assert_array_equal(model.predict(spikes, n_samples=len(test)), saved["prediction"].to_numpy())
    with pytest.raises(delgrad.ShapeError, match="n_samples is required"):
        model.predict(spikes)
    # Features go through the run's encoder, as for TTFS runs.
    from delgrad.data.temporal import temporal_patterns

    x, y = temporal_patterns(50, seed=7)
    assert np.mean(model.predict(x) == y) > 1 / 6


def read_events(directory: Path) -> list[tuple[str, list]]:
    """Every event file below ``directory`` (TFRecord framing), as (file name, events)."""
    import struct

    from tensorboardX.proto import event_pb2

    files = []
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data, events, at = path.read_bytes(), [], 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[at + 12 : at + 12 + length])
            events.append(event)
            at += 12 + length + 4
        files.append((path.name, events))
    return files


def test_tensorboard_logs_every_epoch_and_a_resume_purges_what_it_redoes(tmp_path: Path) -> None:
    pytest.importorskip("tensorboardX")
    from delgrad.rundir import RunDir
    from delgrad.train import Trainer

    sets = ["train.epochs=4", "log.tensorboard=true"]
    cfg = pipeline.load_config(ROOT / "pipelines" / "temporal.toml", sets)
    out = tmp_path / "run"

    class Stop(Exception):
        pass

    def stop(row: dict) -> None:
        if row["epoch"] == 2:
            raise Stop

    with RunDir.open(out, cfg), pytest.raises(Stop):  # two epochs, checkpointed, then "interrupted"
        data_dir = pipeline.encode(cfg, out)
        splits = {name: pipeline.load_split(data_dir, name)[0] for name in ("train", "validation", "test")}
        net = pipeline.build_network(cfg, 3, 6)
        evals = {"validation": splits["validation"], "test": splits["test"]}
        Trainer(net, cfg.train).fit(splits["train"], evals, out, on_epoch=stop)
    pipeline.run_config(cfg, out, progress=False, say=lambda text: None)
    files = read_events(out / "tensorboard")
    assert len(files) == 1, "the interrupted part never reached the pipeline's writer"
    steps = [e.step for e in files[0][1] if any(v.tag == "train/loss" for v in e.summary.value)]
    assert steps == [3, 4], "the resumed run logs the epochs it trains"
    purge = [e for e in files[0][1] if e.HasField("session_log")]
    assert purge and purge[0].step == 3 and purge[0].session_log.status == purge[0].session_log.START
    tags = {v.tag for e in files[0][1] for v in e.summary.value}
    assert {"train/loss", "train/acc", "validation/acc", "test/acc"} <= tags
