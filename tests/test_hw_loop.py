"""Training in the loop through a real hw_daemon process: the hardware forward, a daemon killed
and restarted mid-training, and the yinyang_hw pipeline end to end.

Every daemon here is started by the test on loopback and stopped by its pid.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import delgrad
import numpy as np
import polars as pl
import pytest
from delgrad import pipeline
from delgrad.config import ConfigError, parse_config
from delgrad.data.encoding import LatencyEncoder, spike_batch
from delgrad.data.yinyang import yinyang_splits
from delgrad.hardware import HardwareClient, HardwareLoop, start_daemon
from delgrad.train import Split, TrainConfig, Trainer, evaluate

ROOT = Path(__file__).resolve().parents[1]
NEURON = delgrad.Neuron(tau_m=1.0, tau_s=1.0, theta=2.6)


def yinyang(split: str, n: int) -> Split:
    x, y = yinyang_splits()[split]
    spikes, _ = LatencyEncoder(t_early=0.15, t_late=2.0, bias_time=None, replicate=5)(x[:n])
    return Split(delgrad.SpikeSet(spikes, n), np.asarray(y[:n], np.int64))


def hw_net(seed: int = 0) -> delgrad.Network:
    return delgrad.Network.random(
        [20, 30, 3],
        NEURON,
        delay_kind="axonal",
        weight_mean=(0.6, 0.6),
        weight_std=(0.4, 0.4),
        delay_range=(2.5, 3.0),  # within the default profile's [2.0, 3.5]
        seed=seed,
    )


def train_config(**kw) -> TrainConfig:
    base = dict(
        epochs=3,
        batch_size=20,
        lr=[0.003, 0.003],
        lr_delay=[0.003, 0.003],
        seed=1,
        select_on=None,
        checkpoint_every=100,
    )
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def ideal_daemon(tmp_path_factory):
    d = start_daemon(chip_seed=0, args=["--ideal"], log_path=tmp_path_factory.mktemp("ideal") / "d.log")
    yield d
    assert d.stop() == 0, d.log()


def test_loop_forward_is_the_realised_network_on_an_ideal_chip(ideal_daemon):
    """With no noise, mismatch or time quantisation, the recorded spikes are exactly the realised
    (6-bit) network's; selections longer than max_batch come back in one trace, in order."""
    data = yinyang("train", 57)
    net = hw_net()
    sel = np.array([5, 3, 50, 0, 11, 42, 7], np.uint32)
    with HardwareClient(ideal_daemon.endpoint, timeout=10, retries=0) as c:
        loop = HardwareLoop(c, max_batch=3)
        realised = loop.realised(net)
        for select in (sel, None):
            got = loop(net, data.spikes, select)
            want = realised.forward(data.spikes, select=select)
            for index in range(2):
                assert got.spikes(index).equals(want.spikes(index))
        assert loop.counters["configures"] == 1  # unchanged parameters are not sent again
        assert loop.counters["runs"] == 3 + 19  # 7 samples in pieces of 3, then 57
        assert not np.array_equal(realised.layers[0].weights, net.layers[0].weights)
        # The default chip profile, DelGrad's: weight scale 30 (1/30 steps within +-2.1).
        np.testing.assert_allclose(realised.layers[0].weights, np.rint(net.layers[0].weights * 30) / 30)


def test_loop_evaluation_uses_the_hardware(ideal_daemon):
    data = yinyang("validation", 100)
    net = hw_net()
    with HardwareClient(ideal_daemon.endpoint, timeout=10, retries=0) as c:
        loop = HardwareLoop(c)
        on_hw = evaluate(net, data, train_config().loss, loop)
        realised = evaluate(loop.realised(net), data, train_config().loss)
    assert on_hw.accuracy == realised.accuracy and on_hw.loss == realised.loss
    np.testing.assert_array_equal(on_hw.predictions, realised.predictions)


def _train(endpoint: str, data: Split, *, kill=None) -> tuple[Trainer, HardwareLoop, dict]:
    with HardwareClient(endpoint, timeout=0.5, retries=40) as c:
        loop = HardwareLoop(c, seed=3)
        calls = {"train": 0}

        def forward(net, spikes, select):
            calls["train"] += 1
            if kill is not None and calls["train"] == kill[0]:
                kill[1]()
            return loop(net, spikes, select)

        trainer = Trainer(hw_net(), train_config(), forward=forward)
        trainer.fit(data, {})
        return trainer, loop, {**calls, **c.stats}


