"""Edge cases of the forward and backward passes: empty input, inhibition only, simultaneous
arrivals, exact tangency, very late times, large sparse batches, unsorted rows."""

from __future__ import annotations

import math

import delgrad
import numpy as np
import polars as pl
import pyarrow as pa
import pytest
import reference as ref
from helpers import RATIOS, assert_times_close, batch, out_to_matrix, rows_to_batch, rows_to_inputs

N21 = delgrad.Neuron(tau_m=2.0, tau_s=1.0, theta=1.0)
M21 = ref.Model(2.0, 1.0, 1.0)


def _empty_batch():
    return batch(np.zeros(0, np.uint32), np.zeros(0, np.uint32), np.zeros(0))


def k_max(tau_m, tau_s):
    """(peak time, peak value) of the PSP kernel, in closed form."""
    if tau_m == tau_s:
        s_peak = tau_m
    else:
        s_peak = math.log(tau_m / tau_s) * tau_m * tau_s / (tau_m - tau_s)
    return s_peak, float(ref.Model(tau_m, tau_s, 1.0).kernel(s_peak))


# --- no input at all --------------------------------------------------------------------------


@pytest.mark.parametrize("container", ["record_batch", "table", "table_no_chunks", "polars"])
@pytest.mark.parametrize("kind", ["none", "synaptic", "axonal", "dendritic"])
def test_no_input_spikes(container, kind):
    rb = _empty_batch()
    spikes = {
        "record_batch": rb,
        "table": pa.Table.from_batches([rb]),
        "table_no_chunks": pa.Table.from_batches([], schema=rb.schema),
        "polars": pl.DataFrame(
            {
                "sample": pl.Series([], dtype=pl.UInt32),
                "neuron": pl.Series([], dtype=pl.UInt32),
                "time": pl.Series([], dtype=pl.Float64),
            }
        ),
    }[container]
    n_samples, n_in, n_out = 4, 3, 2
    w = np.full((n_out, n_in), 5.0)
    d = {"none": None, "synaptic": np.ones((n_out, n_in)), "axonal": np.ones(n_in), "dendritic": np.ones(n_out)}[kind]
    out = delgrad.layer_forward(spikes, w, d, N21, n_samples=n_samples, delay_kind=kind)
    assert out.num_rows == 0
    assert out.schema.names[:3] == ["sample", "neuron", "time"]
    assert np.all(np.isinf(out_to_matrix(out, n_samples, n_out)))

    g = delgrad.layer_backward(spikes, w, d, N21, out, np.zeros(0), n_samples=n_samples, delay_kind=kind)
    assert g.weights.shape == (n_out, n_in) and np.all(g.weights == 0)
    assert g.inputs.shape == (0,)
    assert np.all(g.delays == 0)

    layers = [delgrad.Layer(w, d if d is not None else np.zeros(0), kind), delgrad.Layer(np.full((1, n_out), 5.0))]
    net = delgrad.Network(layers=layers, neuron=N21)
    trace = net.forward(spikes, n_samples=n_samples)
    assert trace.first_times(0).shape == (n_samples, n_out)
    assert trace.first_times(1).shape == (n_samples, 1)
    assert np.all(np.isinf(trace.first_times(0))) and np.all(np.isinf(trace.first_times(1)))
    grads = net.backward(spikes, trace, np.ones((n_samples, 1)))
    assert grads.inputs.shape == (0,)
    assert all(np.all(dw == 0) and np.all(np.asarray(dd) == 0) for dw, dd in grads.layers)


def test_no_samples_at_all():
    out = delgrad.layer_forward(_empty_batch(), np.ones((2, 3)), None, N21, n_samples=0)
    assert out.num_rows == 0


# --- inhibition only --------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", list(RATIOS))
@pytest.mark.parametrize("seed", range(3))
def test_all_inhibitory_input_never_fires(ratio, seed):
    tau_m, tau_s = RATIOS[ratio]
    neuron = delgrad.Neuron(tau_m, tau_s, 1.0)
    rng = np.random.default_rng(seed)
    n_samples, n_in, n_out = 8, 6, 5
    rows = [(s, int(rng.integers(n_in)), float(rng.uniform(0, 5))) for s in range(n_samples) for _ in range(10)]
    w = -rng.uniform(0.01, 20.0, size=(n_out, n_in))
    d = rng.uniform(0, 2, size=(n_out, n_in))
    out = delgrad.layer_forward(rows_to_batch(rows), w, d, neuron, n_samples=n_samples)
    assert out.num_rows == 0
    g = delgrad.layer_backward(rows_to_batch(rows), w, d, neuron, out, np.zeros(0), n_samples=n_samples)
    assert np.all(g.weights == 0) and np.all(g.delays == 0) and np.all(g.inputs == 0)
    assert g.inputs.shape == (len(rows),)


