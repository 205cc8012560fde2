"""Chip profiles: DelGrad's published chip is the default, the old one is there by name, and a
JSON file reaches the daemon (``--chip-profile``) and the pipeline (``[hardware] chip_profile``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import delgrad
import numpy as np
import pytest
from delgrad.hardware import HardwareClient, start_daemon

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hw_daemon.backends.emulator import EmulatorBackend  # noqa: E402
from hw_daemon.profiles import ProfileError, load_profile, profile_json  # noqa: E402

NEURON = delgrad.Neuron(tau_m=1.0, tau_s=1.0, theta=2.6)


def test_default_profile_is_delgrads_published_chip():
    # ../shared/fastanddeep/yin_yang_hwAware_WA/config.yaml: clip 2.1 at 1/30 precision,
    # delays 2.0 + 1.5 sigmoid(p), threshold noise 0.13 / 0.08 / 0.04 on 2.6, jitter 0.01.
    p = EmulatorBackend().params
    assert p.profile == "delgrad"
    assert p.weight_scale == 30.0 and p.weight_max / p.weight_scale == pytest.approx(2.1)
    assert (p.delay_min, p.delay_max) == (2.0, 3.5)
    assert (p.threshold_offset_mean, p.threshold_offset_std, p.threshold_noise_std) == (0.13, 0.08, 0.04)
    assert p.theta_ref == 2.6 and p.delay_jitter_std == 0.01
    legacy = load_profile("legacy")
    assert (legacy.weight_scale, legacy.delay_min, legacy.delay_max) == (10.0, 0.0, 2.0)


def test_a_chip_trained_network_keeps_its_delays_under_the_default_profile():
    """The issue's case: delays in [2.0, 3.5] survive configure on the default profile and are
    clipped to 2.0 by the legacy one."""
    net = delgrad.Network.random([20, 30, 3], NEURON, delay_kind="axonal", delay_range=(2.0, 3.5), seed=0)
    net.layers[0].weights[:] = np.clip(net.layers[0].weights, -2.1, 2.1)
    net.layers[1].weights[:] = np.clip(net.layers[1].weights, -2.1, 2.1)
    default = EmulatorBackend().configure(net, input_replication=5)
    legacy = EmulatorBackend(params=load_profile("legacy")).configure(net, input_replication=5)
    assert all(r["delays_clipped"] == 0 for r in default.report["layers"])
    assert all(r["weights_clipped"] == 0 for r in default.report["layers"])
    assert legacy.report["layers"][0]["delays_clipped"] > 0
    assert legacy.network.layers[0].delays.max() == 2.0
    for a, b in zip(default.network.layers, net.layers):
        np.testing.assert_array_equal(a.delays, b.delays)
        np.testing.assert_allclose(a.weights, b.weights, atol=0.5 / 30 + 1e-12)  # 1/30 steps


def test_profile_file_round_trip_and_errors(tmp_path):
    p = load_profile({"base": "legacy", "name": "mine", "weight_scale": 20, "time_offset": 0.25})
    assert p.profile == "mine" and p.weight_scale == 20.0 and p.delay_max == 2.0 and p.time_offset == 0.25
    f = tmp_path / "p.json"
    f.write_text(json.dumps(profile_json(p)))
    assert load_profile(f) == p
    for bad, match in [
        ({"weight_scal": 3}, "unknown keys \\['weight_scal'\\]"),
        ({"weight_scale": 5e-324}, "weight_scale = 5e-324 is outside"),
        ({"delay_min": 3.0, "delay_max": 2.0}, "delay range"),
        ({"base": "nope"}, "base 'nope' is not a profile name"),
        ({"layers": [{"theta_factor": [1.0, -1.0]}]}, "theta_factor\\[1\\] = -1.0"),
        ({"neurons": 1.5}, "neurons must be an integer"),
    ]:
        with pytest.raises(ProfileError, match=match):
            load_profile(bad)
    with pytest.raises(ProfileError, match="no such file, and not a profile name"):
        load_profile(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ProfileError, match="bad.json: not a readable JSON file"):
        load_profile(tmp_path / "bad.json")


def test_daemon_serves_the_profile_file_it_is_given(tmp_path):
    f = tmp_path / "chip.json"
    f.write_text(json.dumps({"base": "delgrad", "name": "bench-chip", "weight_scale": 25.0, "delay_max": 3.0}))
    d = start_daemon(args=["--chip-profile", str(f), "--log-level", "WARNING"], log_path=tmp_path / "d.log")
    try:
        with HardwareClient(d.endpoint, timeout=10, retries=0) as c:
            caps = c.hello()["capabilities"]
    finally:
        assert d.stop() == 0
    assert caps["profile"] == "bench-chip" and caps["default_weight_scale"] == 25.0
    assert caps["delay_range"] == [2.0, 3.0]
    (tmp_path / "typo.json").write_text(json.dumps({"weight_scal": 3}))
    with pytest.raises(RuntimeError, match="unknown keys \\['weight_scal'\\]"):
        start_daemon(args=["--chip-profile", str(tmp_path / "typo.json")], log_path=tmp_path / "typo.log")


def test_pipeline_passes_a_relative_profile_file_to_its_daemon_absolutely(tmp_path, monkeypatch):
    from delgrad.config import HardwareConfig
    from delgrad.hardware.session import daemon_args

    (tmp_path / "chip.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert daemon_args(HardwareConfig(chip_profile="chip.json")) == ["--chip-profile", str(tmp_path / "chip.json")]
    assert daemon_args(HardwareConfig(chip_profile="legacy", ideal=True)) == ["--chip-profile", "legacy", "--ideal"]
    assert daemon_args(HardwareConfig()) == ["--chip-profile", "delgrad"]
