"""mlGeNN's spike-count regulariser (``[train.spike_count]``; the core's ``spike_count`` module):
checked against the jump it stands for, computed from the independent reference model, and by
what it does to a network's firing."""

from __future__ import annotations

from pathlib import Path

import delgrad
import numpy as np
import pyarrow as pa
import pytest
from delgrad import _core, pipeline
from delgrad.config import ConfigError, load_config
from delgrad.multi import MultiNetwork, Readout
from delgrad.network import Layer
from reference import Model

ROOT = Path(__file__).resolve().parent.parent
TAU_M, TAU_S, THETA = 2.0, 1.0, 1.0


def spike_set(rows: list[tuple[int, int, float]], n_samples: int) -> delgrad.SpikeSet:
    s, n, t = zip(*rows)
    table = pa.record_batch(
        {"sample": pa.array(s, pa.uint32()), "neuron": pa.array(n, pa.uint32()), "time": pa.array(t, pa.float64())}
    )
    return delgrad.SpikeSet(table, n_samples)


def network(w: np.ndarray, d: np.ndarray) -> MultiNetwork:
    neuron = delgrad.Neuron(TAU_M, TAU_S, THETA, mode="multi", t_end=20.0)
    readout = Readout(Layer(np.full((2, w.shape[0]), 0.3)), delgrad.Neuron(TAU_M, TAU_S, THETA), t_end=20.0)
    return MultiNetwork([Layer(w, d, "synaptic")], neuron, readout)