def test_inhibition_then_excitation_matches_reference():
    """Inhibitory arrivals first drive V below 0; the later excitatory burst must make up for it."""
    rows = [(0, 0, 0.0), (0, 0, 0.3), (0, 1, 1.0), (0, 2, 1.2)]
    w = np.array([[-1.0, 3.0, 2.0]])
    want, info = ref.layer(M21, rows_to_inputs(rows, 1), w)
    assert ref.well_conditioned(info) and np.isfinite(want).all()
    got = out_to_matrix(delgrad.layer_forward(rows_to_batch(rows), w, None, N21, n_samples=1), 1, 1)
    assert_times_close(got, want)


# --- simultaneous arrivals --------------------------------------------------------------------


@pytest.mark.parametrize("ratio", list(RATIOS))
def test_simultaneous_arrivals_act_as_summed_weight(ratio):
    tau_m, tau_s = RATIOS[ratio]
    neuron = delgrad.Neuron(tau_m, tau_s, 1.0)
    model = ref.Model(tau_m, tau_s, 1.0)
    # In units of theta / max K (the weight that just reaches threshold alone).
    w = (
        np.array(
            [
                [0.4, 0.45, 0.35, 0.0],  # three sub-threshold inputs that together fire
                [1.5, -0.5, 0.25, 0.1],  # excitation and inhibition at the same instant
                [0.15, 0.1, 0.05, 0.0],  # together still silent
                [0.5, 0.5, 0.5, 1.0],  # a burst plus an earlier input
            ]
        )
        / k_max(tau_m, tau_s)[1]
    )
    t0 = 0.75
    rows = [
        (0, 0, t0),
        (0, 1, t0),
        (0, 2, t0),
        (0, 3, 0.1),
        (1, 2, t0),
        (1, 0, t0),
        (1, 1, t0),
    ]  # same burst, different row order, no input 3
    got = out_to_matrix(delgrad.layer_forward(rows_to_batch(rows), w, None, neuron, n_samples=2), 2, 4)
    # Reference 1: the arrivals as given (the reference merges nothing itself).
    want, info = ref.layer(model, rows_to_inputs(rows, 2), w)
    assert ref.well_conditioned(info)
    assert_times_close(got, want)
    # Reference 2: one arrival carrying the summed weight.
    for s, has3 in ((0, True), (1, False)):
        for j in range(4):
            arr = [t0] + ([0.1] if has3 else [])
            ww = [w[j, :3].sum()] + ([w[j, 3]] if has3 else [])
            r = ref.first_spike(model, arr, ww)
            assert (math.isinf(r.time) and math.isinf(got[s, j])) or abs(r.time - got[s, j]) <= 1e-9
    assert np.isfinite(got[:, 0]).all() and np.isinf(got[:, 2]).all()


def test_simultaneous_arrivals_through_delays():
    """Different spike times that arrive at the same instant through (exactly representable)
    axonal delays: 1.0 + 0.5 == 0.5 + 1.0 == 1.5."""
    w = np.array([[0.9, 0.9, 0.4]])
    d = np.array([0.5, 1.0, 0.25])
    rows = [(0, 0, 1.0), (0, 1, 0.5), (0, 2, 1.25)]
    got = out_to_matrix(delgrad.layer_forward(rows_to_batch(rows), w, d, N21, n_samples=1), 1, 1)
    r = ref.first_spike(M21, [1.5], [2.2])
    assert math.isfinite(r.time)
    assert abs(got[0, 0] - r.time) <= 1e-9


# --- exact tangency ---------------------------------------------------------------------------


