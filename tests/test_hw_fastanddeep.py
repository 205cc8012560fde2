"""``delgrad import-fastanddeep``: DelGrad's published experiments (../shared/fastanddeep,
beside the repository) reproduce their stored test spike times through delgrad.Model."""

from __future__ import annotations

from pathlib import Path

import delgrad
import numpy as np
import pytest
from delgrad.cli import main
from delgrad.data.yinyang import yinyang_splits
from delgrad.fastanddeep import FastAndDeepError, import_experiment

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "fastanddeep"


@pytest.fixture(scope="module")
def test_set():
    return yinyang_splits()["test"]


def stored(name: str) -> tuple[np.ndarray, np.ndarray]:
    d = SHARED / name
    return np.load(d / "yin_yang_test_spiketimes.npy"), np.load(d / "yin_yang_test_labels.npy")


@pytest.mark.parametrize("name", ["yin_yang_H30_WS", "yin_yang_H5_WS"])
def test_noise_free_experiments_reproduce_stored_test_spike_times(name, tmp_path, test_set):
    x, y = test_set
    times, labels = stored(name)
    np.testing.assert_array_equal(labels, y)  # the same test set (seed 40 of the published generator)
    out = import_experiment(SHARED / name, tmp_path / "run")
    model = delgrad.Model.load(out)
    got = model.output_times(x)
    np.testing.assert_array_equal(np.isinf(got), np.isinf(times))
    # Relative 1e-5 (the largest absolute difference is 1.3e-5 at t ~ 3: the published
    # closed form's rounding near tangential crossings; the median is 4e-7).
    np.testing.assert_allclose(got, times, rtol=1e-5, atol=0)
    np.testing.assert_array_equal(model.predict(x), np.argmin(times, axis=1))
    # From raw coordinates too (Model adds the mirrored pair).
    np.testing.assert_array_equal(model.predict(x[:50, :2]), model.predict(x[:50]))


def test_hardware_aware_experiment_imports_with_its_mean_threshold(tmp_path, test_set):
    """hwAware: inputs multiplexed 5x (consecutive copies), axonal delays in [2, 3.5], weights on
    1/30 steps within 2.1, threshold 2.6 + fixed-pattern mean 0.13. Its stored test times hold
    one draw of training noise, so they agree only statistically."""
    x, y = test_set
    times, _ = stored("yin_yang_hwAware_WA")
    out = import_experiment(SHARED / "yin_yang_hwAware_WA", tmp_path / "run")
    model = delgrad.Model.load(out)
    net = model.network
    assert net.sizes == [20, 30, 3] and model.encoder.replicate == 5
    assert net.neuron.theta == pytest.approx(2.73) and net.neuron.tau_m == net.neuron.tau_s == 1.0
    assert [layer.delay_kind for layer in net.layers] == ["axonal", "axonal"]
    assert all(2.0 <= layer.delays.min() and layer.delays.max() <= 3.5 for layer in net.layers)
    for layer in net.layers:
        q = layer.weights * 30
        np.testing.assert_allclose(q, np.rint(q), atol=1e-9)
        assert np.abs(layer.weights).max() <= 2.1 + 1e-12
    got = model.output_times(x)
    both = np.isfinite(got) & np.isfinite(times)
    assert np.median(np.abs(got[both] - times[both])) < 0.05
    published = np.mean(np.argmin(times, axis=1) == y)  # 92.8 %
    assert abs(np.mean(model.predict(x) == y) - published) < 0.015


def test_bad_experiment_directories_get_clear_errors(tmp_path, capsys):
    with pytest.raises(FastAndDeepError, match="no config.yaml"):
        import_experiment(tmp_path, tmp_path / "out")
    # The hxpynn directory has config.yaml only.
    with pytest.raises(FastAndDeepError, match="no yin_yang_parameters_training.npy"):
        import_experiment(SHARED / "yin_yang_hxpynn", tmp_path / "out2")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("a user's file")
    with pytest.raises(FastAndDeepError, match="exists and is not an empty directory"):
        import_experiment(SHARED / "yin_yang_H5_WS", tmp_path / "full")
    assert (tmp_path / "full" / "mine.txt").read_text() == "a user's file"
    assert main(["import-fastanddeep", str(tmp_path), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no config.yaml" in err


def test_cli_import(tmp_path, capsys):
    assert main(["import-fastanddeep", str(SHARED / "yin_yang_H5_WS"), str(tmp_path / "run")]) == 0
    assert "Model.load" in capsys.readouterr().out
    assert (tmp_path / "run" / "fastanddeep.json").exists()
    assert delgrad.Model.load(tmp_path / "run").network.sizes == [4, 5, 3]