def test_daemon_sigkilled_mid_training_every_batch_applied_once(tmp_path):
    """The daemon dies (SIGKILL) while training and comes back on the same endpoint: the
    client retries with the same ids, restores the lost configuration, and training ends with
    parameters bit-identical to an uninterrupted run -- each batch applied exactly once."""
    data = yinyang("train", 200)  # 3 epochs x 10 batches
    ref_daemon = start_daemon(chip_seed=2, log_path=tmp_path / "ref.log")
    try:
        ref, ref_loop, ref_stats = _train(ref_daemon.endpoint, data)
    finally:
        assert ref_daemon.stop() == 0

    d = start_daemon(chip_seed=2, log_path=tmp_path / "first.log")
    endpoint, restarted = d.endpoint, []

    def crash() -> None:
        # Killed from another thread while the training thread's next request is on its way.
        def kill_then_restart() -> None:
            time.sleep(0.01)
            d.kill()
            time.sleep(0.8)  # the client times out at least once meanwhile
            restarted.append(start_daemon(endpoint, chip_seed=2, log_path=tmp_path / "second.log"))

        t = threading.Thread(target=kill_then_restart)
        t.start()
        crash.thread = t  # type: ignore[attr-defined]

    try:
        got, loop, stats = _train(endpoint, data, kill=(14, crash))
        crash.thread.join(timeout=30)  # type: ignore[attr-defined]
        assert not d.alive() and restarted and restarted[0].alive()
    finally:
        d.stop()
        for r in restarted:
            assert r.stop() == 0, r.log()

    assert stats["train"] == ref_stats["train"] == 30
    assert stats["reconnects"] >= 1  # timed out on the dead daemon and came back
    assert got.adam.t == ref.adam.t  # the same number of applied optimiser steps
    for a, b in zip(got.net.layers, ref.net.layers):
        np.testing.assert_array_equal(a.weights, b.weights)
        np.testing.assert_array_equal(a.delays, b.delays)
    assert loop.counters["runs"] == ref_loop.counters["runs"] == 30


def test_noise_makes_hardware_and_simulation_differ_but_runs_reproduce(tmp_path):
    data = yinyang("test", 200)
    d = start_daemon(chip_seed=4, log_path=tmp_path / "d.log")
    try:
        with HardwareClient(d.endpoint, timeout=10, retries=0) as c:
            loop = HardwareLoop(c, seed=0)
            net = hw_net()
            a = loop(net, data.spikes, None)
            b = loop(net, data.spikes, None)
            other_seed = HardwareLoop(c, seed=1)(net, data.spikes, None)
            sim = loop.realised(net).forward(data.spikes)
    finally:
        assert d.stop() == 0
    assert a.spikes(1).equals(b.spikes(1))  # same config + samples + seed: same noise draw
    ta, to, ts = (t.first_times(1) for t in (a, other_seed, sim))
    both = np.isfinite(ta) & np.isfinite(ts)
    assert 0 < np.mean(np.abs(ta - ts)[both]) < 0.5  # mismatch moves spikes, a little
    assert not np.array_equal(ta, to)


def test_yinyang_hw_pipeline_trains_through_its_own_daemon(tmp_path):
    out = tmp_path / "run"
    run_dir = pipeline.run(
        ROOT / "pipelines" / "yinyang_hw.toml", ["train.epochs=2", "hardware.chip_seed=1"], out, progress=False
    )
    hw = json.loads((run_dir / "hardware.json").read_text())
    assert hw["backend"]["backend"] == "emulator"
    assert hw["backend"]["capabilities"]["chip_seed"] == 1
    assert hw["counters"]["runs"] >= 2 * 125  # every training batch ran on the daemon
    assert hw["counters"]["dropped_inputs"] == 0
    metrics = pl.read_parquet(run_dir / "metrics.parquet")
    assert metrics.height == 2
    # Learning happened on the hardware: above chance (1/3) after two epochs, and the saved
    # model (best validation epoch) measured on the hardware is the one the metrics recorded.
    best = metrics.sort("validation_acc", descending=True).row(0, named=True)
    assert hw["accuracy"]["validation"]["acc"] == best["validation_acc"] > 0.5
    assert hw["accuracy"]["test"]["acc"] == best["test_acc"]
    assert hw["backend"]["capabilities"]["profile"] == "delgrad"  # DelGrad's published chip
    report = (run_dir / "report.md").read_text()
    assert "Trained in the loop on `emulator`" in report and "chip profile `delgrad`" in report
    assert f"| test | {100 * best['test_acc']:.2f} % |" in report
    # Hardware and simulation are labelled, the recorded spikes saved, the plot side by side.
    assert "| split | accuracy (hardware) |" in report and "| split | accuracy (simulation) |" in report
    assert "![Hardware and simulation, side by side (test set)](plots/hardware_vs_simulation.png)" in report
    assert (run_dir / "plots" / "hardware_vs_simulation.png").stat().st_size > 10_000
    recorded = pl.read_parquet(run_dir / "spikes_test_hw.parquet")
    assert recorded.columns == ["sample", "neuron", "time", "layer"]
    assert recorded["sample"].max() == 999 and set(recorded["layer"].unique()) == {0, 1}
    # Every trained delay is realisable (sigmoid parametrisation into [2.0, 3.5]).
    model = delgrad.Model.load(run_dir)
    assert all(2.0 <= layer.delays.min() and layer.delays.max() <= 3.5 for layer in model.network.layers)
    assert hw["realised"]["layers"][0]["delays_clipped"] == 0
    # The daemon the pipeline started is gone (stopped by its pid).
    log = (run_dir / "hw_daemon.log").read_text()
    assert "shutdown" in log.lower() or "stopp" in log.lower()


