"""mode="multi" through the Python API: multi-spike LIF layers (reset, refractory time) and the
leaky-integrator readout, with EventProp gradients checked against central finite differences.
The exhaustive exactness tests (independent simulation, recurrent and deep networks) are the
Rust ones in rust_core/tests/multi_exact.rs; these check the bindings' plumbing.
"""

from __future__ import annotations

import pickle

import delgrad
import numpy as np
import pyarrow as pa
import pytest
from delgrad import _core

H = 1e-6


def batch(rows):
    s, n, t = zip(*rows)
    return pa.record_batch(
        {"sample": pa.array(s, pa.uint32()), "neuron": pa.array(n, pa.uint32()), "time": pa.array(t, pa.float64())}
    )


def case(seed=0, n_in=4, n_out=3, per=4, n_samples=2):
    rng = np.random.default_rng(seed)
    rows = [(s, i, float(rng.uniform(0, 4))) for s in range(n_samples) for i in range(n_in) for _ in range(per)]
    w = rng.uniform(-1.0, 4.0, (n_out, n_in))
    d = rng.uniform(0.0, 1.0, (n_out, n_in))
    return rows, w, d


def test_neuron_multi_mode_attributes_and_pickle():
    n = delgrad.Neuron(2.0, 1.0, 1.0, mode="multi", t_ref=0.25)
    assert n.mode == "multi" and n.t_ref == 0.25 and n.t_end == float("inf")
    assert "mode='multi'" in repr(n)
    assert pickle.loads(pickle.dumps(n)) == n
    assert delgrad.Neuron().mode == "ttfs"
    with pytest.raises(_core.ParameterError):
        delgrad.Neuron(mode="bogus")
    with pytest.raises(_core.ParameterError):
        delgrad.Neuron(mode="ttfs", t_ref=0.1)
    with pytest.raises(_core.ParameterError):
        delgrad.Neuron(mode="multi", t_ref=-1.0)


def test_multi_layer_forward_holds_every_spike_and_starts_with_the_ttfs_spike():
    rows, w, d = case()
    multi = delgrad.Neuron(2.0, 1.0, 1.0, mode="multi")
    ttfs = delgrad.Neuron(2.0, 1.0, 1.0)
    out_m = _core.layer_forward(batch(rows), w, d, "synaptic", multi, 2).to_pydict()
    out_t = _core.layer_forward(batch(rows), w, d, "synaptic", ttfs, 2).to_pydict()
    keys = list(zip(out_m["sample"], out_m["neuron"]))
    assert len(keys) > len(set(keys)), "expected some neuron to spike more than once"
    first = {}
    for s, j, t in zip(out_m["sample"], out_m["neuron"], out_m["time"]):
        first[(s, j)] = min(first.get((s, j), np.inf), t)
    for s, j, t in zip(out_t["sample"], out_t["neuron"], out_t["time"]):
        assert abs(first[(s, j)] - t) < 1e-9


@pytest.mark.parametrize("t_ref", [0.0, 0.3])
def test_multi_layer_backward_matches_finite_differences(t_ref):
    rows, w, d = case(seed=3)
    n = delgrad.Neuron(1.5, 1.0, 1.0, mode="multi", t_ref=t_ref)

    def run(w, d, rows):
        out = _core.layer_forward(batch(rows), w, d, "synaptic", n, 2)
        o = out.to_pydict()
        c = np.array([0.3 + 0.2 * j - 0.05 * k for k, j in enumerate(o["neuron"])])
        return out, c, float(np.dot(c, o["time"])), list(zip(o["sample"], o["neuron"]))

    out, c, _, struct0 = run(w, d, rows)
    gw, gd, gin = _core.layer_backward(batch(rows), w, d, "synaptic", n, out, c, 2)
    checked = 0

    def fd(f):
        lp, sp = f(H)
        lm, sm = f(-H)
        return (lp - lm) / (2 * H) if sp == struct0 and sm == struct0 else None

    for idx in np.ndindex(w.shape):
        for arr, g in ((w, gw), (d, gd)):

            def f(e, arr=arr, idx=idx):
                a = arr.copy()
                a[idx] += e
                ww, dd = (a, d) if arr is w else (w, a)
                _, _, loss_val, st = run(ww, dd, rows)
                # the loss weights c are tied to the unperturbed spike order
                return loss_val, st

            num = fd(f)
            if num is not None:
                assert abs(g[idx] - num) <= 1e-5 * (1 + abs(num)), (idx, g[idx], num)
                checked += 1
    assert checked > 15


