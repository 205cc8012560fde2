"""NIR interchange (delgrad.nir): round trips through NIR files, the exported graphs read node by
node, graphs written the way snnTorch and Norse write them, refusals. ``NirSim`` integrates NIR's
own equations (fixed-step RK4, Dirac inputs, bisection at thresholds) straight from the graph's
nodes, so the exported graphs and the weight scaling are checked against NIR's definitions, not
only against delgrad.nir's inverse."""

from __future__ import annotations

import heapq
import json
import math
from collections import defaultdict

import delgrad
import nir
import numpy as np
import pyarrow as pa
import pytest
from delgrad import cli
from delgrad.multi import MultiNetwork, Readout
from delgrad.network import Layer
from delgrad.nir import from_nir, load_nir, save_nir, to_nir

KINDS = ("none", "synaptic", "axonal", "dendritic")


def spike_set(n_in: int, n_samples: int, per: int, t_max: float, seed: int) -> tuple[delgrad.SpikeSet, list]:
    rng = np.random.default_rng(seed)
    rows = [(s, i, float(rng.uniform(0.0, t_max))) for s in range(n_samples) for i in range(n_in) for _ in range(per)]
    s, n, t = zip(*rows)
    table = pa.record_batch(
        {"sample": pa.array(s, pa.uint32()), "neuron": pa.array(n, pa.uint32()), "time": pa.array(t, pa.float64())}
    )
    return delgrad.SpikeSet(table, n_samples), rows


def ttfs_net(kind: str, sizes=(5, 7, 3), seed: int = 1) -> delgrad.Network:
    return delgrad.Network.random(
        list(sizes), delgrad.Neuron(2.0, 1.0, 1.0), delay_kind=kind, delay_range=(0.0, 0.5), seed=seed
    )


def multi_net(
    kind: str, recurrent: bool, readout: str, sizes=(3, 6, 5, 4), t_end: float = 40.0, t_ref: float = 0.0, seed: int = 3
) -> MultiNetwork:
    neuron = delgrad.Neuron(tau_m=1.5, tau_s=1.0, theta=1.0, mode="multi", t_ref=t_ref, t_end=t_end)
    ro = delgrad.Neuron(tau_m=2.0, tau_s=0.8, theta=1.0, mode="multi", t_end=t_end)
    return MultiNetwork.random(
        list(sizes),
        neuron,
        ro,
        delay_kind=kind,
        weight_mean=(2.2, 0.5),
        weight_std=(0.6, 0.5),
        delay_range=(0.0, 3.0),
        readout_kind=readout,
        t_end=t_end,
        tau_w=7.0 if readout == "exp_mean" else None,
        recurrent=recurrent,
        recurrent_std=0.3,
        seed=seed,
    )


def through_file(graph: nir.NIRGraph, tmp_path) -> nir.NIRGraph:
    path = tmp_path / "net.nir"
    nir.write(path, graph)
    return nir.read(path)


def assert_same_layers(a, b):
    assert len(a) == len(b)
    for la, lb in zip(a, b):
        if la is None or lb is None:
            assert la is None and lb is None
            continue
        assert la.delay_kind == lb.delay_kind
        np.testing.assert_array_equal(la.weights, lb.weights)
        np.testing.assert_array_equal(la.delays, lb.delays)


# --- an independent interpreter of NIR graphs ---------------------------------------------------


