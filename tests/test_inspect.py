"""The exact membrane potential behind ``delgrad inspect``: it reaches the threshold at every
spike the networks produce (TTFS, multi-spike with refractory time, recurrent), stays below it
elsewhere, agrees with an independent evaluation of the model's formulas, and the readout's
potential peaks at the readout's own max value."""

from __future__ import annotations

import delgrad
import numpy as np
import pyarrow as pa
import pytest
from delgrad import _core
from delgrad.inspection import SampleActivity, membrane_potential, parse_neurons, sample_activity
from delgrad.multi import MultiNetwork
from delgrad.network import Network
from reference import Model as RefModel
from reference import effective_delays
from reference import voltage as ref_voltage

DELAY_KINDS = ["none", "synaptic", "axonal", "dendritic"]


def _input(rng: np.random.Generator, n_samples: int, n_in: int, per_sample: int, span: float) -> pa.RecordBatch:
    sample = np.repeat(np.arange(n_samples, dtype=np.uint32), per_sample)
    neuron = rng.integers(0, n_in, sample.size).astype(np.uint32)
    time = rng.uniform(0.0, span, sample.size)
    return pa.record_batch({"sample": sample, "neuron": neuron, "time": time})


def _arrivals(layer, target: int, source: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Independent of the core: the arrivals at ``target`` from the reference's delay rules."""
    n_out, n_in = layer.weights.shape
    d = effective_delays(layer.delay_kind, layer.delays, n_out, n_in)
    ids, times = source
    w = layer.weights[target, ids]
    a = times + d[target, ids]
    keep = w != 0
    order = np.argsort(a[keep], kind="stable")
    return np.stack([a[keep][order], w[keep][order]], axis=1)


def _multi_reference(
    model: RefModel, t: float, arr: np.ndarray, spikes: np.ndarray, t_ref: float, inv_tau_s: float
) -> float:
    """V(t^-) of a reset-to-0 neuron from the superposition formula alone: after the last reset
    before t (at s, clamped until c = s + t_ref) V is the free response to the current left at c,
    I(c) = sum_{a <= c} w exp(-(c - a)/tau_s), plus the PSPs of the later arrivals."""
    before = spikes[spikes < t]
    if not before.size:
        return float(ref_voltage(model, t, arr[:, 0], arr[:, 1]))
    c = before[-1] + t_ref
    if t <= c:
        return 0.0
    old = arr[arr[:, 0] <= c]
    new = arr[arr[:, 0] > c]
    current = float(np.sum(old[:, 1] * np.exp(-(c - old[:, 0]) * inv_tau_s)))
    return current * float(model.kernel(t - c)) + float(ref_voltage(model, t, new[:, 0], new[:, 1]))


@pytest.mark.parametrize("kind", DELAY_KINDS)
@pytest.mark.parametrize("taus", [(2.0, 1.0), (1.0, 1.0), (1.7, 1.0)])
def test_ttfs_potential_reaches_theta_at_every_spike_and_matches_the_reference(kind, taus):
    rng = np.random.default_rng(7)
    neuron = delgrad.Neuron(tau_m=taus[0], tau_s=taus[1], theta=1.0)
    net = Network.random(
        [6, 10, 4],
        neuron,
        delay_kind=kind,
        weight_mean=(1.0, 1.5),
        weight_std=(1.0, 1.0),
        delay_range=(0.0, 1.0),
        seed=3,
    )
    spikes = delgrad.SpikeSet(_input(rng, 6, 6, 8, 2.0), 6)
    ref = RefModel(*taus, 1.0)
    n_checked = 0
    for sample in range(6):
        act = sample_activity(net, spikes, sample)
        for layer_index, layer in enumerate(net.layers):
            source = act.input if layer_index == 0 else act.layers[layer_index - 1]
            ids, times = act.layers[layer_index]
            for j in range(layer.shape[0]):
                arr = _arrivals(layer, j, source)
                grid = np.linspace(-0.5, 8.0, 400)
                mine = times[ids == j]
                probe = np.concatenate([grid, mine, arr[:, 0]])
                v, got_arr = membrane_potential(net, act, (layer_index, j), probe)
                np.testing.assert_allclose(got_arr, arr, rtol=0, atol=1e-12)
                np.testing.assert_allclose(v, ref_voltage(ref, probe, arr[:, 0], arr[:, 1]), rtol=0, atol=1e-9)
                if mine.size:
                    n_checked += 1
                    assert abs(v[len(grid)] - 1.0) < 1e-9, (sample, layer_index, j)
                    assert np.all(v[: len(grid)][grid < mine[0]] < 1.0 + 1e-9)
                else:
                    assert np.all(v < 1.0 + 1e-9), "V crossed theta where the network has no spike"
    assert n_checked > 20


@pytest.mark.parametrize("recurrent", [False, True])
@pytest.mark.parametrize("t_ref", [0.0, 0.4])
def test_multi_spike_potential_resets_at_every_spike_and_matches_the_reference(recurrent, t_ref):
    rng = np.random.default_rng(11)
    t_end = 25.0
    neuron = delgrad.Neuron(tau_m=2.0, tau_s=1.0, theta=1.0, mode="multi", t_ref=t_ref, t_end=t_end)
    readout = delgrad.Neuron(tau_m=2.0, tau_s=1.0, theta=1.0, mode="multi", t_end=t_end)
    net = MultiNetwork.random(
        [5, 8, 3],
        neuron,
        readout,
        delay_kind="synaptic",
        weight_mean=(1.2, 0.5),
        weight_std=(0.6, 0.5),
        delay_range=(0.0, 2.0),
        readout_kind="max",
        t_end=t_end,
        recurrent=recurrent,
        recurrent_std=0.4,
        seed=5,
    )
    spikes = delgrad.SpikeSet(_input(rng, 4, 5, 30, 15.0), 4)
    ref = RefModel(2.0, 1.0, 1.0)
    n_spikes = 0
    for sample in range(4):
        act = sample_activity(net, spikes, sample)
        ids, times = act.layers[0]
        for j in range(8):
            arr = _arrivals(net.layers[0], j, act.input)
            if recurrent:
                arr = np.concatenate([arr, _arrivals(net.recurrent[0], j, act.layers[0])])
                arr = arr[np.argsort(arr[:, 0], kind="stable")]
            mine = np.sort(times[ids == j])
            grid = np.linspace(0.0, t_end, 2500)
            probe = np.concatenate([grid, mine, mine + 1e-3, arr[:, 0]])
            v, got_arr = membrane_potential(net, act, (0, j), probe)
            np.testing.assert_allclose(np.sort(got_arr[:, 0]), arr[:, 0], atol=1e-12)
            # The reference is a Python loop: every 25th grid point, and every event.
            some = np.concatenate([np.arange(0, len(grid), 25), np.arange(len(grid), len(probe))])
            want = [_multi_reference(ref, t, arr, mine, t_ref, 1.0) for t in probe[some]]
            np.testing.assert_allclose(v[some], want, rtol=0, atol=1e-9)
            at_spikes = v[len(grid) : len(grid) + mine.size]
            np.testing.assert_allclose(at_spikes, 1.0, rtol=0, atol=1e-9)
            assert np.all(v[: len(grid)] < 1.0 + 1e-9), "V above theta where the network did not spike"
            n_spikes += mine.size
        # The readout: no threshold, no reset; its potential peaks at the readout's max value.
        for c in range(3):
            arr = _arrivals(net.readout.layer, c, act.layers[0])
            grid = np.linspace(0.0, t_end, 20001)
            v, _ = membrane_potential(net, act, ("readout", c), np.concatenate([grid, arr[:, 0]]))
            np.testing.assert_allclose(v, ref_voltage(ref, np.concatenate([grid, arr[:, 0]]), *arr.T), atol=1e-9)
            assert v.max() <= act.values[c] + 1e-9
            assert v.max() >= act.values[c] - 1e-4
    assert n_spikes > 30


def test_potential_refuses_bad_input():
    layer = (np.ones((2, 3)), "none", None)
    ids, times = np.array([0, 2], np.uint32), np.array([0.1, 0.5])
    at = np.linspace(0, 1, 5)
    ttfs = delgrad.Neuron()
    multi = delgrad.Neuron(mode="multi")
    with pytest.raises(delgrad.ParameterError, match="does not reset"):
        _core.membrane_potential(ttfs, 0, [(ids, times, layer)], at, np.array([0.3]))
    with pytest.raises(delgrad.ShapeError, match="target neuron 2"):
        _core.membrane_potential(multi, 2, [(ids, times, layer)], at)
    with pytest.raises(delgrad.SpikeError, match="neuron 5"):
        _core.membrane_potential(multi, 0, [(np.array([5], np.uint32), np.array([0.1]), layer)], at)
    with pytest.raises(delgrad.SpikeError, match="source spike 0 has time NaN"):
        _core.membrane_potential(multi, 0, [(ids[:1], np.array([np.nan]), layer)], at)
    with pytest.raises(delgrad.ParameterError, match="time 1 is NaN"):
        _core.membrane_potential(multi, 0, [(ids, times, layer)], np.array([0.0, np.nan]))
    with pytest.raises(delgrad.ShapeError, match="2 source neurons but 1 source times"):
        _core.membrane_potential(multi, 0, [(ids, times[:1], layer)], at)


def test_neuron_choice_is_checked():
    assert parse_neurons("0:3, -1:2,readout:4") == [(0, 3), (-1, 2), ("readout", 4)]
    for bad in ["", "3", "a:1", "input:2"]:
        with pytest.raises(ValueError, match="--neurons"):
            parse_neurons(bad)
    net = Network.random([2, 3, 2], delgrad.Neuron(), seed=0)
    act = SampleActivity(
        (np.zeros(0, np.uint32), np.zeros(0)), [(np.zeros(0, np.uint32), np.zeros(0))] * 2, prediction=-1
    )
    with pytest.raises(ValueError, match="layer 2 does not exist"):
        membrane_potential(net, act, (2, 0), np.zeros(1))
    with pytest.raises(ValueError, match="neuron 3 does not exist in layer 0"):
        membrane_potential(net, act, (0, 3), np.zeros(1))
    with pytest.raises(ValueError, match="no readout"):
        membrane_potential(net, act, ("readout", 0), np.zeros(1))
    v, arr = membrane_potential(net, act, (-1, 1), np.array([0.0, 1.0]))
    assert v.tolist() == [0.0, 0.0] and arr.shape == (0, 2)