@pytest.mark.parametrize("t0", [0.0, 0.5, 3.25, 1000.0])
def test_exactly_touching_threshold(t0):
    """tau_m = 2, tau_s = 1, theta = 1: max K = 1/2 at s = 2 ln 2, so weight 2 touches theta at
    its peak: a spike at t0 + 2 ln 2. Slightly less: silent. Slightly more: a spike just
    before the peak."""
    spikes = rows_to_batch([(0, 0, t0)])
    out = delgrad.layer_forward(spikes, [[2.0]], None, N21, n_samples=1)
    assert out.num_rows == 1, "weight 2 touches theta exactly at its peak: must spike"
    # At a tangency the time is determined only to ~sqrt(eps).
    assert abs(out.column("time")[0].as_py() - (t0 + 2 * math.log(2))) <= 1e-7

    out = delgrad.layer_forward(spikes, [[2.0 * (1 - 1e-9)]], None, N21, n_samples=1)
    assert out.num_rows == 0

    w = 2.0 * (1 + 1e-9)
    out = delgrad.layer_forward(spikes, [[w]], None, N21, n_samples=1)
    r = ref.first_spike(M21, [t0], [w])
    assert out.num_rows == 1 and math.isfinite(r.time)
    t = out.column("time")[0].as_py()
    assert t < t0 + 2 * math.log(2)
    assert abs(t - r.time) <= 1e-8


@pytest.mark.parametrize("ratio", list(RATIOS))
def test_near_touching_threshold_other_ratios(ratio):
    """w * max K = theta (1 +- 1e-9) for every ratio: silent just below, spikes just above at
    the reference's time."""
    tau_m, tau_s = RATIOS[ratio]
    neuron = delgrad.Neuron(tau_m, tau_s, 1.0)
    model = ref.Model(tau_m, tau_s, 1.0)
    s_peak, kmax = k_max(tau_m, tau_s)
    spikes = rows_to_batch([(0, 0, 0.5)])
    below = delgrad.layer_forward(spikes, [[(1 - 1e-9) / kmax]], None, neuron, n_samples=1)
    assert below.num_rows == 0
    w = (1 + 1e-9) / kmax
    above = delgrad.layer_forward(spikes, [[w]], None, neuron, n_samples=1)
    r = ref.first_spike(model, [0.5], [w])
    assert above.num_rows == 1
    assert abs(above.column("time")[0].as_py() - r.time) <= 1e-8
    assert above.column("time")[0].as_py() < 0.5 + s_peak


# --- very late inputs -------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", list(RATIOS))
@pytest.mark.parametrize("base", [1e3, 1e6])
def test_late_inputs(ratio, base):
    """Inputs at ~1e3 and ~1e6: no overflow, the same spike times as the reference (1e-9
    absolute, i.e. a few ulp at 1e6) and exactly the shifted early-time result up to rounding."""
    tau_m, tau_s = RATIOS[ratio]
    neuron = delgrad.Neuron(tau_m, tau_s, 1.0)
    model = ref.Model(tau_m, tau_s, 1.0)
    rng = np.random.default_rng(int(base))
    n_samples, n_in, n_out = 4, 5, 4
    rel = [(s, i, float(rng.uniform(0, 2))) for s in range(n_samples) for i in range(n_in)]
    w = rng.normal(1.2, 0.8, size=(n_out, n_in))
    d = rng.uniform(0, 1, size=(n_out, n_in))
    late = [(s, i, base + t) for s, i, t in rel]
    got = out_to_matrix(delgrad.layer_forward(rows_to_batch(late), w, d, neuron, n_samples=n_samples), n_samples, n_out)
    want, info = ref.layer(model, rows_to_inputs(late, n_samples), w, d, "synaptic")
    assert ref.well_conditioned(info)
    assert np.isfinite(want).sum() >= 3
    assert_times_close(got, want, atol=1e-9)
    early = out_to_matrix(
        delgrad.layer_forward(rows_to_batch(rel), w, d, neuron, n_samples=n_samples), n_samples, n_out
    )
    assert_times_close(got - base, early, atol=1e-9)

    # Backward is translation invariant as well.
    out_late = delgrad.layer_forward(rows_to_batch(late), w, d, neuron, n_samples=n_samples)
    out_early = delgrad.layer_forward(rows_to_batch(rel), w, d, neuron, n_samples=n_samples)
    grad = np.linspace(-1, 1, out_late.num_rows)
    gl = delgrad.layer_backward(rows_to_batch(late), w, d, neuron, out_late, grad, n_samples=n_samples)
    ge = delgrad.layer_backward(rows_to_batch(rel), w, d, neuron, out_early, grad, n_samples=n_samples)
    for a, b in ((gl.weights, ge.weights), (gl.delays, ge.delays), (gl.inputs, ge.inputs)):
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("ratio", list(RATIOS))
@pytest.mark.parametrize("gap", [100.0, 1e3, 2e3, 1e4, 1e6])
def test_long_silence_between_arrivals(ratio, gap):
    """A weak input at t = 0, then nothing for a long time, then a strong input at t = gap.
    The early input has decayed completely: the spike is the single-input spike after gap.
    (Long gaps are ordinary: an input at 0 and another at ~1e3 or ~1e6 in the same sample.)"""
    tau_m, tau_s = RATIOS[ratio]
    neuron = delgrad.Neuron(tau_m, tau_s, 1.0)
    model = ref.Model(tau_m, tau_s, 1.0)
    rows = [(0, 0, 0.0), (0, 1, gap)]
    w = np.array([[0.5, 1.5]]) / k_max(tau_m, tau_s)[1]
    got = out_to_matrix(delgrad.layer_forward(rows_to_batch(rows), w, None, neuron, n_samples=1), 1, 1)
    want, info = ref.layer(model, rows_to_inputs(rows, 1), w)
    single = ref.first_spike(model, [0.0], [w[0, 1]]).time
    assert math.isfinite(want[0, 0]) and abs(want[0, 0] - (gap + single)) <= 1e-9
    assert_times_close(got, want, atol=1e-9, what=f"gap {gap}:")


