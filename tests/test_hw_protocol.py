"""The hardware-loop protocol and the BrainScaleS-2 emulator, in process (no daemon)."""

from __future__ import annotations

import sys
from pathlib import Path

import delgrad
import numpy as np
import pyarrow as pa
import pytest
from delgrad.hardware import protocol as P

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # hw_daemon is a top-level package of the repository
    sys.path.insert(0, str(ROOT))

from hw_daemon.backends import BackendUnavailable, make_backend  # noqa: E402
from hw_daemon.backends.base import BackendError  # noqa: E402
from hw_daemon.backends.emulator import TIME_QUANTUM, EmulatorBackend, EmulatorParams  # noqa: E402

NEURON = delgrad.Neuron(tau_m=1.0, tau_s=1.0, theta=2.6)


def yinyang_net(seed: int = 1, kind: str = "axonal") -> delgrad.Network:
    return delgrad.Network.random(
        [20, 30, 3], NEURON, delay_kind=kind, weight_mean=(1.5, 0.5), delay_range=(0.0, 0.3), seed=seed
    )


def yinyang_inputs(n_samples: int, seed: int = 0) -> pa.RecordBatch:
    """4 channels per sample (x, y, 1-x, 1-y) as spike times in [0, 2] tau."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 1, (n_samples, 2))
    t = np.column_stack([xy, 1 - xy]).ravel() * 2.0
    return P.spike_batch(np.repeat(np.arange(n_samples), 4), np.tile(np.arange(4), n_samples), t)


# --- protocol -----------------------------------------------------------------------------------


def test_network_round_trip_through_frames():
    net = yinyang_net()
    fields, frames = P.encode_network(net)
    back = P.decode_network(fields, [bytes(f) for f in frames])
    assert back.sizes == net.sizes
    for a, b in zip(net.layers, back.layers):
        np.testing.assert_array_equal(a.weights, b.weights)
        np.testing.assert_array_equal(a.delays, b.delays)
        assert a.delay_kind == b.delay_kind


@pytest.mark.parametrize("kind", ["none", "synaptic", "dendritic"])
def test_network_round_trip_every_delay_kind(kind):
    net = delgrad.Network.random([5, 4, 3], NEURON, delay_kind=kind, seed=2)
    fields, frames = P.encode_network(net)
    back = P.decode_network(fields, frames)
    for a, b in zip(net.layers, back.layers):
        np.testing.assert_array_equal(a.delays, b.delays)


def test_spike_table_round_trip_and_misaligned_frames():
    rb = yinyang_inputs(7)
    frame = bytes(P.encode_table(rb))
    assert P.decode_table(frame, P.SPIKE_SCHEMA, "x").equals(rb)
    # ZeroMQ may deliver a frame at any offset: decoding must still give aligned columns.
    shifted = memoryview(bytearray(b"\0" + frame))[1:]
    out = P.decode_table(shifted, P.SPIKE_SCHEMA, "x")
    assert out.equals(rb)
    assert all(b is None or b.address % 8 == 0 for c in out.columns for b in c.buffers())


@pytest.mark.parametrize(
    "frame, code",
    [
        (b"", P.BAD_FRAME),
        (b"garbage that is not arrow", P.BAD_FRAME),
        ("truncated", P.BAD_FRAME),
        ("float32 time", P.BAD_SCHEMA),
        ("extra column", P.BAD_SCHEMA),
        ("missing column", P.BAD_SCHEMA),
        ("nulls", P.BAD_SPIKES),
    ],
)
def test_decode_table_refuses(frame, code):
    rb = yinyang_inputs(50)
    if frame == "truncated":
        frame = bytes(P.encode_table(rb))[:-300]
    elif frame == "float32 time":
        frame = P.encode_table(rb.set_column(2, "time", rb.column("time").cast(pa.float32())))
    elif frame == "extra column":
        frame = P.encode_table(rb.append_column("x", pa.array(np.zeros(rb.num_rows))))
    elif frame == "missing column":
        frame = P.encode_table(rb.drop_columns(["time"]))
    elif frame == "nulls":
        t = pa.array([None] + rb.column("time").to_pylist()[1:], pa.float64())
        frame = P.encode_table(rb.set_column(2, "time", t))
    with pytest.raises(P.ProtocolError) as e:
        P.decode_table(frame, P.SPIKE_SCHEMA, "input spikes")
    assert e.value.code == code
    assert "input spikes" in e.value.message


def test_header_errors():
    for raw in (b"{nope", b"[1, 2]", b"\xff\xfe", b'{"a": NaN}'):
        with pytest.raises(P.ProtocolError) as e:
            P.decode_header(raw)
        assert e.value.code == P.BAD_HEADER
    with pytest.raises(ValueError):
        P.encode_header({"x": float("nan")})


def test_replicate_inputs_layout():
    rb = P.spike_batch([0, 1], [1, 3], [0.5, 1.5])
    out = P.replicate_inputs(rb, n_channels=4, replication=3)
    assert sorted(zip(*(c.to_pylist() for c in out.columns))) == sorted(
        [(0, 1, 0.5), (0, 5, 0.5), (0, 9, 0.5), (1, 3, 1.5), (1, 7, 1.5), (1, 11, 1.5)]
    )


# --- emulator -----------------------------------------------------------------------------------


def test_weights_are_6_bit_and_delays_clipped():
    net = yinyang_net()
    net.layers[0].weights[0, 0] = 100.0  # far beyond 63 / scale
    net.layers[0].delays[:] = 2.5
    net.layers[0].delays[:3] = [-0.5, 5.0, 2.2]
    emu = EmulatorBackend(chip_seed=1)  # the default profile, DelGrad's: delays within [2.0, 3.5]
    cfg = emu.configure(net, weight_scale=[10.0, 20.0], input_replication=5)
    for layer, scale in zip(cfg.network.layers, (10.0, 20.0)):
        q = layer.weights * scale
        np.testing.assert_allclose(q, np.rint(q), atol=1e-9)
        assert np.abs(np.rint(q)).max() <= 63
    assert cfg.network.layers[0].weights[0, 0] == pytest.approx(6.3)
    d = cfg.network.layers[0].delays
    assert d[0] == emu.params.delay_min == 2.0 and d[1] == emu.params.delay_max == 3.5 and d[2] == 2.2
    rep = cfg.report["layers"][0]
    assert rep["weights_clipped"] >= 1 and rep["delays_clipped"] == 2
    assert cfg.report["neurons_used"] == 33 + 2 * (20 + 30)


def test_refuses_what_the_chip_cannot_do():
    emu = EmulatorBackend()
    big = delgrad.Network.random([4, 600, 3], NEURON, delay_kind="none", seed=0)
    with pytest.raises(BackendError) as e:
        emu.configure(big)
    assert e.value.code == P.DOES_NOT_FIT and "512" in e.value.message
    with pytest.raises(BackendError) as e:
        emu.configure(yinyang_net(kind="synaptic"))
    assert e.value.code == P.UNSUPPORTED and "axonal" in e.value.message
    with pytest.raises(BackendError) as e:
        emu.configure(yinyang_net(), input_replication=3)
    assert e.value.code == P.BAD_PARAMETERS


def test_ideal_emulator_is_the_realised_network():
    """Without noise the emulator is exactly delgrad's forward pass on the realised network."""
    net = yinyang_net()
    emu = EmulatorBackend(params=EmulatorParams.ideal())
    cfg = emu.configure(net, input_replication=5)
    x = yinyang_inputs(40)
    out = emu.run(cfg, x, 40, seed=0)
    ref = cfg.network.forward(P.replicate_inputs(x, 4, 5), 40)
    for index in range(2):
        assert out.layers[index].equals(ref.spikes(index))
    assert out.health["dropped_inputs"] == 0 and out.health["lost_events"] == 0