class NirSim:
    """Runs a flat NIR graph on input spikes by NIR's equations: ``tau_syn dI/dt = -I + w_in S``,
    ``tau_mem dv/dt = (v_leak - v) + r I`` with ``S`` Dirac pulses of the Linear's weight, spikes
    where ``v`` crosses ``v_threshold``, reset to ``v_reset``; Delay shifts events. RK4 steps of
    at most ``dt``, cut at every event; threshold crossings by bisection on the step length.
    ``first_spike_only`` silences a neuron after its first spike (the TTFS reading)."""

    def __init__(self, graph: nir.NIRGraph, dt: float = 1e-2, first_spike_only: bool = False) -> None:
        self.g, self.dt, self.first_only = graph, dt, first_spike_only
        self.succ: dict[str, list[str]] = defaultdict(list)
        for a, b in graph.edges:
            self.succ[a].append(b)
        self.cells = [k for k, v in graph.nodes.items() if type(v).__name__ in ("CubaLIF", "CubaLI")]

    def run(self, inputs: list[tuple[int, float]], t_stop: float, tau_w: float | None = None):
        """Spikes ``{node: [(neuron, time)]}``, and per CubaLI node the max of ``v`` over
        ``[0, t_stop]`` and ``(1/t_stop) ∫ exp(-t/tau_w) v dt``."""
        nodes = self.g.nodes
        state = {k: [np.zeros(nodes[k].tau_syn.size), np.zeros(nodes[k].tau_syn.size)] for k in self.cells}
        done = {k: np.zeros(nodes[k].tau_syn.size, bool) for k in self.cells}
        vmax = {k: np.zeros(nodes[k].tau_syn.size) for k in self.cells}
        wint = {k: np.zeros(nodes[k].tau_syn.size) for k in self.cells}
        spikes: dict[str, list[tuple[int, float]]] = defaultdict(list)
        heap: list = []
        seq = 0

        def deliver(k: str, t: float, c: int, amount: float) -> None:
            nonlocal seq
            node, kind = nodes[k], type(nodes[k]).__name__
            if kind == "Input":
                for s in self.succ[k]:
                    deliver(s, t, c, amount)
            elif kind in ("Linear", "Affine"):
                col = node.weight[:, c]
                for j in np.flatnonzero(col):
                    for s in self.succ[k]:
                        deliver(s, t, int(j), col[j] * amount)
            elif kind == "Delay":
                for s in self.succ[k]:
                    seq += 1
                    heapq.heappush(heap, (t + node.delay[c], seq, s, c, amount))
            elif kind in ("CubaLIF", "CubaLI"):
                state[k][0][c] += node.w_in[c] * amount / node.tau_syn[c]
            elif kind != "Output":
                raise NotImplementedError(kind)

        for c, t in inputs:
            seq += 1
            heapq.heappush(heap, (t, seq, "input", c, 1.0))

        def advance(h: float) -> None:
            for k in self.cells:
                i0, v0 = state[k]
                im, vm = rk4(nodes[k], i0, v0, h / 2)
                i1, v1 = rk4(nodes[k], i0, v0, h)
                # The parabola through the step's three points for the maximum in between.
                a, b = 2 * (v0 - 2 * vm + v1), -3 * v0 + 4 * vm - v1
                x = np.where(a < 0, -b / np.where(a < 0, 2 * a, 1.0), 0.0)
                peak = np.where((x > 0) & (x < 1), v0 + b * x + a * x * x, v1)
                vmax[k] = np.maximum(vmax[k], np.maximum(v1, peak))
                if tau_w is not None:  # Simpson on the step
                    w0, wm, w1 = (math.exp(-x / tau_w) for x in (t, t + h / 2, t + h))
                    wint[k] += h / 6 * (w0 * v0 + 4 * wm * vm + w1 * v1) / t_stop
                state[k] = [i1, v1]

        t = 0.0
        while t < t_stop:
            while heap and heap[0][0] <= t:
                _, _, k, c, amount = heapq.heappop(heap)
                deliver(k, t, c, amount)
            h = min(self.dt, (heap[0][0] if heap else math.inf) - t, t_stop - t)
            # The earliest threshold crossing inside the step, if any, ends the step there.
            first, who = h, []
            for k in self.cells:
                node = nodes[k]
                if type(node).__name__ != "CubaLIF":
                    continue
                _, v1 = rk4(node, *state[k], h)
                cross = np.flatnonzero((v1 > node.v_threshold) & ~done[k])
                if cross.size == 0:
                    continue
                lo, hi = np.zeros(cross.size), np.full(cross.size, h)
                i0, v0 = state[k][0][cross], state[k][1][cross]
                sub = _Sub(node, cross)
                for _ in range(60):
                    mid = (lo + hi) / 2
                    above = rk4(sub, i0, v0, mid)[1] > node.v_threshold[cross]
                    hi, lo = np.where(above, mid, hi), np.where(above, lo, mid)
                for c, s in zip(cross, hi):
                    if s < first - 1e-15:
                        first, who = s, [(k, int(c))]
                    elif abs(s - first) <= 1e-15:
                        who.append((k, int(c)))
            advance(first)
            t += first
            for k, c in who:
                state[k][1][c] = nodes[k].v_reset[c]
                spikes[k].append((c, t))
                if self.first_only:
                    done[k][c] = True
                for s in self.succ[k]:
                    deliver(s, t, c, 1.0)
        return spikes, vmax, wint