@pytest.mark.parametrize("ratio", list(RATIOS))
@pytest.mark.parametrize("gap", [100.0, 2e3, 1e6])
def test_backward_with_long_decayed_arrival_is_finite(ratio, gap):
    """layer_backward evaluated at a recorded output spike long after an early (decayed) causal
    arrival: the early arrival contributes ~0, gradients are finite and equal those without it."""
    tau_m, tau_s = RATIOS[ratio]
    neuron = delgrad.Neuron(tau_m, tau_s, 1.0)
    w = np.array([[0.5, 1.5]]) / k_max(tau_m, tau_s)[1]
    t_single = ref.first_spike(ref.Model(tau_m, tau_s, 1.0), [0.0], [w[0, 1]]).time
    assert math.isfinite(t_single)
    out = rows_to_batch([(0, 0, gap + t_single)])
    g = delgrad.layer_backward(
        rows_to_batch([(0, 0, 0.0), (0, 1, gap)]), w, None, neuron, out, np.array([1.0]), n_samples=1
    )
    g1 = delgrad.layer_backward(rows_to_batch([(0, 1, gap)]), w, None, neuron, out, np.array([1.0]), n_samples=1)
    assert np.all(np.isfinite(g.weights)) and np.all(np.isfinite(g.inputs)), (g.weights, g.inputs)
    np.testing.assert_allclose(g.weights[0, 1], g1.weights[0, 1], rtol=1e-6)
    np.testing.assert_allclose(g.inputs[1], g1.inputs[0], rtol=1e-6)
    assert abs(g.weights[0, 0]) < 1e-20 and abs(g.inputs[0]) < 1e-20


# --- large, mostly empty batch ----------------------------------------------------------------