def test_threshold_offset_by_weight_scaling_is_exact():
    """theta_j emulated as weights * theta / theta_j: same spike times as a neuron whose
    threshold really is theta_j."""
    rng = np.random.default_rng(3)
    w = rng.normal(1.5, 0.8, (6, 20))
    x = P.replicate_inputs(yinyang_inputs(30), 4, 5)
    factor = 1.0 + rng.normal(0.05, 0.03, 6)
    scaled = delgrad.Network([delgrad.Layer(w / factor[:, None])], NEURON).forward(x, 30).first_times(0)
    for j in range(6):
        nj = delgrad.Neuron(tau_m=1.0, tau_s=1.0, theta=2.6 * factor[j])
        exact = delgrad.Network([delgrad.Layer(w[j : j + 1])], nj).forward(x, 30).first_times(0)[:, 0]
        np.testing.assert_allclose(scaled[:, j], exact, rtol=1e-12, atol=1e-12)


def test_emulator_non_idealities():
    net = yinyang_net()
    x = yinyang_inputs(40)
    a, b = EmulatorBackend(chip_seed=1), EmulatorBackend(chip_seed=2)
    ca, cb = a.configure(net, input_replication=5), b.configure(net, input_replication=5)
    r1 = a.run(ca, x, 40, seed=5)
    r2 = a.run(ca, x, 40, seed=5)
    assert all(u.equals(v) for u, v in zip(r1.layers, r2.layers))  # seeded: reproducible
    r3 = a.run(ca, x, 40, seed=6)
    assert not r1.layers[0].equals(r3.layers[0])  # per-run noise
    r4 = b.run(cb, x, 40, seed=5)
    assert not r1.layers[0].equals(r4.layers[0])  # another chip, other offsets
    t = r1.layers[0].column("time").to_numpy()
    np.testing.assert_allclose(t / TIME_QUANTUM, np.rint(t / TIME_QUANTUM), atol=1e-6)
    # Thresholds sit ~5% above nominal on average: fewer hidden spikes or later ones.
    ideal = EmulatorBackend(params=EmulatorParams.ideal())
    ri = ideal.run(ideal.configure(net, input_replication=5), x, 40, seed=0)
    ti = ri.layers[0].column("time").to_numpy()
    assert r1.layers[0].num_rows <= ri.layers[0].num_rows
    assert np.median(t) > np.median(ti) or r1.layers[0].num_rows < ri.layers[0].num_rows


