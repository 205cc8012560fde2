"""hw_daemon under abuse: decompression bombs, frames beyond the limits, clients that stop
reading, one client's long runs against another's small requests, values no field check
anticipated, and fuzzing. Real daemons in their own processes, stopped by their pids."""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from pathlib import Path

import delgrad
import numpy as np
import pyarrow as pa
import pytest
import zmq
from delgrad.hardware import HardwareClient, spike_batch, start_daemon
from delgrad.hardware import protocol as P
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hw_daemon.backends.emulator import EmulatorBackend  # noqa: E402
from hw_daemon.server import Daemon, Limits  # noqa: E402

NEURON = delgrad.Neuron(tau_m=1.0, tau_s=1.0, theta=2.6)
MB = 1 << 20


def net() -> delgrad.Network:
    return delgrad.Network.random(
        [20, 30, 3], NEURON, delay_kind="axonal", weight_mean=(0.6, 0.6), weight_std=(0.4, 0.4),
        delay_range=(2.5, 3.0), seed=1,
    )  # fmt: skip


def inputs(n: int) -> pa.RecordBatch:
    rng = np.random.default_rng(0)
    t = 0.15 + 1.85 * rng.uniform(0, 1, (n, 4))
    return spike_batch(np.repeat(np.arange(n), 4), np.tile(np.arange(4), n), t.ravel())


def compressed(table: pa.Table | pa.RecordBatch) -> bytes:
    sink = io.BytesIO()
    opts = pa.ipc.IpcWriteOptions(compression="zstd")
    with pa.ipc.new_stream(sink, table.schema, options=opts) as w:
        w.write(table)
    return sink.getvalue()


def dictionary_frame() -> bytes:
    t = pa.table({"layer": pa.array([0, 0], pa.uint16()).dictionary_encode(), "post": pa.array([0, 1], pa.uint32())})
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, t.schema) as w:
        w.write(t)
    return sink.getvalue()


def raw(endpoint: str, frames: list, timeout: float = 20.0) -> dict:
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.linger = 0
    s.connect(endpoint)
    try:
        s.send_multipart(frames)
        assert s.poll(timeout * 1000), "no reply"
        return json.loads(s.recv_multipart()[0])
    finally:
        s.close()


def memory(endpoint: str) -> dict:
    with HardwareClient(endpoint, timeout=20, retries=0) as c:
        return c.status()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = start_daemon(
        args=["--max-reply-bytes", str(4 * MB), "--log-level", "WARNING"],
        log_path=tmp_path_factory.mktemp("d") / "d.log",
    )
    yield d
    assert d.stop() == 0, d.log()


def configure_header(n_in: int, n_out: int) -> bytes:
    return P.encode_header(
        {
            "v": 1, "op": "configure", "id": P.new_request_id(),
            "neuron": {"tau_m": 1.0, "tau_s": 1.0, "theta": 2.6},
            "layers": [{"n_in": n_in, "n_out": n_out, "delay_kind": "none"}],
        }
    )  # fmt: skip


def test_decompression_bomb_is_refused_without_allocating(daemon):
    """The issue's bomb: a ZSTD weights frame of a few tens of KB that decompresses to 1.7 GB
    (here 26 M rows, 480 MB of zeros, in a ~50 KB frame)."""
    n = 26_000_000
    zeros = pa.array(np.zeros(n, np.uint32))
    bomb = pa.RecordBatch.from_arrays(
        [pa.array(np.zeros(n, np.uint16)), zeros, zeros, pa.array(np.zeros(n))], schema=P.WEIGHT_SCHEMA
    )
    frame = compressed(bomb)
    del bomb, zeros
    assert len(frame) < 200_000
    delays = P.encode_table(pa.RecordBatch.from_pylist([], schema=P.DELAY_SCHEMA))
    before = memory(daemon.endpoint)["memory"]
    head = raw(daemon.endpoint, [configure_header(4000, 4000), frame, delays])
    assert head["ok"] is False and head["code"] == P.BAD_FRAME
    assert "compressed Arrow IPC is refused" in head["message"]
    after = memory(daemon.endpoint)["memory"]
    assert after["peak_rss_bytes"] - before["peak_rss_bytes"] < 100 * MB