def rk4(p, i: np.ndarray, v: np.ndarray, s) -> tuple[np.ndarray, np.ndarray]:
    """One RK4 step of length ``s`` (scalar or per neuron) of NIR's CubaLIF/CubaLI equations with
    the parameters of ``p`` (a node, or some of its neurons)."""

    def f(i, v):
        return -i / p.tau_syn, (p.v_leak - v + p.r * i) / p.tau_mem

    a1 = f(i, v)
    a2 = f(i + s / 2 * a1[0], v + s / 2 * a1[1])
    a3 = f(i + s / 2 * a2[0], v + s / 2 * a2[1])
    a4 = f(i + s * a3[0], v + s * a3[1])
    return (i + s / 6 * (a1[0] + 2 * a2[0] + 2 * a3[0] + a4[0]), v + s / 6 * (a1[1] + 2 * a2[1] + 2 * a3[1] + a4[1]))


class _Sub:
    """The parameters of some neurons of a node."""

    def __init__(self, node, idx):
        self.tau_syn, self.tau_mem = node.tau_syn[idx], node.tau_mem[idx]
        self.r, self.v_leak = node.r[idx], node.v_leak[idx]


def inputs_of(rows, sample: int) -> list[tuple[int, float]]:
    return [(n, t) for s, n, t in rows if s == sample]


def by_neuron(pairs, n: int) -> list[list[float]]:
    out: list[list[float]] = [[] for _ in range(n)]
    for c, t in pairs:
        out[c].append(t)
    return [sorted(x) for x in out]


def trace_by_neuron(trace, layer: int, sample: int, n: int) -> list[list[float]]:
    d = trace.spikes(layer).to_pydict()
    return by_neuron([(c, t) for s, c, t in zip(d["sample"], d["neuron"], d["time"]) if s == sample], n)


def assert_spikes_close(a: list[list[float]], b: list[list[float]], tol: float) -> None:
    assert [len(x) for x in a] == [len(x) for x in b]
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=0, atol=tol)


# --- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_ttfs_network_round_trip_through_a_nir_file(kind, tmp_path):
    net = ttfs_net(kind)
    back = from_nir(through_file(to_nir(net), tmp_path))
    assert type(back) is delgrad.Network and back.neuron == net.neuron
    assert_same_layers(net.layers, back.layers)
    s, _ = spike_set(5, 6, 1, 1.0, seed=0)
    a, b = net.forward(s), back.forward(s)
    assert a.n_spikes(1) > 0
    for index in range(len(net.layers)):
        assert a.spikes(index).equals(b.spikes(index))


@pytest.mark.parametrize(
    "kind,recurrent,readout",
    [
        ("synaptic", False, "max"),
        ("synaptic", True, "exp_mean"),
        ("axonal", True, "max"),
        ("dendritic", False, "exp_mean"),
        ("none", True, "max"),
    ],
)
def test_multi_network_round_trip_through_a_nir_file(kind, recurrent, readout, tmp_path):
    net = multi_net(kind, recurrent, readout)
    back = from_nir(through_file(to_nir(net), tmp_path))
    assert type(back) is MultiNetwork and repr(back) == repr(net)
    assert back.neuron == net.neuron and back.readout.neuron == net.readout.neuron
    assert (back.readout.kind, back.readout.t_end, back.readout.tau_w) == (readout, 40.0, net.readout.tau_w)
    assert_same_layers(net.layers, back.layers)
    assert_same_layers(net.recurrent, back.recurrent)
    assert_same_layers([net.readout.layer], [back.readout.layer])
    s, _ = spike_set(3, 3, 4, 10.0, seed=1)
    a, b = net.forward(s), back.forward(s)
    assert a.trace.n_spikes(0) > 3 * s.n_samples
    np.testing.assert_array_equal(a.values, b.values)
    for index in range(a.trace.n_layers):
        assert a.trace.spikes(index).equals(b.trace.spikes(index))


def test_save_and_load_nir_keep_the_refractory_time_in_metadata(tmp_path):
    net = multi_net("axonal", False, "max", t_ref=0.3)
    with pytest.warns(UserWarning, match="no refractory time"):
        save_nir(net, tmp_path / "m.nir")
    back = load_nir(tmp_path / "m.nir")
    assert back.neuron.t_ref == 0.3 and repr(back) == repr(net)
    graph = nir.read(tmp_path / "m.nir")
    assert json.loads(graph.metadata["delgrad"])["neuron"]["t_ref"] == 0.3