def test_min_slope_bounds_what_off_model_spikes_contribute():
    """A recorded spike later than the model's (a chip threshold above theta) can sit where the
    host's V' is negative; the default floor then yields ~1e12-sized gradients, ``min_slope``
    bounds them, and exact spike times (V' above the floor) are unaffected."""
    net = delgrad.Network.random(
        [3, 2],
        delgrad.Neuron(tau_m=1.0, tau_s=1.0, theta=1.0),
        delay_kind="none",
        weight_mean=2.5,
        weight_std=0.1,
        seed=0,
    )
    x = spike_batch([0, 0, 0], [0, 1, 2], [0.0, 0.1, 0.2])
    exact = net.forward(x, n_samples=1)
    g = np.ones((1, 2))
    default = net.backward(x, exact, g)
    floored = net.backward(x, exact, g, min_slope=1e-3)
    for a, b in zip(default.layers, floored.layers):
        np.testing.assert_array_equal(a[0], b[0])

    late = exact.first_times(0) + 3.0  # far past the PSP peak: the model's V' < 0 there
    rec = delgrad.Trace.from_tables([spike_batch([0, 0], [0, 1], late[0])], [2], 1)
    huge = net.backward(x, rec, g).layers[0][0]
    small = net.backward(x, rec, g, min_slope=0.2).layers[0][0]
    smaller = net.backward(x, rec, g, min_slope=0.4).layers[0][0]
    assert np.abs(huge).max() > 1e9
    assert 0 < np.abs(small).max() < 100
    np.testing.assert_allclose(smaller, small / 2)  # the floor is the slope used: g * K / floor
    with pytest.raises(delgrad.ParameterError, match="min_slope"):
        net.backward(x, rec, g, min_slope=0.0)


def test_spike_set_select_renumbers_and_checks_indices():
    x = spike_batch([0, 0, 1, 2, 2], [0, 1, 0, 1, 0], [0.1, 0.2, 0.3, 0.4, 0.5])
    s = delgrad.SpikeSet(x, 4)
    got = s.select(np.array([2, 3, 0], np.uint32)).to_pydict()
    assert got == {"sample": [0, 0, 2, 2], "neuron": [1, 0, 0, 1], "time": [0.4, 0.5, 0.1, 0.2]}
    assert s.select().num_rows == 5
    with pytest.raises(delgrad.ShapeError, match="sample 4 at position 1"):
        s.select(np.array([0, 4], np.uint32))


def test_pipeline_hardware_table_passes_cpus_and_keep_awake_to_its_daemon(tmp_path):
    cpu = min(os.sched_getaffinity(0))
    cfg = parse_config({"hardware": {"daemon_cpus": [cpu], "keep_awake": True}, "train": {"seed": 0}})
    with pipeline.hardware_loop(cfg, tmp_path) as loop:
        st = loop.client.status()
        pid = st["pid"]
        status_lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        assert f"Cpus_allowed_list:\t{cpu}" in status_lines
    log = (tmp_path / "hw_daemon.log").read_text()
    assert f"pinned to CPUs [{cpu}]" in log and f"keeping CPUs [{cpu}] awake" in log
    assert "stopped" in log
    with pytest.raises(ConfigError, match=r"hardware.daemon_cpu: unknown key \(valid keys under \[hardware\]"):
        parse_config({"hardware": {"daemon_cpu": 1}})