def test_the_pull_is_mlgenn_s_jump_on_dL_dV_at_each_spike_of_the_reference_model() -> None:
    """mlGeNN adds ``c_j = strength (N_j / B - target) / B`` to ``dL/dV(t_k^-)`` at every spike.
    With no other loss, the weight and delay gradients are then ``sum_k c_j dV(t_k^-)/dp`` at
    the spike times: for a neuron's first spike, the reference model's superposition
    ``V = sum w K(t - t_in - d)`` gives those derivatives in closed form, independently of the
    core's EventProp."""
    rng = np.random.default_rng(11)
    n_in, n_hidden, n_samples = 5, 4, 3
    rows = [(s, i, float(rng.uniform(0.0, 3.0))) for s in range(n_samples) for i in range(n_in) for _ in range(2)]
    w = rng.uniform(0.0, 0.6, (n_hidden, n_in))
    d = rng.uniform(0.0, 1.0, (n_hidden, n_in))
    net = network(w, d)
    spikes = spike_set(rows, n_samples)
    out = net.forward(spikes)
    hidden = out.trace.spikes(0).to_pydict()
    target, above, below = 0.5, 0.7, 0.4
    dy = np.zeros_like(out.values)
    g = net.backward(spikes, out, dy, spike_count=(target, above, below), batch_size=n_samples)
    gw, gd = g.layers[0]
    assert not np.any(g.readout[0]), "no loss besides the regulariser"

    counts = np.bincount(hidden["neuron"], minlength=n_hidden) / n_samples
    assert np.any(counts > target) and np.any(counts < target), "both strengths should act"
    pull = np.where(counts > target, above, below) * (counts - target) / n_samples
    model = Model(TAU_M, TAU_S, THETA)
    want_w, want_d = np.zeros_like(w), np.zeros_like(d)
    first = {}
    for s, j, t in zip(hidden["sample"], hidden["neuron"], hidden["time"]):
        first.setdefault((s, j), []).append(t)
    n_single = 0
    for (s, j), times in first.items():
        # Spikes after a neuron's first depend on its resets as well: the test builds the case
        # where every neuron fires once per sample, and checks that it did.
        assert len(times) == 1, "each hidden neuron should fire at most once per sample here"
        t = times[0]
        for i in range(n_in):
            arrivals = np.array([tt + d[j, i] for ss, ii, tt in rows if ss == s and ii == i])
            arrivals = arrivals[arrivals < t]
            want_w[j, i] += pull[j] * model.kernel(t - arrivals).sum()
            want_d[j, i] -= pull[j] * w[j, i] * model.kernel_ds(t - arrivals).sum()
        n_single += 1
    assert n_single >= 6
    np.testing.assert_allclose(gw, want_w, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(gd, want_d, rtol=1e-9, atol=1e-12)


def test_following_the_pull_moves_the_counts_towards_the_target() -> None:
    """Small gradient steps on the pull alone: a layer firing above the target fires less, one
    below it fires more (the sign of the jump, end to end)."""
    rng = np.random.default_rng(1)
    n_in, n_hidden, n_samples = 6, 5, 4
    rows = [(s, i, float(rng.uniform(0.0, 8.0))) for s in range(n_samples) for i in range(n_in) for _ in range(4)]
    spikes = spike_set(rows, n_samples)
    for target, weights in ((0.5, (0.3, 1.2)), (12.0, (0.0, 0.4))):
        w = np.random.default_rng(2).uniform(*weights, (n_hidden, n_in))
        d = np.random.default_rng(3).uniform(0.0, 1.0, (n_hidden, n_in))
        net = network(w, d)
        rates = []
        for _ in range(20):
            out = net.forward(spikes)
            rates.append(out.trace.spikes(0).num_rows / (n_hidden * n_samples))
            g = net.backward(spikes, out, np.zeros_like(out.values), spike_count=(target, 1.0, 1.0))
            net.layers[0].weights -= 1e-3 * g.layers[0][0]
        start, end = rates[0], rates[-1]
        assert abs(end - target) < 0.5 * abs(start - target), (target, rates)
        assert np.sign(end - start) == np.sign(target - start), (target, rates)


def test_settings_are_checked_and_apply_to_multi_spike_networks_only(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train\.spike_count\.strength_above"):
        load_config(ROOT / "pipelines" / "events.toml", ["train.spike_count.strength_above=-1"])
    with pytest.raises(ConfigError, match=r"train\.spike_count: applies to multi-spike networks only"):
        load_config(ROOT / "pipelines" / "yinyang_synaptic.toml", ["train.spike_count.strength_above=1e-3"])
    assert load_config(ROOT / "pipelines" / "shd.toml").train.spike_count.as_args(1) == [(14.0, 5e-11, 5e-11)]
    ssc = load_config(ROOT / "pipelines" / "ssc.toml").train.spike_count
    assert ssc.as_args(2) == [(14.0, 5e-11, 5e-11), (14.0, 5e-12, 5e-12)]
    with pytest.raises(ConfigError, match=r"train\.spike_count\.strength_above: 2 values for 1 hidden layers"):
        load_config(ROOT / "pipelines" / "shd.toml", ["train.spike_count.strength_above=[1e-11, 1e-12]"])
    assert load_config(ROOT / "pipelines" / "events.toml").train.spike_count.as_args(1) is None
    with pytest.raises(_core.ParameterError, match="strength below"):
        net = network(np.ones((2, 2)), np.zeros((2, 2)))
        s = spike_set([(0, 0, 0.1), (0, 1, 0.2)], 1)
        out = net.forward(s)
        net.backward(s, out, np.zeros_like(out.values), spike_count=(1.0, 1.0, float("nan")))


def test_a_pipeline_with_the_pull_runs_and_the_pull_changes_its_result(tmp_path: Path) -> None:
    shd = ROOT / "pipelines" / "shd.toml"
    sets = [
        "data.synthetic=true",
        "data.n_train=24",
        "data.n_validation=8",
        "data.n_test=8",
        "network.hidden=[8]",
        "train.epochs=1",
        "train.batch_size=8",
        "train.warmup_batches=0",
        "augment.enabled=false",
    ]
    strong = ["train.spike_count.strength_above=1e-1", "train.spike_count.strength_below=1e-1"]
    runs = [
        pipeline.run(shd, [*sets, *extra], tmp_path / name, progress=False)
        for name, extra in (
            ("off", ["train.spike_count.strength_above=0", "train.spike_count.strength_below=0"]),
            ("on", strong),
        )
    ]
    off, on = (delgrad.Model.load(run).network.layers[0].weights for run in runs)
    assert not np.array_equal(off, on)