def test_cli_export_nir(tmp_path, capsys):
    net = ttfs_net("synaptic")
    (tmp_path / "run" / "model").mkdir(parents=True)
    net.save(tmp_path / "run" / "model" / "network.npz")
    assert cli.main(["export-nir", str(tmp_path / "run"), str(tmp_path / "a.nir")]) == 0
    assert_same_layers(net.layers, load_nir(tmp_path / "a.nir").layers)
    m = multi_net("synaptic", True, "max")
    (tmp_path / "mrun" / "model").mkdir(parents=True)
    m.save(tmp_path / "mrun" / "model" / "multi_network.npz")
    assert cli.main(["export-nir", str(tmp_path / "mrun"), str(tmp_path / "b.nir")]) == 0
    assert repr(load_nir(tmp_path / "b.nir")) == repr(m)
    assert "b.nir" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="network.npz"):
        cli.main(["export-nir", str(tmp_path), str(tmp_path / "c.nir")])


# --- the exported graph, read node by node --------------------------------------------------------


def effective(graph: nir.NIRGraph, src: str, dst: str, n_in: int):
    """Dense (weights, per-synapse delays) of the chain from src to dst, followed edge by edge
    (each node on it has one successor), from the plain NIR nodes."""
    succ = defaultdict(list)
    for a, b in graph.edges:
        succ[a].append(b)
    w, d = np.eye(n_in), np.zeros((n_in, n_in))  # weight and delay, (channel, source)
    (k,) = succ[src]
    while k != dst:
        node = graph.nodes[k]
        if isinstance(node, nir.Delay):
            d = d + node.delay[:, None]
        else:
            contrib = node.weight[:, :, None] * w[None, :, :]  # target, channel, source
            mask = contrib != 0
            lo = np.where(mask, d[None, :, :], np.inf).min(axis=1)
            hi = np.where(mask, d[None, :, :], -np.inf).max(axis=1)
            assert np.all((lo == hi) | ~mask.any(axis=1)), "one synapse, two delays"
            w, d = contrib.sum(axis=1), np.where(mask.any(axis=1), lo, 0.0)
        (k,) = succ[k]
    return w, d


@pytest.mark.parametrize("kind", KINDS)
def test_exported_cuba_lif_parameters_and_weights(kind):
    net = ttfs_net(kind)
    g = to_nir(net)
    n = net.neuron
    assert json.loads(g.metadata["delgrad"])["network"] == "Network"
    for index, layer in enumerate(net.layers):
        lif = g.nodes[f"layer{index}"]
        assert isinstance(lif, nir.CubaLIF)
        for field, value in (
            ("tau_syn", n.tau_s),
            ("tau_mem", n.tau_m),
            ("r", n.tau_m),
            ("w_in", n.tau_s),
            ("v_threshold", n.theta),
            ("v_leak", 0.0),
            ("v_reset", 0.0),
        ):
            np.testing.assert_array_equal(getattr(lif, field), np.full(layer.shape[0], value), err_msg=field)
        # NIR's Dirac pulse of area w jumps I by w_in w / tau_syn; r I / tau_mem is delgrad's current.
        factor = lif.r * lif.w_in / lif.tau_syn / lif.tau_mem
        w, d = effective(g, "input" if index == 0 else f"layer{index - 1}", f"layer{index}", layer.shape[1])
        np.testing.assert_allclose(w * factor[:, None], layer.weights, rtol=1e-15)
        if kind == "none":
            expect = np.zeros(layer.shape)
        elif kind == "synaptic":
            expect = layer.delays
        else:
            expect = np.broadcast_to(layer.delays if kind == "axonal" else layer.delays[:, None], layer.shape)
        np.testing.assert_array_equal(d, expect)
    assert [type(v).__name__ for v in g.nodes.values()].count("Delay") == (0 if kind == "none" else 2)