@pytest.mark.parametrize("what", ["compressed", "dictionary"])
def test_compressed_or_dictionary_frames_are_refused_on_every_path(daemon, what):
    with HardwareClient(daemon.endpoint, timeout=20, retries=0) as c:
        cid, _ = c.configure(net(), input_replication=5)
    spikes = compressed(inputs(50)) if what == "compressed" else dictionary_frame()
    run = P.encode_header({"v": 1, "op": "run", "id": P.new_request_id(), "config_id": cid, "n_samples": 50})
    head = raw(daemon.endpoint, [run, spikes])
    assert head["code"] in (P.BAD_FRAME, P.BAD_SCHEMA) and what in head["message"] + "dictionary compressed"
    if what == "compressed":
        assert head["code"] == P.BAD_FRAME and "compressed Arrow IPC is refused" in head["message"]
    weights = compressed(pa.RecordBatch.from_pylist([], schema=P.WEIGHT_SCHEMA)) if what == "compressed" else spikes
    delays = P.encode_table(pa.RecordBatch.from_pylist([], schema=P.DELAY_SCHEMA))
    head = raw(daemon.endpoint, [configure_header(1, 1), weights, delays])
    assert head["ok"] is False and head["code"] == P.BAD_FRAME
    assert ("compressed" if what == "compressed" else "dictionary") in head["message"]


def test_values_no_check_anticipated_get_named_errors(daemon):
    """duration=1e308 and weight_scale=5e-324 used to be `internal`."""
    with HardwareClient(daemon.endpoint, timeout=20, retries=0) as c:
        cid, _ = c.configure(net(), input_replication=5)
        for kwargs, word in [({"duration": 1e308}, "duration"), ({"duration": 5e-324}, None)]:
            if word is None:  # a tiny window is valid: every input falls outside it
                _, health = c.run(cid, inputs(3), 3, seed=0, **kwargs)
                assert health["dropped_inputs"] == 12
                continue
            with pytest.raises(delgrad.hardware.HardwareError) as e:
                c.run(cid, inputs(3), 3, seed=0, **kwargs)
            assert e.value.code == P.BAD_FIELD and word in e.value.message
        for scale in (5e-324, 1e308, [1.0, 5e-324]):
            with pytest.raises(delgrad.hardware.HardwareError) as e:
                c.configure(net(), weight_scale=scale, input_replication=5)
            assert e.value.code == P.BAD_FIELD and "weight_scale" in e.value.message
        st_ = c.status()
    assert st_["errors"].get(P.INTERNAL, 0) == 0


def test_frames_beyond_the_limit_are_dropped_by_the_transport(tmp_path):
    """ZeroMQ's MAXMSGSIZE is the frame limit: a 7 x 8 MB message never reaches the daemon
    (the peer is disconnected, there is no reply), and the daemon goes on serving."""
    d = start_daemon(args=["--max-frame-bytes", str(MB), "--log-level", "WARNING"], log_path=tmp_path / "d.log")
    try:
        with HardwareClient(d.endpoint, timeout=20, retries=0) as c:
            assert c.hello()["capabilities"]["limits"]["max_frame_bytes"] == MB
            before = c.status()["memory"]
        s = zmq.Context.instance().socket(zmq.DEALER)
        s.linger = 0
        s.connect(d.endpoint)
        big = np.zeros(8 * MB, np.uint8).tobytes()
        s.send_multipart([P.encode_header({"v": 1, "op": "status", "id": "x"}), *[big] * 7])
        assert not s.poll(1500)  # dropped: no reply at all
        s.close()
        with HardwareClient(d.endpoint, timeout=20, retries=0) as c:
            after = c.status()
        assert after["counters"]["requests"] == 3  # hello and two status; the big one never arrived
        assert after["memory"]["peak_rss_bytes"] - before["peak_rss_bytes"] < 30 * MB
    finally:
        assert d.stop() == 0