def test_dropped_inputs_and_lost_events():
    net = yinyang_net()
    emu = EmulatorBackend(params=EmulatorParams(duration=2.5))
    cfg = emu.configure(net, input_replication=5)
    x = yinyang_inputs(10)
    t = x.column("time").to_numpy().copy()
    t[:3] = [-1.0, 3.0, 100.0]
    out = emu.run(cfg, x.set_column(2, "time", pa.array(t)), 10, seed=0)
    assert out.health["dropped_inputs"] == 3
    assert out.health["lost_events"] > 0  # spikes after the 2.5 tau window are not recorded
    for rb in out.layers:
        assert rb.num_rows == 0 or rb.column("time").to_numpy().max() <= 2.5


def test_brainscales2_adapter_refuses_without_host_software():
    with pytest.raises(BackendUnavailable, match="hxcomm/grenade not installed"):
        make_backend("brainscales2")


# --- spike frames (read and written by the core) -----------------------------------------------


def test_spike_frames_are_read_in_place():
    rb = yinyang_inputs(20)
    frame = pa.py_buffer(P.encode_spikes(rb))  # read-only, 8-byte aligned by pyarrow
    out = P.decode_spikes(frame, "x")
    assert out.equals(rb)
    lo, hi = frame.address, frame.address + frame.size
    assert all(lo <= c.buffers()[1].address < hi for c in out.columns)
    # A writable buffer is copied: changing it afterwards does not change what was read.
    mutable = bytearray(P.encode_spikes(rb))
    copy = P.decode_spikes(mutable, "x")
    mutable[:] = b"\0" * len(mutable)
    assert copy.equals(rb)