@pytest.mark.parametrize("kind", ["synaptic", "axonal"])
def test_exported_ttfs_graph_run_by_nir_equations_gives_the_first_spikes(kind):
    net = ttfs_net(kind, sizes=(4, 5, 3), seed=2)
    g = to_nir(net)
    s, rows = spike_set(4, 2, 1, 1.0, seed=3)
    trace = net.forward(s)
    for sample in range(2):
        spikes, _, _ = NirSim(g, first_spike_only=True).run(inputs_of(rows, sample), t_stop=6.0)
        for index in range(2):
            assert_spikes_close(
                by_neuron(spikes[f"layer{index}"], net.sizes[index + 1]),
                trace_by_neuron(trace, index, sample, net.sizes[index + 1]),
                1e-8,
            )
    # Run as NIR means it (reset, every spike): the first layer's first spikes are the same, and
    # the neurons go on spiking, which a TTFS network ignores.
    spikes, _, _ = NirSim(g).run(inputs_of(rows, 0), t_stop=6.0)
    full = by_neuron(spikes["layer0"], 5)
    first = trace.first_times(0)[0]
    np.testing.assert_allclose([x[0] if x else np.inf for x in full], first, atol=1e-8)
    assert sum(len(x) for x in full) > np.isfinite(first).sum()


@pytest.mark.parametrize("readout", ["max", "exp_mean"])
def test_exported_multi_graph_run_by_nir_equations(readout):
    net = multi_net("synaptic", True, readout, sizes=(3, 4, 3), t_end=12.0, seed=5)
    g = to_nir(net)
    assert isinstance(g.nodes["readout"], nir.CubaLI)
    s, rows = spike_set(3, 2, 3, 6.0, seed=4)
    out = net.forward(s)
    assert out.trace.n_spikes(0) > 4
    for sample in range(2):
        spikes, vmax, wint = NirSim(g).run(inputs_of(rows, sample), t_stop=12.0, tau_w=net.readout.tau_w)
        assert_spikes_close(by_neuron(spikes["layer0"], 4), trace_by_neuron(out.trace, 0, sample, 4), 1e-7)
        got = vmax["readout"] if readout == "max" else wint["readout"]
        np.testing.assert_allclose(got, out.values[sample], rtol=0, atol=1e-6)


# --- graphs written by other libraries ----------------------------------------------------------


def norse_like(w1, w2, tm, ts, thr, tm_ro, ts_ro, r=None, delay=None) -> nir.NIRGraph:
    """As Norse writes LIFCell / LICell networks: Affine (bias 0), CubaLIF with r = w_in = 1,
    CubaLI readout; optionally a Delay after the Affine and per-neuron r."""
    n_h, n_in = w1.shape
    n_out = w2.shape[0]
    ones = np.ones(n_h)
    nodes = {
        "input": nir.Input(input_type={"input": np.array([n_in])}),
        "fc1": nir.Affine(weight=w1, bias=np.zeros(n_h)),
        "lif1": nir.CubaLIF(
            tau_syn=ts * ones,
            tau_mem=tm * ones,
            r=ones if r is None else r,
            v_leak=0 * ones,
            v_threshold=thr * ones,
            v_reset=0 * ones,
            w_in=ones,
        ),
        "fc2": nir.Linear(weight=w2),
        "li": nir.CubaLI(
            tau_syn=np.full(n_out, ts_ro),
            tau_mem=np.full(n_out, tm_ro),
            r=np.ones(n_out),
            v_leak=np.zeros(n_out),
            w_in=np.ones(n_out),
        ),
        "output": nir.Output(output_type={"output": np.array([n_out])}),
    }
    edges = [("input", "fc1"), ("fc1", "lif1"), ("lif1", "fc2"), ("fc2", "li"), ("li", "output")]
    if delay is not None:
        nodes["d1"] = nir.Delay(delay=delay)
        edges[1:2] = [("fc1", "d1"), ("d1", "lif1")]
    return nir.NIRGraph(nodes=nodes, edges=edges)


