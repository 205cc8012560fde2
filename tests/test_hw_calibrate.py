"""``delgrad calibrate``: threshold factors and a time offset fitted to recorded spikes by
exact gradients; recordings made on the emulator with known values are recovered, held-out
recordings predicted better, and the emulator loads the profile it writes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import delgrad
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from delgrad.calibrate import CalibrationConfig, calibrate, prediction_rmse, scaled
from delgrad.cli import main
from delgrad.data.encoding import LatencyEncoder
from delgrad.data.yinyang import yinyang_splits
from delgrad.hardware import replicate_inputs

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hw_daemon.backends.emulator import EmulatorBackend  # noqa: E402
from hw_daemon.profiles import load_profile  # noqa: E402

N = 400
OFFSET = 0.3


@pytest.fixture(scope="module")
def recording():
    """A network realised on an emulated chip whose thresholds and latency are known: a fit
    half (samples 0..N/2) and a held-out half."""
    net = delgrad.Network.random(
        [20, 30, 3],
        delgrad.Neuron(1.0, 1.0, 2.6),
        delay_kind="axonal",
        weight_mean=(0.6, 0.6),
        weight_std=(0.4, 0.4),
        delay_range=(2.5, 3.0),
        seed=3,
    )
    x, _ = yinyang_splits()["test"]
    channels, _ = LatencyEncoder()(x[:N])
    rng = np.random.default_rng(0)
    true = [1 + rng.normal(0, 0.05, 30), 1 + rng.normal(0, 0.05, 3)]
    # Run-to-run noise and jitter off: what is fitted is exactly what the chip holds.
    params = load_profile(
        {
            "layers": [{"theta_factor": list(f)} for f in true],
            "time_offset": OFFSET,
            "threshold_noise_std": 0.0,
            "delay_jitter_std": 0.0,
        }
    )
    emu = EmulatorBackend(chip_seed=0, params=params)
    cfg = emu.configure(net, input_replication=5)
    out = emu.run(cfg, channels, N, seed=1)
    return cfg.network, replicate_inputs(channels, 4, 5), out.layers[-1], true


def test_factors_and_offset_are_recovered(recording):
    net, inputs, recorded, true = recording
    res = calibrate(net, inputs, recorded, N, CalibrationConfig(steps=250))
    assert res.time_offset == pytest.approx(OFFSET, abs=0.01)
    hidden, output = (np.abs(f - t) for f, t in zip(res.theta_factor, true))
    spread = [np.mean(np.abs(t - 1)) for t in true]  # the error of not calibrating: 0.032, 0.023
    # Seen only through the output layer's spikes on the 8 ns event clock, a hidden neuron is
    # pinned down as far as it shapes output spikes (median error 0.010 here, 2.8 s).
    assert np.median(hidden) < 0.4 * spread[0] and np.max(output) < 0.75 * spread[1]
    assert res.rmse_after < res.rmse_before / 50


def test_held_out_recordings_are_predicted_better(recording):
    net, inputs, recorded, _ = recording
    res = calibrate(net, inputs, recorded, N, CalibrationConfig(steps=100), fit=np.arange(N // 2, dtype=np.uint32))
    held = np.arange(N // 2, N, dtype=np.uint32)
    sub_in = delgrad.SpikeSet(inputs, N).select(held)
    sub_rec = delgrad.SpikeSet(recorded, N).select(held)
    before = prediction_rmse(net, sub_in, sub_rec, len(held))
    after = prediction_rmse(net, sub_in, sub_rec, len(held), res)
    assert after < before / 10


def test_dT_dtheta_from_weight_gradients_matches_finite_differences(recording):
    """The identity the fit rests on: threshold theta f_j == weights w_j / f_j."""
    net, inputs, _, _ = recording
    spikes = delgrad.SpikeSet(inputs, N)
    f = [np.ones(30), np.ones(3)]
    base = scaled(net, f).forward(spikes, select=np.arange(20, dtype=np.uint32))
    t0 = base.first_times(1)
    g = np.zeros_like(t0)
    g[np.isfinite(t0)] = 1.0
    grads = scaled(net, f).backward(spikes, base, g, select=np.arange(20, dtype=np.uint32))
    j = 1
    analytic = -np.sum(net.layers[1].weights[j] * grads.layers[1][0][j])
    h = 1e-6
    f_plus, f_minus = [np.ones(30), np.ones(3)], [np.ones(30), np.ones(3)]
    f_plus[1][j] += h
    f_minus[1][j] -= h
    tp = scaled(net, f_plus).forward(spikes, select=np.arange(20, dtype=np.uint32)).first_times(1)
    tm = scaled(net, f_minus).forward(spikes, select=np.arange(20, dtype=np.uint32)).first_times(1)
    ok = np.isfinite(tp[:, j]) & np.isfinite(tm[:, j])
    numeric = np.sum((tp[ok, j] - tm[ok, j]) / (2 * h))
    assert analytic == pytest.approx(numeric, rel=1e-5)
    # And the same neuron with a true threshold theta * (1 + h) spikes where the scaled one does.
    thr = delgrad.Network(
        [net.layers[0], delgrad.Layer(net.layers[1].weights, net.layers[1].delays, "axonal")],
        delgrad.Neuron(1.0, 1.0, 2.6 * (1 + h)),
    )
    np.testing.assert_allclose(
        thr.forward(spikes, select=np.arange(20, dtype=np.uint32)).first_times(1),
        scaled(net, [np.full(30, 1 + h), np.full(3, 1 + h)])
        .forward(spikes, select=np.arange(20, dtype=np.uint32))
        .first_times(1),
        rtol=1e-12,
    )


def test_cli_writes_a_profile_the_emulator_loads(recording, tmp_path, capsys):
    net, inputs, recorded, _ = recording
    run = tmp_path / "run"
    delgrad.Model(net, LatencyEncoder(replicate=5), "yinyang", 4).save(run)
    pq.write_table(pa.table(inputs), tmp_path / "in.parquet")
    pq.write_table(pa.table(recorded), tmp_path / "rec.parquet")
    argv = [
        "calibrate",
        str(run),
        "--inputs",
        str(tmp_path / "in.parquet"),
        "--recorded",
        str(tmp_path / "rec.parquet"),
    ]
    assert main([*argv, "--out", str(tmp_path / "chip.json"), "--steps", "60"]) == 0
    assert "time offset +0.2" in capsys.readouterr().out
    profile = json.loads((tmp_path / "chip.json").read_text())
    assert set(profile) >= {"layers", "time_offset", "base", "calibration"}
    assert [len(layer["theta_factor"]) for layer in profile["layers"]] == [30, 3]
    params = load_profile(tmp_path / "chip.json")
    assert params.time_offset == profile["time_offset"] and params.theta_factor is not None
    # An existing file is never overwritten.
    assert main([*argv, "--out", str(tmp_path / "chip.json")]) == 2
    assert "exists" in capsys.readouterr().err
    # A profile calibrated for other layer sizes is refused at configure, naming both.
    other = delgrad.Network.random([20, 10, 3], net.neuron, delay_kind="axonal", delay_range=(2.5, 3.0))
    with pytest.raises(Exception, match="calibrated for layers of \\[30, 3\\] neurons"):
        EmulatorBackend(params=params).configure(other, input_replication=5)
