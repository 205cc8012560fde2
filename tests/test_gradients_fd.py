"""Gradients of delgrad (layer_backward, Network.backward) against central finite differences of
the forward pass, for weights, delays (synaptic, axonal, dendritic) and input spike times, for
tau_m / tau_s = 1, 2 and 1.5.

Loss: L = sum_k c_k t_k over output spikes, with random c.

The exact gradient is the derivative at fixed causal set. Cases where a perturbation of h = 1e-6
could change the causal set or the silent/spiking pattern are excluded with `assume` on the
independent reference simulation: an arrival within 1e-3 of an output spike, a slope dV/dt < 0.05
at a crossing, or any local maximum of V within 1e-4 of theta (a silent neuron that nearly
fires, or a near-miss before the spike).
"""

from __future__ import annotations

import delgrad
import numpy as np
import pytest
import reference as ref
from helpers import (
    GRAD_RATIOS,
    examples,
    finite,
    layer_cases,
    network_cases,
    out_to_matrix,
    rows_to_batch,
    rows_to_inputs,
)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

H = 1e-6
RTOL = 1e-5
ATOL = 1e-7
CONDITIONING = dict(peak_margin=1e-4, min_slope=0.05, min_arrival_gap=1e-3)
SETTINGS = settings(
    max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow]
)


def assert_grad_close(got, fd, what):
    got = np.asarray(got, dtype=np.float64)
    fd = np.asarray(fd, dtype=np.float64)
    assert got.shape == fd.shape, f"{what}: shape {got.shape}, expected {fd.shape}"
    assert np.all(np.isfinite(got)), f"{what}: non-finite gradient {got}"
    err = np.abs(got - fd)
    tol = RTOL * np.abs(fd) + ATOL
    bad = np.argwhere(err > tol)
    assert bad.size == 0, (
        f"{what}: {len(bad)} entries differ from finite differences; first at "
        f"{tuple(bad[0])}: got {got[tuple(bad[0])]!r}, finite difference {fd[tuple(bad[0])]!r}"
    )


def central_difference(loss, x: np.ndarray) -> np.ndarray:
    """d loss / dx by central differences, x perturbed in place (and restored)."""
    g = np.zeros(x.shape)
    flat = x.reshape(-1)
    gflat = g.reshape(-1)
    for k in range(flat.size):
        x0 = flat[k]
        flat[k] = x0 + H
        lp = loss()
        flat[k] = x0 - H
        lm = loss()
        flat[k] = x0
        gflat[k] = (lp - lm) / (2 * H)
    return g


# --- single layer -----------------------------------------------------------------------------


def _layer_case(kind):
    return layer_cases(
        kinds=(kind,),
        w_range=(-0.8, 3.0),
        d_range=(0.05, 1.5),
        t_range=(0.0, 3.0),
        min_spikes=1,
        max_spikes=6,
        max_in=5,
        max_out=3,
    )


def _require(cond):
    assert cond, "fixed test case is not well-conditioned"


def _check_layer_gradients(ratio, case, c_vals, require=assume):
    tau_m, tau_s = GRAD_RATIOS[ratio]
    n_samples, n_out, kind = case["n_samples"], case["n_out"], case["kind"]
    model = ref.Model(tau_m, tau_s, 1.0)
    want, info = ref.layer(model, rows_to_inputs(case["rows"], n_samples), case["weights"], case["delays"], kind)
    require(np.isfinite(want).any())
    require(ref.well_conditioned(info, **CONDITIONING))

    neuron = delgrad.Neuron(tau_m=tau_m, tau_s=tau_s, theta=1.0)
    w = case["weights"].copy()
    d = None if case["delays"] is None else case["delays"].copy()
    rows = case["rows"]
    times = np.array([r[2] for r in rows], dtype=np.float64)
    c = np.asarray(c_vals, dtype=np.float64).reshape(n_samples, n_out)

    def spikes_tab():
        return rows_to_batch([(s, i, t) for (s, i, _), t in zip(rows, times)])

    def forward():
        return delgrad.layer_forward(spikes_tab(), w, d, neuron, n_samples=n_samples, delay_kind=kind)

    out = forward()
    t0 = out_to_matrix(out, n_samples, n_out)
    spiking = np.isfinite(t0)

    def loss():
        t = out_to_matrix(forward(), n_samples, n_out)
        # The perturbation must not change which neurons fire (guaranteed by the exclusions).
        assert np.array_equal(np.isfinite(t), spiking), "perturbation changed the spike pattern"
        return float(np.sum(c[spiking] * t[spiking]))

    s_col = out.column("sample").to_numpy().astype(np.int64)
    n_col = out.column("neuron").to_numpy().astype(np.int64)
    grad = c[s_col, n_col]
    g = delgrad.layer_backward(spikes_tab(), w, d, neuron, out, grad, n_samples=n_samples, delay_kind=kind)

    assert_grad_close(g.weights, central_difference(loss, w), f"{ratio} {kind} dL/dw")
    if d is None:
        assert g.delays.size == 0
    else:
        assert_grad_close(g.delays, central_difference(loss, d), f"{ratio} {kind} dL/dd")
    assert_grad_close(g.inputs, central_difference(loss, times), f"{ratio} {kind} dL/dt_in")