@pytest.mark.parametrize("kind", ["max", "exp_mean"])
def test_readout_values_and_gradients(kind):
    rng = np.random.default_rng(7)
    rows = [(s, j, float(rng.uniform(0, 5))) for s in range(2) for j in range(4) for _ in range(3)]
    w = rng.uniform(-1, 1, (3, 4))
    d = rng.uniform(0, 1, (3, 4))
    n = delgrad.Neuron(2.0, 1.0, 1.0, mode="multi")
    labels = np.array([0, 2])

    def loss(w, d, rows):
        y = _core.readout_forward(batch(rows), w, d, "synaptic", n, 2, kind, 6.0)
        return _core.readout_cross_entropy(y, labels)

    val, dy, pred = loss(w, d, rows)
    assert pred.shape == (2,)
    gw, gd, gin = _core.readout_backward(batch(rows), w, d, "synaptic", n, 2, kind, 6.0, dy)
    for idx in np.ndindex(w.shape):
        for arr, g in ((w, gw), (d, gd)):
            ap, am = arr.copy(), arr.copy()
            ap[idx] += H
            am[idx] -= H
            lp = loss(ap, d, rows)[0] if arr is w else loss(w, ap, rows)[0]
            lm = loss(am, d, rows)[0] if arr is w else loss(w, am, rows)[0]
            num = (lp - lm) / (2 * H)
            assert abs(g[idx] - num) <= 1e-5 * (1 + abs(num)), (idx, g[idx], num)
    for r in range(len(rows)):
        rp, rm = list(rows), list(rows)
        rp[r] = (rows[r][0], rows[r][1], rows[r][2] + H)
        rm[r] = (rows[r][0], rows[r][1], rows[r][2] - H)
        num = (loss(w, d, rp)[0] - loss(w, d, rm)[0]) / (2 * H)
        assert abs(gin[r] - num) <= 1e-5 * (1 + abs(num)), (r, gin[r], num)


def test_ttfs_network_calls_refuse_a_multi_neuron_clearly():
    n = delgrad.Neuron(mode="multi")
    rows, w, d = case()
    s = _core.SpikeSet(batch(rows), 2)
    with pytest.raises(_core.ParameterError, match="multi_network_forward"):
        _core.network_forward(s, None, [(w, "synaptic", d)], n)


@pytest.mark.parametrize("t_ref", [0.0, 0.2])
def test_multi_network_recurrent_backward_matches_finite_differences(t_ref):
    rng = np.random.default_rng(11)
    rows, w1, d1 = case(seed=5, n_in=3, n_out=3)
    w2 = rng.uniform(-0.5, 4.0, (2, 3))
    d2 = rng.uniform(0.0, 1.0, (2, 3))
    rw = rng.uniform(-0.8, 0.6, (3, 3))
    rd = rng.uniform(0.1, 1.0, (3, 3))
    n = delgrad.Neuron(2.0, 1.0, 1.0, mode="multi", t_ref=t_ref)
    s = _core.SpikeSet(batch(rows), 2)
    params = [w1, d1, rw, rd, w2, d2]

    def run(p):
        layers = [(p[0], "synaptic", p[1]), (p[4], "synaptic", p[5])]
        rec = [(p[2], "synaptic", p[3]), None]
        tr = _core.multi_network_forward(s, None, layers, n, rec)
        o = tr.spikes(-1).to_pydict()
        c = np.array([0.4 + 0.3 * j for j in o["neuron"]]) * np.where(np.array(o["sample"]) == 1, -0.5, 1.0)
        struct = [tuple(tr.spikes(index).to_pydict()["neuron"]) for index in range(2)]
        return tr, c, float(np.dot(c, o["time"])), struct, layers, rec

    tr, c, _, struct0, layers, rec = run(params)
    assert sum(tr.n_spikes(index) for index in range(2)) > 12
    (g_ff, g_rec, g_in) = _core.multi_network_backward(s, None, layers, n, tr, c, rec)
    assert g_rec[1] is None and g_rec[0] is not None
    analytic = [g_ff[0][0], g_ff[0][1], g_rec[0][0], g_rec[0][1], g_ff[1][0], g_ff[1][1]]
    checked = 0
    for q, arr in enumerate(params):
        for idx in np.ndindex(arr.shape):
            vals = []
            for e in (H, -H):
                p = [x.copy() for x in params]
                p[q][idx] += e
                _, _, lv, st, _, _ = run(p)
                vals.append((lv, st))
            if vals[0][1] != struct0 or vals[1][1] != struct0:
                continue
            num = (vals[0][0] - vals[1][0]) / (2 * H)
            assert abs(analytic[q][idx] - num) <= 1e-5 * (1 + abs(num)), (q, idx, analytic[q][idx], num)
            checked += 1
    assert checked > 30
    assert g_in.shape == (len(rows),)


def test_trace_from_tables_accepts_repeated_spikes_in_multi_mode():
    rows, w, d = case()
    n = delgrad.Neuron(2.0, 1.0, 1.0, mode="multi")
    out = _core.layer_forward(batch(rows), w, d, "synaptic", n, 2)
    with pytest.raises(_core.SpikeError):
        _core.Trace.from_tables([out], [3], 2)
    tr = _core.Trace.from_tables([out], [3], 2, mode="multi")
    assert tr.n_spikes(0) == out.num_rows
