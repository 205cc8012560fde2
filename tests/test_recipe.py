"""The parts of the SHD/SSC reference recipe the trainer and the network builder carry: early
stopping (``train.patience``), the ease-in of the learning rate (``train.warmup_batches``),
separate initial recurrent delays (``network.recurrent_delay_range``), and the shipped files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import delgrad
import numpy as np
import pytest
from delgrad import pipeline
from delgrad.config import ConfigError, load_config, parse_config
from delgrad.data.encoding import encode_latency
from delgrad.train import Split, TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]


def ttfs_problem(seed: int = 0) -> tuple[delgrad.Network, Split]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(40, 3))
    spikes, n_in = encode_latency(x, bias_time=0.9)
    split = Split(delgrad.SpikeSet(spikes, 40), (x[:, 0] > 0.5).astype(np.int64))
    net = delgrad.Network.random([n_in, 10, 2], delgrad.Neuron(), seed=seed)
    return net, split


def test_patience_stops_when_the_watched_accuracy_stalls_and_a_resumed_run_stops_alike(tmp_path: Path) -> None:
    net, split = ttfs_problem()
    # A rate this small leaves every prediction as it is: the best epoch stays the first.
    cfg = TrainConfig(epochs=20, batch_size=20, lr=1e-14, lr_delay=0.0, patience=2, bump=0.0)
    trainer = Trainer(net, cfg)
    history = trainer.fit(split, {"validation": split}, tmp_path)
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert trainer.best_epoch == 1 and trainer.patience_exhausted()
    # From its last checkpoint a new trainer has nothing left to do.
    again = Trainer(ttfs_problem()[0], cfg)
    assert again.fit(split, {"validation": split}, tmp_path) == history
    # Without patience the same run trains every epoch.
    plain = Trainer(ttfs_problem()[0], dataclasses.replace(cfg, patience=0, epochs=5))
    assert len(plain.fit(split, {"validation": split})) == 5


def test_warmup_scales_the_first_updates_from_one_thousandth() -> None:
    net, split = ttfs_problem()
    ramp = 4
    cfg = TrainConfig(epochs=1, batch_size=40, lr=0.01, lr_delay=0.0, warmup_batches=ramp, bump=0.0, max_silent=1.0)
    trainer = Trainer(net, cfg)
    steps = []
    for _ in range(ramp + 1):
        before = net.layers[0].weights.copy()
        trainer.step(split, np.arange(40, dtype=np.uint32), 1.0)
        steps.append(np.abs(net.layers[0].weights - before).max())
    # Adam's first step moves every parameter with a gradient by the rate itself, so the first
    # update is 0.01 * 1e-3; after the ramp the full rate applies.
    assert steps[0] == pytest.approx(0.01 * 1e-3, rel=1e-6)
    assert trainer.warmup_scale() == 1.0
    assert steps[-1] > 10 * steps[0]


def test_recurrent_delays_have_their_own_initial_range() -> None:
    cfg = load_config(ROOT / "pipelines" / "shd.toml", ["network.hidden=[6]"])
    net = pipeline.build_network(cfg, 700, 20)
    assert np.all(net.recurrent[0].delays == 0.0)
    assert net.layers[0].delays.min() >= 0.0 and net.layers[0].delays.max() <= 150.0
    assert net.layers[0].delays.std() > 10.0
    # Without the key the recurrent delays share delay_range.
    cfg = load_config(ROOT / "pipelines" / "events.toml", ["network.hidden=[6]"])
    assert pipeline.build_network(cfg, 700, 20).recurrent[0].delays.max() > 10.0


def test_recipe_keys_are_checked() -> None:
    base = {"name": "x", "network": {"mode": "multi", "hidden": [4]}}
    with pytest.raises(ConfigError, match="recurrent_delay_range: applies to recurrent networks only"):
        parse_config({**base, "network": {**base["network"], "recurrent_delay_range": [0.0, 1.0]}})
    with pytest.raises(ConfigError, match=r"recurrent_delay_range: needs \[low, high\]"):
        parse_config({**base, "network": {**base["network"], "recurrent": True, "recurrent_delay_range": [2.0, 1.0]}})
    with pytest.raises(ConfigError, match="train.patience: early stopping needs train.select_on"):
        parse_config({**base, "train": {"patience": 3, "select_on": ""}})
    with pytest.raises(ConfigError, match="weight_mean: 3 values for 2 weight layers"):
        parse_config({**base, "network": {**base["network"], "weight_mean": [1.0, 2.0, 3.0]}})


def test_shipped_recipes_are_the_reference_ones() -> None:
    shd = load_config(ROOT / "pipelines" / "shd.toml")
    assert shd.network.hidden == [512] and shd.network.recurrent and shd.train.batch_size == 256
    assert shd.network.recurrent_delay_range == [0.0, 0.0] and shd.network.delay_range == [0.0, 150.0]
    assert shd.augment is not None and shd.augment.enabled and shd.augment.blend
    ssc = load_config(ROOT / "pipelines" / "ssc.toml")
    assert ssc.network.hidden == [1024, 1024] and not ssc.network.recurrent
    assert ssc.network.delay_range == [0.0, 50.0] and ssc.train.batch_size == 256
    # Their weights divided by tau_m (mlGeNN integrates tau_m dV/dt = -V + I).
    assert shd.network.weight_mean[0] == pytest.approx(0.03 / shd.network.tau_m)
    assert shd.train.lr == pytest.approx(0.001 / shd.network.tau_m)


def test_512_recurrent_hidden_neurons_train_on_the_stand_in(tmp_path: Path) -> None:
    sets = [
        "data.synthetic=true",
        "data.n_train=8",
        "data.n_validation=4",
        "data.n_test=4",
        "data.spikes_per_sample=600",
        "data.duration=300.0",
        "network.t_end=400.0",
        "network.tau_w=400.0",
        "train.epochs=1",
        "train.batch_size=8",
        "augment.enabled=false",
    ]
    run = pipeline.run(ROOT / "pipelines" / "shd.toml", sets, tmp_path / "run", progress=False)
    model = delgrad.Model.load(run)
    assert model.network.sizes == [700, 512, 20]
    assert model.network.recurrent[0].weights.shape == (512, 512)