def test_encode_spikes_takes_any_arrow_table_and_casts():
    import polars as pl

    rb = yinyang_inputs(5)
    df = pl.from_arrow(rb).with_columns(pl.col("sample").cast(pl.Int64), pl.col("time").cast(pl.Float32))
    out = P.decode_spikes(P.encode_spikes(df), "x")
    assert out.schema.equals(P.SPIKE_SCHEMA)
    np.testing.assert_array_equal(out.column("sample").to_numpy(), rb.column("sample").to_numpy())
    np.testing.assert_allclose(out.column("time").to_numpy(), rb.column("time").to_numpy(), rtol=1e-7)
    with pytest.raises(delgrad.SpikeError, match="missing column 'time'"):
        P.encode_spikes(rb.drop_columns(["time"]))


@pytest.mark.parametrize(
    "n_samples, n_neurons, word", [(19, None, "sample id 19 at row 76"), (None, 3, "neuron id 3 at row 3")]
)
def test_decode_spikes_checks_ids(n_samples, n_neurons, word):
    frame = P.encode_spikes(yinyang_inputs(20))
    with pytest.raises(P.ProtocolError) as e:
        P.decode_spikes(frame, "layer 0 spikes", n_samples=n_samples, n_neurons=n_neurons)
    assert e.value.code == P.BAD_SPIKES
    assert e.value.message.startswith("layer 0 spikes: ") and word in e.value.message


def test_frame_errors_carry_the_protocol_code():
    with pytest.raises(delgrad.FrameError) as e:
        delgrad._core.read_spike_frame(b"not arrow", "input spikes")
    assert isinstance(e.value, ValueError) and e.value.code == P.BAD_FRAME
    frame = P.encode_spikes(yinyang_inputs(3))
    with pytest.raises(delgrad.FrameError) as e:
        delgrad._core.read_spike_frame(frame, "input spikes", max_rows=11)
    assert e.value.code == P.TOO_LARGE and "more than 11 rows" in str(e.value)


def test_corrupted_frames_give_protocol_errors_never_crash():
    rng = np.random.default_rng(0)
    good = bytearray(P.encode_spikes(yinyang_inputs(30)))
    codes = set()
    for _ in range(500):
        bad = bytearray(good)
        for at in rng.integers(0, len(bad), rng.integers(1, 5)):
            bad[at] = rng.integers(0, 256)
        if rng.random() < 0.3:
            bad = bad[: rng.integers(0, len(bad))]
        try:
            P.decode_spikes(bytes(bad), "input spikes", n_samples=30, n_neurons=4, max_rows=1000)
        except P.ProtocolError as e:
            codes.add(e.code)
            assert e.message.startswith("input spikes: ")
    assert codes <= {P.BAD_FRAME, P.BAD_SCHEMA, P.BAD_SPIKES, P.TOO_LARGE} and P.BAD_FRAME in codes


# --- the emulator's spike side (the core's chip_run) --------------------------------------------


def _numpy_emulator_run(emu: EmulatorBackend, cfg, x: pa.RecordBatch, n_samples: int, seed: int):
    """The emulator's run written out in numpy (as it was before the core took the spike
    side): the reference for chip_run. Same random draws in the same order."""
    p = emu.params
    q = p.time_quantum
    quant = (lambda t: np.rint(t / q) * q) if q > 0 else (lambda t: t)
    rng = np.random.default_rng([seed, emu.chip_seed])
    s, n, t = (c.to_numpy() for c in x.columns)
    played = (t >= 0.0) & (t <= p.duration)
    inputs = P.replicate_inputs(
        P.spike_batch(s[played], n[played], quant(t[played])), cfg.n_channels, cfg.input_replication
    )
    layers = []
    for index, layer in enumerate(cfg.network.layers):
        factor = cfg.state["theta_factor"][index] + rng.normal(0.0, p.threshold_noise_std / p.theta_ref, layer.shape[0])
        w = layer.weights / np.maximum(factor, 0.05)[:, None]
        d = layer.delays
        if layer.delay_kind == "axonal" and p.delay_jitter_std > 0:
            d = np.maximum(d + rng.normal(0.0, p.delay_jitter_std, d.shape), 0.0)
        layers.append(delgrad.Layer(w, d, layer.delay_kind))
    trace = delgrad.Network(layers, cfg.network.neuron).forward(inputs, n_samples)
    out, lost = [], []
    for index in range(len(layers)):
        ls, ln, lt = (c.to_numpy() for c in trace.spikes(index).columns)
        lt = quant(lt)
        keep = lt <= p.duration
        out.append(P.spike_batch(ls[keep], ln[keep], lt[keep]))
        lost.append(int(keep.size - keep.sum()))
    return out, int(t.size - played.sum()), inputs.num_rows, lost


