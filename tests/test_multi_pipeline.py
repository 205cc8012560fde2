"""Multi-spike networks end to end: MultiNetwork (EventProp through hidden layers and the
leaky-integrator readout) against finite differences, persistence, and the temporal pipeline."""

from __future__ import annotations

from pathlib import Path

import delgrad
import numpy as np
import polars as pl
import pytest
from delgrad import _core, pipeline
from delgrad.data.encoding import LatencyEncoder
from delgrad.data.temporal import temporal_patterns
from delgrad.multi import MultiNetwork

ROOT = Path(__file__).resolve().parents[1]


def small_net(kind: str = "synaptic", recurrent: bool = False, readout: str = "max") -> MultiNetwork:
    neuron = delgrad.Neuron(tau_m=1.5, tau_s=1.0, theta=1.0, mode="multi", t_ref=0.2, t_end=40.0)
    ro = delgrad.Neuron(tau_m=2.0, tau_s=1.0, theta=1.0, mode="multi", t_end=40.0)
    return MultiNetwork.random(
        [3, 6, 4],
        neuron,
        ro,
        delay_kind=kind,
        weight_mean=(2.2, 0.5),
        weight_std=(0.6, 0.5),
        delay_range=(0.0, 3.0),
        readout_kind=readout,
        t_end=40.0,
        recurrent=recurrent,
        recurrent_std=0.3,
        seed=3,
    )


def data(n: int = 5):
    x, y = temporal_patterns(n, n_channels=3, n_classes=4, gap=3.0, jitter=0.2, onset_max=2.0, span=12.0, seed=1)
    spikes, _ = LatencyEncoder(t_early=0.0, t_late=12.0, bias_time=None)(x)
    return delgrad.SpikeSet(spikes, n), y.astype(np.int64)


def loss_of(net: MultiNetwork, s, y) -> float:
    return _core.readout_cross_entropy(net.forward(s).values, y)[0]


@pytest.mark.parametrize(
    "kind,recurrent,readout",
    [("synaptic", False, "max"), ("axonal", True, "exp_mean"), ("dendritic", False, "exp_mean")],
)
def test_multi_network_gradients_match_finite_differences(kind, recurrent, readout):
    net = small_net(kind, recurrent, readout)
    s, y = data()
    out = net.forward(s)
    assert out.trace.n_spikes(0) > 2 * s.n_samples  # neurons do spike, several times
    loss, dy, _ = _core.readout_cross_entropy(out.values, y)
    grads = net.flat_grads(net.backward(s, out, dy))
    rng = np.random.default_rng(0)
    checked = 0
    for p, g in zip(net.params(), grads):
        for idx in rng.choice(p.size, size=min(p.size, 6), replace=False):
            k = np.unravel_index(idx, p.shape)
            h = 1e-6
            keep = p[k]
            p[k] = keep + h
            up = loss_of(net, s, y)
            n_up = net.forward(s).trace.n_spikes(0)
            p[k] = keep - h
            down = loss_of(net, s, y)
            n_down = net.forward(s).trace.n_spikes(0)
            p[k] = keep
            if n_up != n_down:  # a spike appears or vanishes inside the step: not differentiable
                continue
            fd = (up - down) / (2 * h)
            assert abs(g[k] - fd) <= 1e-5 * max(1.0, abs(fd)), (k, g[k], fd)
            checked += 1
    assert checked >= 15


def test_multi_network_save_load_round_trip(tmp_path):
    net = small_net("axonal", recurrent=True, readout="exp_mean")
    net.save(tmp_path / "m.npz")
    back = MultiNetwork.load(tmp_path / "m.npz")
    s, _ = data()
    np.testing.assert_array_equal(net.forward(s).values, back.forward(s).values)
    assert back.n_parameters() == net.n_parameters() and repr(back) == repr(net)


def test_multi_network_refuses_a_ttfs_neuron():
    with pytest.raises(delgrad.ParameterError, match="mode='multi'"):
        MultiNetwork.random([3, 4, 2], delgrad.Neuron(), delgrad.Neuron(mode="multi"))


def test_temporal_pipeline_learns_with_delays_and_not_without(tmp_path):
    with_d = pipeline.run(ROOT / "pipelines" / "temporal.toml", ["train.epochs=12"], tmp_path / "d", progress=False)
    without = pipeline.run(
        ROOT / "pipelines" / "temporal_nodelay.toml", ["train.epochs=6"], tmp_path / "n", progress=False
    )
    acc_d = pl.read_parquet(with_d / "metrics.parquet")["test_acc"].max()
    acc_n = pl.read_parquet(without / "metrics.parquet")["test_acc"].max()
    assert acc_d >= 0.9
    assert acc_n <= 0.3  # chance is 1/6
    report = (with_d / "report.md").read_text()
    assert "Multi-spike network 3-60-6" in report and "readout_values.png" in report
    spikes = pl.read_parquet(with_d / "spikes_test.parquet")
    assert spikes["layer"].unique().to_list() == [0] and spikes.height > 600
    again = pipeline.evaluate_run(with_d)
    assert again["test_acc"] == pytest.approx(acc_d) or again["test_acc"] >= 0.9