@pytest.mark.parametrize("kind", ["none", "synaptic", "axonal", "dendritic"])
@pytest.mark.parametrize("ratio", list(GRAD_RATIOS))
@SETTINGS
@given(data=st.data())
def test_layer_gradients_match_finite_differences(ratio, kind, data):
    case = data.draw(_layer_case(kind), label="case")
    c = data.draw(
        st.lists(
            finite(-1.0, 1.0), min_size=case["n_samples"] * case["n_out"], max_size=case["n_samples"] * case["n_out"]
        ),
        label="c",
    )
    _check_layer_gradients(ratio, case, c)


def test_layer_gradient_fixed_case_is_nonzero():
    """Guards against vacuous agreement (e.g. all-zero gradients on both sides): a fixed
    well-conditioned case with known non-zero gradients."""
    rows = [(0, 0, 0.0), (0, 1, 0.4)]
    w = np.array([[1.5, 1.2]])
    neuron = delgrad.Neuron(2.0, 1.0, 1.0)
    out = delgrad.layer_forward(rows_to_batch(rows), w, None, neuron, n_samples=1)
    assert out.num_rows == 1
    g = delgrad.layer_backward(rows_to_batch(rows), w, None, neuron, out, np.array([1.0]), n_samples=1)
    # More weight -> earlier spike; a later input -> later spike.
    assert np.all(g.weights < 0)
    assert np.all(g.inputs > 0)
    _check_layer_gradients(
        "ratio2",
        dict(n_samples=1, n_out=1, n_in=2, kind="none", weights=w, delays=None, rows=rows),
        [1.0],
        require=_require,
    )