def test_replies_a_client_does_not_read_are_capped(daemon):
    """A client sends runs with large replies and never reads: the first reply waits in the
    transport, later ones are answered `slow_client` (the cap is 4 MB per client here)."""
    with HardwareClient(daemon.endpoint, timeout=20, retries=0) as c:
        cid, _ = c.configure(net(), input_replication=5)
        before = c.status()
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.rcvhwm = 1
    s.setsockopt(zmq.RCVBUF, 4096)
    s.connect(daemon.endpoint)
    frame = P.encode_spikes(inputs(20_000))  # ~20 k x 33 recorded spikes: ~10 MB a reply
    for k in range(5):
        s.send_multipart(
            [
                P.encode_header(
                    {"v": 1, "op": "run", "id": f"slow-{k}", "config_id": cid, "n_samples": 20_000, "seed": k}
                ),
                frame,
            ]
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            st_ = memory(daemon.endpoint)
            if st_["counters"].get("runs", 0) - before["counters"].get("runs", 0) >= 5 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert st_["errors"].get(P.SLOW_CLIENT, 0) - before["errors"].get(P.SLOW_CLIENT, 0) >= 3
        assert st_["memory"]["rss_bytes"] - before["memory"]["rss_bytes"] < 150 * MB
    finally:
        s.close()
        ctx.term()


def test_a_long_run_does_not_hold_back_another_client(daemon):
    """Runs are sliced: a hello sent while another client's 2.4 M-event run executes is
    answered before that run ends."""
    with HardwareClient(daemon.endpoint, timeout=60, retries=0) as c:
        cid, _ = c.configure(net(), input_replication=5)
    done: dict[str, float] = {}

    def long_run() -> None:
        with HardwareClient(daemon.endpoint, timeout=120, retries=0) as c:
            c.run(cid, inputs(120_000), 120_000, seed=1)  # 480 k inputs x 5 replicas
            done["long"] = time.monotonic()

    t = threading.Thread(target=long_run)
    t.start()
    with HardwareClient(daemon.endpoint, timeout=60, retries=0) as c:
        time.sleep(0.3)
        while "long" not in done and memory(daemon.endpoint)["busy_s"] == 0:
            time.sleep(0.05)
        sent = time.monotonic()
        c.hello()
        done["hello"] = time.monotonic()
    t.join(timeout=120)
    assert "long" in done and done["hello"] < done["long"], done
    assert done["hello"] - sent < done["long"] - sent


@pytest.mark.parametrize("profile", [{}, {"time_offset": 0.25}, {"event_loss": 0.1}])
def test_sliced_run_equals_unsliced(profile):
    from hw_daemon.profiles import load_profile

    emu = EmulatorBackend(chip_seed=3, params=load_profile(profile))
    cfg = emu.configure(net(), input_replication=5)
    x = inputs(500)
    whole = emu.run(cfg, x, 500, seed=9)
    frame = P.encode_spikes(x)
    steps = emu.run_steps(cfg, frame, 500, seed=9, max_events=10**7, slice_events=1000)
    n_slices = 0
    try:
        while True:
            next(steps)
            n_slices += 1
    except StopIteration as e:
        sliced = e.value
    # 1000 events = 50 samples of 4 x 5 inputs a slice (streamed runs yield once more, after the
    # decoded input)
    assert n_slices == (10 if profile.get("event_loss") else 11)
    for frame_, table in zip(sliced.frames, whole.layers):
        assert P.decode_spikes(frame_, "layer").equals(table)
    assert sliced.health["recorded_events"] == whole.health["recorded_events"]


# --- fuzzing ------------------------------------------------------------------------------------

_numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 1, -1, 5e-324, 1e308, 2**63, 2**64, 0.5]),
)
_values = st.one_of(_numbers, st.text(max_size=8), st.booleans(), st.none(), st.lists(_numbers, max_size=4))


@pytest.fixture(scope="module")
def fuzz_daemon():
    d = Daemon(EmulatorBackend(chip_seed=1), limits=Limits(max_samples=1000, max_spikes=20_000))
    cfg = d.handle(b"c", P.encode_message(P.request_header("configure", "cfg", **P.encode_network(net())[0]),
                                          P.encode_network(net())[1]))  # fmt: skip
    cid = json.loads(cfg[0])["config_id"]
    return d, cid


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    op=st.sampled_from(["hello", "configure", "run", "status", "nope", ""]),
    fields=st.dictionaries(
        st.sampled_from(
            ["config_id", "n_samples", "seed", "duration", "weight_scale", "input_replication", "layers", "neuron",
             "v", "id", "session"]
        ),
        _values,
        max_size=5,
    ),
    body=st.lists(
        st.one_of(
            st.binary(max_size=64),
            st.sampled_from(["good", "compressed", "dictionary", "weights", "truncated"]),
        ),
        max_size=3,
    ),
    use_cid=st.booleans(),
)  # fmt: skip
def test_fuzzed_requests_never_crash_or_answer_internal(fuzz_daemon, op, fields, body, use_cid):
    d, cid = fuzz_daemon
    header = {"v": 1, "op": op, "id": "f", **fields}
    if use_cid:
        header["config_id"] = cid
    good = P.encode_spikes(inputs(3))
    frames = {
        "good": good,
        "compressed": compressed(inputs(3)),
        "dictionary": dictionary_frame(),
        "weights": P.encode_network(net())[1][0],
        "truncated": good[: len(good) // 2],
    }
    try:
        head = P.encode_header(header)
    except (ValueError, TypeError):
        return  # not sendable as JSON
    reply = d.handle(b"fuzz", [head, *[frames.get(b, b) if isinstance(b, str) else b for b in body]])
    h = json.loads(reply[0])
    assert h["ok"] or h["code"] in P.ERROR_CODES
    assert h.get("code") != P.INTERNAL, h
    d.cache = type(d.cache)(16, 1 << 20)  # every example starts without cached replies