def test_spike_time_loss_on_a_multi_spike_output_layer_matches_finite_differences():
    """A TTFS loss (DelGrad's MSE on first output spike times) on a spiking multi-spike output:
    ``Trace.first_time_grad`` sends dL/dT to each neuron's first spike, EventProp does the rest."""
    from delgrad.losses import LossConfig, spike_time_loss

    neuron = delgrad.Neuron(tau_m=2.0, tau_s=1.0, theta=1.0, mode="multi", t_ref=0.1, t_end=30.0)
    rng = np.random.default_rng(4)
    layers = [
        (rng.normal(2.5, 0.5, (5, 3)), "synaptic", rng.uniform(0, 1, (5, 3))),
        (rng.normal(1.5, 0.4, (3, 5)), "axonal", rng.uniform(0, 1, 5)),
    ]
    s, _ = data(6)
    y = np.arange(6) % 3
    cfg = LossConfig(kind="mse", delta=0.3)

    def loss_and_trace():
        tr = _core.multi_network_forward(s, None, layers, neuron)
        return spike_time_loss(tr.first_times(1), y, cfg, neuron.tau_s), tr

    res, tr = loss_and_trace()
    per_neuron = [
        np.bincount(tr.spikes(index).column("neuron").to_numpy(), minlength=n) for index, n in ((0, 5), (1, 3))
    ]
    assert per_neuron[1].max() > 6  # output neurons spike more than once per sample
    assert np.isfinite(tr.first_times(1)).all()
    g_rows = tr.first_time_grad(1, res.grad)
    assert g_rows.shape == (tr.n_spikes(1),) and np.count_nonzero(g_rows) <= 6 * 3
    (gw0, gd0), (gw1, gd1) = _core.multi_network_backward(s, None, layers, neuron, tr, g_rows)[0]
    h, checked = 1e-6, 0
    for (w, _, d), grads in zip(layers, ((gw0, gd0), (gw1, gd1))):
        for p, g in zip((w, d), grads):
            for k in np.ndindex(p.shape):
                keep = p[k]
                p[k] = keep + h
                up, tu = loss_and_trace()
                p[k] = keep - h
                down, td = loss_and_trace()
                p[k] = keep
                if tu.n_spikes(0) != td.n_spikes(0) or tu.n_spikes(1) != td.n_spikes(1):
                    continue
                fd = (up.loss - down.loss) / (2 * h)
                assert abs(g[k] - fd) <= 1e-5 * max(1.0, abs(fd)), (k, g[k], fd)
                checked += 1
    assert checked >= 40
    with pytest.raises(delgrad.ShapeError, match="grad_times has shape"):
        tr.first_time_grad(1, np.zeros((6, 2)))


@pytest.mark.parametrize("recurrent", [False, True])
def test_evaluation_in_chunks_without_spikes_gives_the_same_bits(recurrent):
    """The trainer's epoch evaluation goes through the core a chunk of samples at a time and
    keeps no spikes; its figures must be those of the whole split in one call."""
    from delgrad.data.split import Split
    from delgrad.train import evaluate_multi

    net = small_net("axonal", recurrent=recurrent)
    s, y = data(11)
    split = Split(s, y)
    whole = evaluate_multi(net, split)
    assert whole.trace is not None and whole.trace.n_spikes(0) > 11
    for chunk in (1, 4, 11, 50):
        part = evaluate_multi(net, split, keep_trace=False, chunk=chunk)
        assert part.trace is None
        assert part.values.tobytes() == whole.values.tobytes()
        assert (part.loss, part.accuracy, part.stats) == (whole.loss, whole.accuracy, whole.stats)
        assert np.array_equal(part.predictions, whole.predictions)
    with pytest.raises(ValueError, match="chunk must be >= 1, got 0"):
        evaluate_multi(net, split, keep_trace=False, chunk=0)


def test_layer_spikes_file_holds_every_layer_and_is_replaced_whole(tmp_path):
    """``spikes_test.parquet`` is written a layer at a time; the file is every layer's spikes,
    in layer order, and a failed write leaves the old file and no temporary behind."""
    from delgrad.pipeline import _write_layer_spikes

    net = MultiNetwork.random(
        [3, 6, 5, 4],
        delgrad.Neuron(tau_m=1.5, tau_s=1.0, theta=1.0, mode="multi", t_ref=0.2, t_end=40.0),
        delgrad.Neuron(tau_m=2.0, tau_s=1.0, theta=1.0, mode="multi", t_end=40.0),
        weight_mean=(2.2, 2.2, 0.5),
        weight_std=(0.6, 0.6, 0.5),
        delay_range=(0.0, 3.0),
        seed=3,
    )
    s, _ = data(7)
    trace = net.forward(s).trace
    path = tmp_path / "spikes_test.parquet"
    _write_layer_spikes(path, trace)
    got = pl.read_parquet(path)
    want = pl.concat([pl.from_arrow(trace.spikes(k, with_layer=True)) for k in range(trace.n_layers)])
    assert got.equals(want) and got["layer"].unique().sort().to_list() == [0, 1]
    before = path.read_bytes()

    class Broken:
        n_layers = 2

        def spikes(self, index, with_layer=False):
            if index == 1:
                raise RuntimeError("lost")
            return trace.spikes(0, with_layer=True)

    with pytest.raises(RuntimeError, match="lost"):
        _write_layer_spikes(path, Broken())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spikes_test.parquet"]