@pytest.mark.parametrize(
    "params",
    [EmulatorParams(), EmulatorParams.ideal(), EmulatorParams(duration=1.5)],
    ids=["chip", "ideal", "short window"],
)
def test_emulator_run_equals_the_numpy_reference(params):
    emu = EmulatorBackend(chip_seed=3, params=params)
    cfg = emu.configure(yinyang_net(), input_replication=5)
    x = yinyang_inputs(60, seed=2)
    t = x.column("time").to_numpy().copy()
    t[::7] -= 1.0  # some inputs before the window
    x = x.set_column(2, "time", pa.array(t))
    got = emu.run(cfg, x, 60, seed=11)
    layers, dropped, played, lost = _numpy_emulator_run(emu, cfg, x, 60, 11)
    assert all(a.equals(b) for a, b in zip(got.layers, layers))  # bit for bit
    h = got.health
    assert (h["dropped_inputs"], h["played_events"], h["lost_per_layer"]) == (dropped, played, lost)
    assert h["recorded_events"] == [rb.num_rows for rb in layers] and h["lost_events"] == sum(lost)
    assert dropped > 0 and (params.duration > 2 or sum(lost) > 0)


@pytest.mark.parametrize("event_loss", [0.0, 0.2])
def test_run_frames_equals_run(event_loss):
    """The daemon's path (frames in, frames out; the core's fused call unless events are lost
    at random) gives what run gives on tables."""
    emu = EmulatorBackend(chip_seed=1, params=EmulatorParams(event_loss=event_loss))
    cfg = emu.configure(yinyang_net(), input_replication=5)
    x = yinyang_inputs(40)
    framed = emu.run_frames(cfg, P.encode_spikes(x), 40, seed=4, max_events=10_000)
    ref = emu.run(cfg, x, 40, seed=4)
    decoded = P.decode_layers(framed.frames, [30, 3], 40)
    assert all(a.equals(b) for a, b in zip(decoded, ref.layers))
    drop = ("wall_time_s",)
    assert {k: v for k, v in framed.health.items() if k not in drop} == {
        k: v for k, v in ref.health.items() if k not in drop
    }
    if event_loss:
        assert ref.health["lost_events"] > 0
    for frame, limit, code in [
        (b"junk", 10_000, P.BAD_FRAME),
        (P.encode_spikes(x), 799, P.TOO_LARGE),
        (P.encode_spikes(P.spike_batch([0], [4], [1.0])), 10_000, P.BAD_SPIKES),
    ]:
        with pytest.raises(P.ProtocolError) as e:
            emu.run_frames(cfg, frame, 40, seed=4, max_events=limit)
        assert e.value.code == code and e.value.message.startswith("input spikes: "), e.value


def test_chip_io_refuses_what_no_chip_has():
    io = delgrad._core.ChipIo(time_quantum=TIME_QUANTUM, duration=20.0, replication=5, n_channels=4)
    assert (io.replication, io.n_channels, io.duration) == (5, 4, 20.0)
    for kw, word in [
        ({"duration": 0.0}, "duration"),
        ({"time_quantum": -1.0}, "time_quantum"),
        ({"replication": 0}, "replication"),
    ]:
        args = {"time_quantum": 0.0, "duration": 1.0, "replication": 1, "n_channels": 4, **kw}
        with pytest.raises(delgrad.ParameterError, match=word):
            delgrad._core.ChipIo(**args)