def test_norse_like_graph_loads_with_weights_scaled_and_runs(tmp_path):
    rng = np.random.default_rng(7)
    tm, ts, thr, tm_ro, ts_ro, t_end = 1.7, 0.6, 0.8, 2.5, 0.9, 20.0
    w1, w2 = rng.normal(1.5, 0.5, (5, 3)), rng.normal(0.5, 0.5, (4, 5))
    g = through_file(norse_like(w1, w2, tm, ts, thr, tm_ro, ts_ro), tmp_path)
    net = from_nir(g, t_end=t_end)
    # By hand: w r w_in / (tau_mem tau_syn), r = w_in = 1.
    neuron = delgrad.Neuron(tm, ts, thr, mode="multi", t_end=t_end)
    ro_neuron = delgrad.Neuron(tm_ro, ts_ro, 1.0, mode="multi", t_end=t_end)
    expect = MultiNetwork([Layer(w1 / tm / ts)], neuron, Readout(Layer(w2 / tm_ro / ts_ro), ro_neuron, "max", t_end))
    assert net.neuron == neuron and net.readout.neuron == ro_neuron and net.readout.kind == "max"
    np.testing.assert_allclose(net.layers[0].weights, expect.layers[0].weights, rtol=1e-15)
    np.testing.assert_allclose(net.readout.layer.weights, expect.readout.layer.weights, rtol=1e-15)
    s, _ = spike_set(3, 4, 3, 8.0, seed=8)
    a, b = net.forward(s), expect.forward(s)
    assert a.trace.n_spikes(0) > 4
    np.testing.assert_allclose(a.values, b.values, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        a.trace.spikes(0)["time"].to_numpy(), b.trace.spikes(0)["time"].to_numpy(), rtol=0, atol=1e-12
    )
    other = from_nir(g, t_end=t_end, readout_kind="exp_mean", tau_w=5.0)
    assert (other.readout.kind, other.readout.tau_w) == ("exp_mean", 5.0)


def test_tiny_foreign_graph_first_spikes_match_integrating_nir_equations():
    # Two neurons with different r (per-neuron factors), a dendritic Delay, tau_mem/tau_syn = 2.9.
    w1 = np.array([[1.1, 0.8], [0.9, -0.3]])
    r = np.array([1.0, 1.8])
    g = norse_like(w1, np.ones((1, 2)), tm=2.9, ts=1.0, thr=0.35, tm_ro=2.0, ts_ro=1.0, r=r, delay=np.array([0.0, 0.4]))
    net = from_nir(g, t_end=10.0)
    assert net.layers[0].delay_kind == "dendritic"
    np.testing.assert_array_equal(net.layers[0].delays, [0.0, 0.4])
    rows = [(0, 0, 0.2), (0, 1, 0.5), (0, 0, 1.1)]
    s = delgrad.SpikeSet(
        pa.record_batch(
            {
                "sample": pa.array([0, 0, 0], pa.uint32()),
                "neuron": pa.array([0, 1, 0], pa.uint32()),
                "time": pa.array([0.2, 0.5, 1.1], pa.float64()),
            }
        ),
        1,
    )
    first = net.forward(s).trace.first_times(0)[0]
    spikes, _, _ = NirSim(g).run(inputs_of(rows, 0), t_stop=6.0)
    sim_first = [x[0] if x else np.inf for x in by_neuron(spikes["lif1"], 2)]
    assert np.all(np.isfinite(first))
    np.testing.assert_allclose(first, sim_first, rtol=0, atol=1e-6)