@pytest.mark.parametrize("ratio", list(GRAD_RATIOS))
def test_layer_backward_out_row_order_does_not_matter(ratio):
    """`out` recorded elsewhere may come in any row order; grad is aligned with its rows."""
    tau_m, tau_s = GRAD_RATIOS[ratio]
    neuron = delgrad.Neuron(tau_m, tau_s, 1.0)
    rng = np.random.default_rng(7)
    n_samples, n_in, n_out = 5, 4, 3
    rows = [(s, i, float(rng.uniform(0, 2))) for s in range(n_samples) for i in range(n_in)]
    w = rng.normal(1.5, 0.5, size=(n_out, n_in))
    d = rng.uniform(0.1, 1.0, size=(n_out, n_in))
    spikes = rows_to_batch(rows)
    out = delgrad.layer_forward(spikes, w, d, neuron, n_samples=n_samples)
    assert out.num_rows >= 6
    grad = rng.normal(size=out.num_rows)
    g0 = delgrad.layer_backward(spikes, w, d, neuron, out, grad, n_samples=n_samples)
    perm = rng.permutation(out.num_rows)
    g1 = delgrad.layer_backward(spikes, w, d, neuron, out.take(perm), grad[perm], n_samples=n_samples)
    np.testing.assert_allclose(g1.weights, g0.weights, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(g1.delays, g0.delays, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(g1.inputs, g0.inputs, rtol=1e-13, atol=1e-15)


# --- network ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", list(GRAD_RATIOS))
@settings(
    max_examples=examples(30), deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow]
)
@given(case=network_cases(max_in=4, max_hidden=4, w=(1.6, 0.9), d=(0.05, 1.0), p_spike=0.85, t_max=2.0, with_loss=True))
def test_network_gradients_match_finite_differences(ratio, case):
    tau_m, tau_s = GRAD_RATIOS[ratio]
    n = case["n_samples"]
    model = ref.Model(tau_m, tau_s, 1.0)
    want, info = ref.network(model, rows_to_inputs(case["rows"], n), case["layers"])
    assume(np.isfinite(want[-1]).any())
    assume(ref.well_conditioned(info, **CONDITIONING))

    neuron = delgrad.Neuron(tau_m=tau_m, tau_s=tau_s, theta=1.0)
    net = delgrad.Network(
        layers=[delgrad.Layer(w.copy(), None if d is None else d.copy(), kind) for w, d, kind in case["layers"]],
        neuron=neuron,
    )
    rows = case["rows"]
    times = np.array([r[2] for r in rows], dtype=np.float64)
    c = case["c"]

    def spikes_tab():
        return rows_to_batch([(s, i, t) for (s, i, _), t in zip(rows, times)])

    last = len(net.layers) - 1
    t0 = net.forward(spikes_tab(), n_samples=n).first_times(last)
    spiking = np.isfinite(t0)

    def loss():
        t = net.forward(spikes_tab(), n_samples=n).first_times(last)
        assert np.array_equal(np.isfinite(t), spiking), "perturbation changed the spike pattern"
        return float(np.sum(c[spiking] * t[spiking]))

    trace = net.forward(spikes_tab(), n_samples=n)
    # Entries of silent output neurons are documented as ignored: put junk there.
    grad_times = np.where(spiking, c, 1e3)
    grads = net.backward(spikes_tab(), trace, grad_times)
    assert len(grads.layers) == 2
    for index, layer in enumerate(net.layers):
        dW, dD = grads.layers[index]
        assert_grad_close(dW, central_difference(loss, layer.weights), f"{ratio} layer {index} dL/dw")
        if layer.delay_kind == "none":
            assert np.asarray(dD).size == 0
        else:
            assert_grad_close(
                dD, central_difference(loss, layer.delays), f"{ratio} layer {index} {layer.delay_kind} dL/dd"
            )
    assert_grad_close(grads.inputs, central_difference(loss, times), f"{ratio} dL/dt_in")


def test_network_backward_agrees_with_chained_layer_backward():
    """Network.backward == layer_backward chained by hand (dL/dt of the hidden spikes becomes
    the grad of the hidden layer)."""
    neuron = delgrad.Neuron(2.0, 1.0, 1.0)
    net = delgrad.Network.random([4, 8, 3], neuron, delay_kind=["dendritic", "synaptic"], seed=5)
    rng = np.random.default_rng(2)
    n = 6
    rows = [(s, i, float(rng.uniform(0, 2))) for s in range(n) for i in range(4)]
    spikes = rows_to_batch(rows)
    trace = net.forward(spikes, n_samples=n)
    c = rng.normal(size=(n, 3))
    grads = net.backward(spikes, trace, c)
    h, o = trace.spikes(0), trace.spikes(1)
    assert o.num_rows > 0
    l0, l1 = net.layers
    go = c[o.column("sample").to_numpy().astype(int), o.column("neuron").to_numpy().astype(int)]
    g1 = delgrad.layer_backward(h, l1.weights, l1.delays, neuron, o, go, n_samples=n, delay_kind=l1.delay_kind)
    g0 = delgrad.layer_backward(
        spikes, l0.weights, l0.delays, neuron, h, g1.inputs, n_samples=n, delay_kind=l0.delay_kind
    )
    np.testing.assert_allclose(grads.layers[1][0], g1.weights, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grads.layers[1][1], g1.delays, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grads.layers[0][0], g0.weights, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grads.layers[0][1], g0.delays, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grads.inputs, g0.inputs, rtol=1e-12, atol=1e-14)


def test_trace_first_times_accepts_negative_layer_index():
    """trace.first_times(-1) is the output layer (Python indexing convention, as the API
    documentation uses it)."""
    neuron = delgrad.Neuron(2.0, 1.0, 1.0)
    net = delgrad.Network.random([3, 4, 2], neuron, seed=0)
    trace = net.forward(rows_to_batch([(0, 0, 0.0), (0, 1, 0.1), (0, 2, 0.2)]), n_samples=1)
    np.testing.assert_array_equal(trace.first_times(-1), trace.first_times(1))