def test_large_sparse_batch():
    n_samples, n_in, n_out = 20000, 3, 4
    rng = np.random.default_rng(11)
    busy = np.sort(rng.choice(n_samples, size=150, replace=False))
    rows = []
    for s in busy:
        for i in range(n_in):
            if rng.random() < 0.7:
                rows.append((int(s), i, float(rng.uniform(0, 3))))
    rows.append((n_samples - 1, 0, 1.0))  # the very last sample is busy too
    w = rng.normal(1.3, 0.9, size=(n_out, n_in))
    d = rng.uniform(0, 1, size=n_in)
    spikes = rows_to_batch(rows)
    out = delgrad.layer_forward(spikes, w, d, N21, n_samples=n_samples)
    got = out_to_matrix(out, n_samples, n_out)
    samples_with_input = sorted({r[0] for r in rows})
    idle = np.setdiff1d(np.arange(n_samples), samples_with_input)
    assert np.all(np.isinf(got[idle]))

    per_sample = rows_to_inputs(rows, n_samples)
    sub = [per_sample[s] for s in samples_with_input]
    want, info = ref.layer(M21, sub, w, d, "axonal")
    assert ref.well_conditioned(info)
    assert np.isfinite(want).sum() > 50
    assert_times_close(got[samples_with_input], want)

    # Backward over the big batch: every row gets a gradient, idle samples contribute nothing.
    grad = np.ones(out.num_rows)
    g = delgrad.layer_backward(spikes, w, d, N21, out, grad, n_samples=n_samples)
    assert g.inputs.shape == (len(rows),) and np.all(np.isfinite(g.inputs))
    # A few samples run one by one: the same spikes, and the sum of their weight gradients
    # equals the batched gradient restricted (through grad) to those samples.
    acc = np.zeros_like(g.weights)
    for s in samples_with_input[:10]:
        rs = [(0, i, t) for (ss, i, t) in rows if ss == s]
        o1 = delgrad.layer_forward(rows_to_batch(rs), w, d, N21, n_samples=1)
        np.testing.assert_array_equal(out_to_matrix(o1, 1, n_out)[0], got[s])
        acc += delgrad.layer_backward(rows_to_batch(rs), w, d, N21, o1, np.ones(o1.num_rows), n_samples=1).weights
    sel = np.isin(out.column("sample").to_numpy(), samples_with_input[:10])
    g10 = delgrad.layer_backward(spikes, w, d, N21, out, sel.astype(np.float64), n_samples=n_samples)
    np.testing.assert_allclose(g10.weights, acc, rtol=1e-12, atol=1e-14)

    net = delgrad.Network(layers=[delgrad.Layer(w, d, "axonal"), delgrad.Layer(np.full((2, n_out), 2.0))], neuron=N21)
    trace = net.forward(spikes, n_samples=n_samples)
    assert trace.first_times(1).shape == (n_samples, 2)
    np.testing.assert_array_equal(trace.first_times(0), got)


# --- unsorted rows ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["synaptic", "axonal", "dendritic"])
def test_shuffled_rows_same_output_and_aligned_input_grads(kind):
    rng = np.random.default_rng(4)
    n_samples, n_in, n_out = 12, 5, 4
    rows = [(s, i, float(rng.uniform(0, 3))) for s in range(n_samples) for i in range(n_in) if rng.random() < 0.8]
    w = rng.normal(1.2, 0.8, size=(n_out, n_in))
    d = {
        "synaptic": rng.uniform(0, 1, (n_out, n_in)),
        "axonal": rng.uniform(0, 1, n_in),
        "dendritic": rng.uniform(0, 1, n_out),
    }[kind]
    sorted_tab = rows_to_batch(rows)
    perm = rng.permutation(len(rows))
    shuffled_rows = [rows[k] for k in perm]
    shuffled = rows_to_batch(shuffled_rows)
    assert np.any(np.diff(shuffled.column("sample").to_numpy().astype(int)) < 0)

    out0 = delgrad.layer_forward(sorted_tab, w, d, N21, n_samples=n_samples, delay_kind=kind)
    out1 = delgrad.layer_forward(shuffled, w, d, N21, n_samples=n_samples, delay_kind=kind)
    assert out0.num_rows > 5
    assert out1.equals(out0)

    grad = rng.normal(size=out0.num_rows)
    g0 = delgrad.layer_backward(sorted_tab, w, d, N21, out0, grad, n_samples=n_samples, delay_kind=kind)
    g1 = delgrad.layer_backward(shuffled, w, d, N21, out1, grad, n_samples=n_samples, delay_kind=kind)
    assert np.count_nonzero(g0.inputs) > 5
    np.testing.assert_allclose(g1.inputs, g0.inputs[perm], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(g1.weights, g0.weights, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(g1.delays, g0.delays, rtol=1e-12, atol=1e-15)

    # Network level: grads.inputs aligned with the shuffled rows as well.
    net = delgrad.Network(
        layers=[delgrad.Layer(w, d, kind), delgrad.Layer(rng.normal(1.5, 0.5, size=(2, n_out)))], neuron=N21
    )
    c = rng.normal(size=(n_samples, 2))
    gn0 = net.backward(sorted_tab, net.forward(sorted_tab, n_samples), c)
    gn1 = net.backward(shuffled, net.forward(shuffled, n_samples), c)
    assert np.count_nonzero(gn0.inputs) > 5
    np.testing.assert_allclose(gn1.inputs, gn0.inputs[perm], rtol=1e-12, atol=1e-15)
    for (a0, b0), (a1, b1) in zip(gn0.layers, gn1.layers):
        np.testing.assert_allclose(a1, a0, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(b1, b0, rtol=1e-12, atol=1e-15)