def snntorch_like(w1, w_rec, w2, alpha, beta, thr, dt) -> nir.NIRGraph:
    """As snnTorch's export writes RSynaptic: r = tau_mem/dt, w_in = tau_syn/dt, the recurrent
    layer a nested NIRGraph (input -> lif -> output, lif -> w_rec -> lif)."""
    n_h, n_in = w1.shape
    n_out = w2.shape[0]
    tau_syn, tau_mem = dt / (1 - alpha) * np.ones(n_h), dt / (1 - beta) * np.ones(n_h)
    rsyn = nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type=[n_h]),
            "lif": nir.CubaLIF(
                v_threshold=thr * np.ones(n_h),
                tau_mem=tau_mem,
                tau_syn=tau_syn,
                r=tau_mem / dt,
                v_leak=np.zeros(n_h),
                w_in=tau_syn / dt,
            ),
            "w_rec": nir.Linear(weight=w_rec),
            "output": nir.Output(output_type=[n_h]),
        },
        edges=[("input", "lif"), ("lif", "w_rec"), ("w_rec", "lif"), ("lif", "output")],
    )
    ro_syn, ro_mem = np.full(n_out, dt / (1 - alpha)), np.full(n_out, dt / (1 - beta))
    nodes = {
        "input": nir.Input(input_type={"input": np.array([n_in])}),
        "linear1": nir.Affine(weight=w1, bias=np.zeros(n_h)),
        "rsyn": rsyn,
        "linear2": nir.Linear(weight=w2),
        "li": nir.CubaLI(tau_syn=ro_syn, tau_mem=ro_mem, r=ro_mem / dt, v_leak=np.zeros(n_out), w_in=ro_syn / dt),
        "output": nir.Output(output_type={"output": np.array([n_out])}),
    }
    edges = [("input", "linear1"), ("linear1", "rsyn"), ("rsyn", "linear2"), ("linear2", "li"), ("li", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges)


def test_snntorch_like_recurrent_subgraph_loads_as_a_recurrent_layer(tmp_path):
    rng = np.random.default_rng(9)
    dt, alpha, beta, thr = 0.25, 0.8, 0.9, 1.2
    w1, w_rec, w2 = rng.normal(0.1, 0.03, (4, 3)), rng.normal(0.0, 0.02, (4, 4)), rng.normal(0.05, 0.03, (2, 4))
    net = from_nir(through_file(snntorch_like(w1, w_rec, w2, alpha, beta, thr, dt), tmp_path), t_end=15.0)
    # r w_in / (tau_mem tau_syn) = 1 / dt^2 for this parametrisation.
    tm, ts = dt / (1 - beta), dt / (1 - alpha)
    assert (net.neuron.tau_m, net.neuron.tau_s, net.neuron.theta) == (tm, ts, thr)
    np.testing.assert_allclose(net.layers[0].weights, w1 / dt**2, rtol=1e-14)
    np.testing.assert_allclose(net.recurrent[0].weights, w_rec / dt**2, rtol=1e-14)
    np.testing.assert_allclose(net.readout.layer.weights, w2 / dt**2, rtol=1e-14)
    neuron = delgrad.Neuron(tm, ts, thr, mode="multi", t_end=15.0)
    expect = MultiNetwork(
        [Layer(w1 / dt**2)],
        neuron,
        Readout(Layer(w2 / dt**2), delgrad.Neuron(tm, ts, 1.0, mode="multi", t_end=15.0), "max", 15.0),
        [Layer(w_rec / dt**2)],
    )
    s, _ = spike_set(3, 3, 3, 6.0, seed=2)
    a, b = net.forward(s), expect.forward(s)
    assert a.trace.n_spikes(0) > 3
    np.testing.assert_allclose(a.values, b.values, rtol=1e-12, atol=1e-12)


def test_foreign_spiking_output_loads_as_ttfs_network_only_when_asked():
    rng = np.random.default_rng(3)
    n = 3
    lif = nir.CubaLIF(
        tau_syn=np.full(n, 0.5),
        tau_mem=np.full(n, 1.0),
        r=np.ones(n),
        v_leak=np.zeros(n),
        v_threshold=np.full(n, 0.2),
        w_in=np.ones(n),
    )
    g = nir.NIRGraph.from_list(nir.Linear(weight=rng.normal(1, 0.2, (n, 2))), lif)
    with pytest.raises(ValueError, match="mode='ttfs'"):
        from_nir(g)
    net = from_nir(g, mode="ttfs")
    assert type(net) is delgrad.Network and net.neuron == delgrad.Neuron(1.0, 0.5, 0.2)
    np.testing.assert_allclose(net.layers[0].weights, g.nodes["linear"].weight / 0.5, rtol=1e-15)


# --- refusals -------------------------------------------------------------------------------------


def base_graph(changes: dict | None = None) -> nir.NIRGraph:
    rng = np.random.default_rng(0)
    g = norse_like(rng.normal(1, 0.3, (3, 2)), rng.normal(1, 0.3, (2, 3)), 1.5, 1.0, 1.0, 2.0, 1.0)
    for (node, field), value in (changes or {}).items():
        setattr(g.nodes[node], field, value)
    return g


@pytest.mark.parametrize(
    "changes,message",
    [
        ({("fc1", "bias"): np.array([0.0, 0.1, 0.0])}, r"node 'fc1' \(Affine\): bias must be 0"),
        ({("lif1", "v_leak"): np.array([0.0, -0.1, 0.0])}, r"node 'lif1' \(CubaLIF\): v_leak must be 0"),
        ({("lif1", "v_reset"): np.full(3, -0.5)}, r"node 'lif1' \(CubaLIF\): v_reset must be 0"),
        ({("lif1", "tau_mem"): np.array([1.5, 1.5, 1.6])}, r"node 'lif1' \(CubaLIF\): tau_mem differs across neurons"),
        ({("lif1", "tau_syn"): np.array([1.0, 0.9, 1.0])}, r"node 'lif1' \(CubaLIF\): tau_syn differs across neurons"),
        ({("lif1", "v_threshold"): np.array([1.0, 1.0, 2.0])}, r"node 'lif1' \(CubaLIF\): v_threshold differs"),
        ({("li", "v_leak"): np.full(2, 0.3)}, r"node 'li' \(CubaLI\): v_leak must be 0"),
    ],
)
def test_refuses_parameters_delgrad_cannot_represent(changes, message):
    with pytest.raises(ValueError, match=message):
        from_nir(base_graph(changes), t_end=10.0)


def test_refuses_unequal_neurons_across_layers():
    g = base_graph()
    lif = g.nodes["lif1"]
    g.nodes["lif2"] = nir.CubaLIF(
        tau_syn=np.full(3, 1.0),
        tau_mem=np.full(3, 1.7),
        r=np.ones(3),
        v_leak=np.zeros(3),
        v_threshold=lif.v_threshold.copy(),
        w_in=np.ones(3),
    )
    g.nodes["fc_mid"] = nir.Linear(weight=np.eye(3))
    g.edges[g.edges.index(("lif1", "fc2"))] = ("lif1", "fc_mid")
    g.edges += [("fc_mid", "lif2"), ("lif2", "fc2")]
    with pytest.raises(ValueError, match=r"node 'lif2' \(CubaLIF\): tau_mem = 1.7 but node 'lif1' has 1.5"):
        from_nir(g, t_end=10.0)


@pytest.mark.parametrize(
    "node,message",
    [
        (nir.IF(r=np.ones(3), v_threshold=np.ones(3), v_reset=np.zeros(3)), r"node 'lif1' \(IF\) is not supported"),
        (
            nir.LIF(tau=np.ones(3), r=np.ones(3), v_leak=np.zeros(3), v_threshold=np.ones(3), v_reset=np.zeros(3)),
            r"node 'lif1' \(LIF\) is not supported: it has no synaptic current",
        ),
    ],
)
def test_refuses_neuron_models_without_a_delgrad_form(node, message):
    g = base_graph()
    g.nodes["lif1"] = node
    with pytest.raises(ValueError, match=message):
        from_nir(g, t_end=10.0)


def test_refuses_convolutions_and_li_readouts():
    g = base_graph()
    g.nodes["fc1"] = nir.Conv2d(
        input_shape=(1, 2), weight=np.ones((3, 1, 1, 1)), stride=1, padding=0, dilation=1, groups=1, bias=np.zeros(3)
    )
    with pytest.raises(ValueError, match=r"node 'fc1' \(Conv2d\) is not supported: delgrad layers are fully"):
        from_nir(g, t_end=10.0)
    g = base_graph()
    g.nodes["li"] = nir.LI(tau=np.ones(2), r=np.ones(2), v_leak=np.zeros(2))
    with pytest.raises(ValueError, match=r"node 'li' \(LI\) is not supported: .*CubaLI is"):
        from_nir(g, t_end=10.0)


def test_refuses_graphs_that_are_not_layered_chains():
    g = base_graph()
    g.nodes["skip"] = nir.Linear(weight=np.ones((2, 2)))
    g.edges += [("input", "skip"), ("skip", "li")]
    with pytest.raises(ValueError, match=r"node 'li' has inputs from"):
        from_nir(g, t_end=10.0)
    g = base_graph()
    g.nodes["d"] = nir.Delay(delay=np.array([0.1, -0.2, 0.0]))
    g.edges[g.edges.index(("fc1", "lif1"))] = ("fc1", "d")
    g.edges.append(("d", "lif1"))
    with pytest.raises(ValueError, match=r"node 'd' \(Delay\): delays must be >= 0"):
        from_nir(g, t_end=10.0)


def test_refuses_two_delays_for_one_synapse():
    # Source 0 reaches target 0 through two channels delayed differently.
    g = base_graph()
    g.nodes["fan"] = nir.Linear(weight=np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    g.nodes["d"] = nir.Delay(delay=np.array([0.1, 0.2, 0.0]))
    g.nodes["fc1"] = nir.Linear(weight=np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 1.0]]))
    g.edges[0:1] = [("input", "fan"), ("fan", "d"), ("d", "fc1")]
    with pytest.raises(ValueError, match=r"node 'fc1': source 0 reaches target 0 through channels with different"):
        from_nir(g, t_end=10.0)


def test_a_foreign_readout_needs_its_window():
    with pytest.raises(ValueError, match=r"pass t_end="):
        from_nir(base_graph())
