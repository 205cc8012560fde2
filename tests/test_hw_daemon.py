"""hw_daemon as a real process: round trips, malformed requests, idempotent retries, load.

Every daemon here is started by the test (loopback tcp or ipc only) and stopped by its pid.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import delgrad
import numpy as np
import pyarrow as pa
import pytest
import zmq
from delgrad.hardware import (
    HardwareClient,
    HardwareError,
    ipc_endpoint,
    replicate_inputs,
    spike_batch,
    start_daemon,
)
from delgrad.hardware import protocol as P

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hw_daemon.backends.emulator import EmulatorBackend  # noqa: E402

NEURON = delgrad.Neuron(tau_m=1.0, tau_s=1.0, theta=2.6)
CHIP = 7
MAX_SPIKES = 200_000
MAX_SAMPLES = 5_000


def yinyang_net(seed: int = 1) -> delgrad.Network:
    return delgrad.Network.random(
        [20, 30, 3], NEURON, delay_kind="axonal", weight_mean=(1.5, 0.5), delay_range=(0.0, 0.3), seed=seed
    )


def yinyang_inputs(n_samples: int, seed: int = 0) -> pa.RecordBatch:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 1, (n_samples, 2))
    t = np.column_stack([xy, 1 - xy]).ravel() * 2.0
    return spike_batch(np.repeat(np.arange(n_samples), 4), np.tile(np.arange(4), n_samples), t)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    log = tmp_path_factory.mktemp("daemon") / "daemon.log"
    d = start_daemon(
        "tcp://127.0.0.1:*",
        chip_seed=CHIP,
        pub="tcp://127.0.0.1:*",
        log_path=log,
        args=["--max-spikes", str(MAX_SPIKES), "--max-samples", str(MAX_SAMPLES), "--log-level", "WARNING"],
    )
    yield d
    rc = d.stop()
    assert rc == 0, d.log()  # SIGTERM is a clean shutdown


@pytest.fixture(scope="module")
def configured(daemon):
    with HardwareClient(daemon.endpoint, timeout=10, retries=1) as c:
        cid, realised = c.configure(yinyang_net(), input_replication=5)
    return cid, realised


def raw(endpoint: str, frames: list, timeout: float = 10.0) -> tuple[dict, list]:
    """One request on a fresh DEALER; fails the test if no reply arrives."""
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.linger = 0
    s.connect(endpoint)
    try:
        s.send_multipart(frames)
        assert s.poll(timeout * 1000), "no reply"
        reply = s.recv_multipart()
        return json.loads(reply[0]), reply[1:]
    finally:
        s.close()


def status(endpoint: str) -> dict:
    with HardwareClient(endpoint, timeout=10, retries=0) as c:
        return c.status()


# --- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_round_trip_equals_in_process_emulator(daemon, transport, tmp_path):
    d = daemon if transport == "tcp" else start_daemon(ipc_endpoint(), chip_seed=CHIP, log_path=tmp_path / "ipc.log")
    try:
        assert d.endpoint.startswith(f"{transport}://")
        net, x = yinyang_net(), yinyang_inputs(40)
        with HardwareClient(d.endpoint, timeout=10, retries=1) as c:
            hello = c.hello()
            caps = hello["capabilities"]
            assert hello["backend"] == "emulator" and P.PROTOCOL_VERSION in hello["versions"]
            assert caps["neurons"] == 512 and caps["weight_bits"] == 6 and caps["weight_max_int"] == 63
            assert caps["time_quantum"] == pytest.approx(8e-9 / 6e-6)
            assert caps["delay_range"] == [2.0, 3.5] and caps["chip_seed"] == CHIP and caps["profile"] == "delgrad"

            cid, realised = c.configure(net, input_replication=5)
            assert cid.startswith("cfg-") and c.config_info(cid)["report"]["neurons_used"] == 133
            spikes, health = c.run(cid, x, 40, seed=11)
            assert health["seed"] == 11 and health["input_events"] == 160
            assert health["played_events"] == 800 and health["wall_time_s"] > 0
            assert {"dropped_inputs", "lost_events"} <= set(health)

        emu = EmulatorBackend(chip_seed=CHIP)
        cfg = emu.configure(net, input_replication=5)
        ref = emu.run(cfg, x, 40, seed=11)
        for a, b in zip(realised.layers, cfg.network.layers):
            np.testing.assert_array_equal(a.weights, b.weights)
            np.testing.assert_array_equal(a.delays, b.delays)
        assert len(spikes) == 2
        for got, want in zip(spikes, ref.layers):
            assert got.equals(want)

        # The host side of training in the loop: exact gradients at the recorded times.
        trace = delgrad.Trace.from_tables(spikes, sizes=realised.sizes[1:], n_samples=40)
        grads = realised.backward(replicate_inputs(x, 4, 5), trace, np.ones((40, 3)))
        assert grads.layers[0][0].shape == (30, 20) and np.isfinite(grads.layers[0][0]).all()
    finally:
        if d is not daemon:
            assert d.stop() == 0
            assert not Path(d.endpoint[len("ipc://") :]).exists()


def test_same_network_same_config_id(daemon, configured):
    with HardwareClient(daemon.endpoint, timeout=10, retries=0) as c:
        assert c.configure(yinyang_net(), input_replication=5).config_id == configured[0]
        assert c.configure(yinyang_net(seed=2), input_replication=5).config_id != configured[0]


def test_pub_socket_streams_recorded_spikes(daemon, configured):
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.linger = 0
    sub.subscribe(b"run")
    sub.connect(daemon.pub)
    try:
        with HardwareClient(daemon.endpoint, timeout=10, retries=0) as c:
            # PUB drops messages until the subscription has arrived: run until one is seen.
            for _ in range(50):
                spikes, _ = c.run(configured[0], yinyang_inputs(5), 5, seed=1)
                if sub.poll(100):
                    break
            else:
                pytest.fail("nothing published")
        msg = sub.recv_multipart()
        assert msg[0] == b"run"
        head = json.loads(msg[1])
        assert head["config_id"] == configured[0] and head["n_samples"] == 5
        layers = [P.decode_table(f, P.SPIKE_SCHEMA, "pub") for f in msg[2:]]
        assert [index.equals(s) for index, s in zip(layers, spikes)] == [True, True]
    finally:
        sub.close()


# --- malformed requests -------------------------------------------------------------------------


def _hdr(op: str = "status", **kw) -> bytes:
    return P.encode_header({"v": 1, "op": op, "id": P.new_request_id(), **kw})


def _run_hdr(cid: str, n: int = 4, **kw) -> bytes:
    return _hdr("run", config_id=cid, n_samples=n, **kw)


def _x(n: int = 4) -> pa.RecordBatch:
    return yinyang_inputs(n)


def _net_frames(net: delgrad.Network) -> tuple[dict, list]:
    fields, frames = P.encode_network(net)
    return fields, [bytes(f) for f in frames]


def _malformed_cases(cid: str) -> list[tuple[str, list, str, str]]:
    """(name, frames, expected code, a word the message must contain)."""
    x = _x()
    good = bytes(P.encode_table(x))
    t = x.column("time").to_numpy().copy()
    nan_t, inf_t = t.copy(), t.copy()
    nan_t[2], inf_t[1] = np.nan, np.inf
    fields, wframes = _net_frames(yinyang_net())
    big_fields, big_frames = _net_frames(delgrad.Network.random([4, 600, 3], NEURON, delay_kind="none", seed=0))
    syn_fields, syn_frames = _net_frames(delgrad.Network.random([20, 5, 3], NEURON, delay_kind="synaptic", seed=0))
    nan_net = yinyang_net()
    nan_net.layers[1].weights[0, 0] = np.nan
    nan_fields, nan_frames = _net_frames(nan_net)
    wtab = P.decode_table(wframes[0], P.WEIGHT_SCHEMA, "w").slice(1)
    many = spike_batch(np.zeros(MAX_SPIKES + 1), np.zeros(MAX_SPIKES + 1), np.ones(MAX_SPIKES + 1))
    return [
        ("not json", [b"{this is not json"], P.BAD_HEADER, "JSON"),
        ("json array", [b"[1, 2, 3]"], P.BAD_HEADER, "object"),
        ("not utf-8", [b"\xff\xfe\x00"], P.BAD_HEADER, "UTF-8"),
        ("empty header", [b""], P.BAD_HEADER, "JSON"),
        ("no id", [P.encode_header({"v": 1, "op": "status"})], P.MISSING_FIELD, "id"),
        ("wrong version", [_hdr(v=99)], P.BAD_VERSION, "99"),
        ("no version", [P.encode_header({"op": "status", "id": "nov"})], P.BAD_VERSION, "None"),
        ("unknown op", [_hdr("launch")], P.UNKNOWN_OP, "launch"),
        ("op not a string", [_hdr(["run"])], P.UNKNOWN_OP, "run"),
        ("id not a string", [P.encode_header({"v": 1, "op": "status", "id": 5})], P.BAD_FIELD, "id"),
        ("missing config_id", [_hdr("run", n_samples=4), good], P.MISSING_FIELD, "config_id"),
        ("missing n_samples", [_hdr("run", config_id=cid), good], P.MISSING_FIELD, "n_samples"),
        ("n_samples a string", [_hdr("run", config_id=cid, n_samples="4"), good], P.BAD_FIELD, "n_samples"),
        ("negative seed", [_run_hdr(cid, seed=-1), good], P.BAD_FIELD, "seed"),
        ("unknown config", [_run_hdr("cfg-nope"), good], P.UNKNOWN_CONFIG, "cfg-nope"),
        ("run without spikes", [_run_hdr(cid)], P.BAD_FRAME, "1 body frame"),
        ("garbage ipc", [_run_hdr(cid), b"\x00garbage\xff" * 10], P.BAD_FRAME, "Arrow"),
        ("truncated ipc", [_run_hdr(cid), good[: len(good) // 2]], P.BAD_FRAME, "input spikes"),
        (
            "wrong schema",
            [_run_hdr(cid), bytes(P.encode_table(x.set_column(0, "sample", x.column("sample").cast(pa.int64()))))],
            P.BAD_SCHEMA,
            "sample",
        ),
        (
            "renamed column",
            [_run_hdr(cid), bytes(P.encode_table(x.rename_columns(["sample", "channel", "time"])))],
            P.BAD_SCHEMA,
            "neuron",
        ),
        (
            "nan time",
            [_run_hdr(cid), bytes(P.encode_table(x.set_column(2, "time", pa.array(nan_t))))],
            P.BAD_SPIKES,
            "row 2",
        ),
        (
            "inf time",
            [_run_hdr(cid), bytes(P.encode_table(x.set_column(2, "time", pa.array(inf_t))))],
            P.BAD_SPIKES,
            "finite",
        ),
        (
            "neuron out of range",
            [_run_hdr(cid), bytes(P.encode_table(spike_batch([0], [4], [1.0])))],
            P.BAD_SPIKES,
            "neuron id 4",
        ),
        (
            "sample out of range",
            [_run_hdr(cid, n=2), bytes(P.encode_table(spike_batch([2], [0], [1.0])))],
            P.BAD_SPIKES,
            "n_samples",
        ),
        ("oversize batch", [_run_hdr(cid, n=1), bytes(P.encode_table(many))], P.TOO_LARGE, str(MAX_SPIKES)),
        ("too many samples", [_run_hdr(cid, n=MAX_SAMPLES + 1), good], P.TOO_LARGE, "n_samples"),
        ("too many frames", [_run_hdr(cid)] + [good] * 9, P.BAD_MESSAGE, "frames"),
        ("status with body", [_hdr(), good], P.BAD_FRAME, "status"),
        ("configure no layers", [_hdr("configure", neuron=fields["neuron"]), *wframes], P.MISSING_FIELD, "layers"),
        ("configure one frame", [_hdr("configure", **fields), wframes[0]], P.BAD_FRAME, "2 body frames"),
        (
            "configure bad theta",
            [_hdr("configure", **{**fields, "neuron": {**fields["neuron"], "theta": -1}}), *wframes],
            P.BAD_FIELD,
            "theta",
        ),
        (
            "configure layer chain",
            [_hdr("configure", **{**fields, "layers": [fields["layers"][0]] * 2}), *wframes],
            P.BAD_PARAMETERS,
            "n_in",
        ),
        (
            "configure missing synapse",
            [_hdr("configure", **fields), bytes(P.encode_table(wtab)), wframes[1]],
            P.BAD_PARAMETERS,
            "synapses",
        ),
        ("configure nan weight", [_hdr("configure", **nan_fields), *nan_frames], P.BAD_PARAMETERS, "finite"),
        ("does not fit 512", [_hdr("configure", **big_fields), *big_frames], P.DOES_NOT_FIT, "512"),
        ("synaptic delays", [_hdr("configure", **syn_fields), *syn_frames], P.UNSUPPORTED, "axonal"),
        (
            "bad replication",
            [_hdr("configure", **fields, input_replication=3), *wframes],
            P.BAD_PARAMETERS,
            "input_replication",
        ),
    ]


def test_malformed_requests_get_error_replies_and_daemon_keeps_serving(daemon, configured):
    before = status(daemon.endpoint)["counters"]
    cases = _malformed_cases(configured[0])
    for name, frames, code, word in cases:
        head, body = raw(daemon.endpoint, frames)
        assert head["ok"] is False, name
        assert head["code"] == code, (name, head)
        assert word in head["message"], (name, head["message"])
        assert code in P.ERROR_CODES and body == []
        # still serving, and still running correctly
        assert status(daemon.endpoint)["backend"] == "emulator", name
    after = status(daemon.endpoint)
    assert after["counters"]["errors"] - before["errors"] == len(cases)
    assert after["counters"]["runs"] == before["runs"]
    with HardwareClient(daemon.endpoint, timeout=10, retries=0) as c:
        spikes, _ = c.run(configured[0], _x(), 4, seed=0)
        assert spikes[1].num_rows > 0
    assert daemon.alive()


def test_client_raises_hardware_error_with_code(daemon, configured):
    with HardwareClient(daemon.endpoint, timeout=10, retries=0) as c:
        with pytest.raises(HardwareError) as e:
            c.run("cfg-unknown", _x(), 4)
        assert e.value.code == P.UNKNOWN_CONFIG
        with pytest.raises(HardwareError) as e:
            c.run(configured[0], _x(), 2)  # sample ids 2, 3 >= n_samples
        assert e.value.code == P.BAD_SPIKES


def test_spinning_client_gets_the_same_replies(daemon, configured):
    cid = configured[0]
    with (
        HardwareClient(daemon.endpoint, timeout=10, retries=0) as c,
        HardwareClient(daemon.endpoint, timeout=10, retries=0, spin=0.05) as spinning,
    ):
        a = c.run(cid, _x(), 4, seed=11).spikes
        b = spinning.run(cid, _x(), 4, seed=11).spikes
        assert [x.equals(y) for x, y in zip(a, b)] == [True, True]
        with pytest.raises(HardwareError):  # error replies arrive the same way
            spinning.run("cfg-unknown", _x(), 4)


def test_req_socket_works_too(daemon):
    s = zmq.Context.instance().socket(zmq.REQ)
    s.linger = 0
    s.connect(daemon.endpoint)
    try:
        s.send(_hdr())
        assert s.poll(10_000)
        assert json.loads(s.recv())["ok"] is True
    finally:
        s.close()


# --- idempotency --------------------------------------------------------------------------------


def test_retry_with_same_id_is_not_executed_twice(daemon, configured):
    cid = configured[0]
    # No seed: the daemon draws one, so a re-execution would show up as different spikes.
    frames = [
        P.encode_header({"v": 1, "op": "run", "id": "retry-1", "session": "s-retry", "config_id": cid, "n_samples": 4}),
        bytes(P.encode_table(_x())),
    ]
    runs0 = status(daemon.endpoint)["counters"]
    h1, b1 = raw(daemon.endpoint, frames)
    h2, b2 = raw(daemon.endpoint, frames)  # another socket: the session makes it the same client
    assert h1["ok"] and h1 == h2 and b1 == b2  # the daemon-drawn seed too: not re-executed
    runs1 = status(daemon.endpoint)["counters"]
    assert runs1["runs"] == runs0["runs"] + 1
    assert runs1["cache_hits"] == runs0["cache_hits"] + 1
    # Same id, different request: refused, not confused with the first.
    other = [frames[0], bytes(P.encode_table(_x(3)))]
    h3, _ = raw(daemon.endpoint, other)
    assert h3["code"] == P.ID_REUSED

    # Without a session, the socket identity scopes ids: another socket is another client.
    def anon(x: pa.RecordBatch) -> list:
        return [
            P.encode_header({"v": 1, "op": "run", "id": "anon", "config_id": cid, "n_samples": 4}),
            bytes(P.encode_table(x)),
        ]

    assert raw(daemon.endpoint, anon(_x()))[0]["ok"]
    assert raw(daemon.endpoint, anon(_x(3)))[0]["ok"]


def test_client_retry_reuses_the_id(daemon, configured):
    with HardwareClient(daemon.endpoint, timeout=10, retries=0) as c:
        runs0 = c.status()["counters"]["runs"]
        fields = {"config_id": configured[0], "n_samples": 4}
        frame = P.encode_table(_x())
        h1, _ = c.request("run", fields, [frame], request_id="client-retry")
        h2, _ = c.request("run", fields, [frame], request_id="client-retry")
        assert h1 == h2
        assert c.status()["counters"]["runs"] == runs0 + 1


def test_client_timeout_resend_is_answered_from_the_cache(daemon, configured):
    """A run slower than the client's timeout: the client re-sends (same id, fresh socket),
    the daemon executes it once and answers the re-send from its reply cache."""
    x = yinyang_inputs(MAX_SAMPLES)
    with HardwareClient(daemon.endpoint, timeout=10, retries=0) as c:
        before = c.status()["counters"]
    # The run takes ~10-30 ms here (5000 samples); a 3 ms timeout times out on it, while a
    # re-send answered from the cache fits.
    with HardwareClient(daemon.endpoint, timeout=0.003, retries=600) as c:
        spikes, health = c.run(configured[0], x, MAX_SAMPLES)
        assert c.stats["resends"] >= 1 and c.stats["reconnects"] >= 1
    with HardwareClient(daemon.endpoint, timeout=10, retries=0) as c:
        after = c.status()["counters"]
    assert after["runs"] == before["runs"] + 1
    assert after["cache_hits"] >= before["cache_hits"] + 1
    assert spikes[1].num_rows > 0


# --- load ---------------------------------------------------------------------------------------


def test_load_8_clients_x_500_requests(daemon, configured):
    cid = configured[0]
    n_threads, n_req = 8, 500
    x_small = [yinyang_inputs(k) for k in range(1, 4)]
    frames_small = [P.encode_table(x) for x in x_small]
    errors: list[str] = []
    counts = [0] * n_threads
    runs0 = status(daemon.endpoint)["counters"]["runs"]
    barrier = threading.Barrier(n_threads)

    def client_thread(k: int) -> None:
        try:
            with HardwareClient(daemon.endpoint, timeout=20, retries=0) as c:
                barrier.wait(timeout=20)
                for i in range(n_req):
                    if i % 10 == 0:
                        n = 1 + (i // 10) % 3
                        seed = k * 100_000 + i
                        h, body = c.request(
                            "run", {"config_id": cid, "n_samples": n, "seed": seed}, [frames_small[n - 1]]
                        )
                        if h["seed"] != seed or h["n_samples"] != n or len(body) != 2:
                            errors.append(f"thread {k} request {i}: mismatched run reply {h}")
                    else:
                        rid = f"t{k}-r{i}"
                        h, _ = c.request("status", request_id=rid)
                        if h["id"] != rid or h["op"] != "status":
                            errors.append(f"thread {k} request {i}: got reply {h['id']}")
                    counts[k] += 1
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"thread {k}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=client_thread, args=(k,)) for k in range(n_threads)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors[:5]
    assert counts == [n_req] * n_threads
    assert status(daemon.endpoint)["counters"]["runs"] == runs0 + n_threads * n_req // 10
    assert time.monotonic() - t0 < 60


def test_load_pipelined_requests(daemon):
    """8 DEALERs each put 500 requests on the wire at once; every reply arrives once."""
    n_threads, n_req = 8, 500
    errors: list[str] = []

    def burst(k: int) -> None:
        s = zmq.Context.instance().socket(zmq.DEALER)
        s.linger = 0
        s.connect(daemon.endpoint)
        try:
            ids = {f"p{k}-{i}" for i in range(n_req)}
            for rid in sorted(ids):
                s.send(P.encode_header({"v": 1, "op": "status", "id": rid}))
            seen = set()
            deadline = time.monotonic() + 30
            while len(seen) < n_req and time.monotonic() < deadline:
                if s.poll(1000):
                    h = json.loads(s.recv_multipart()[0])
                    if h["id"] in seen or h["id"] not in ids or not h["ok"]:
                        errors.append(f"{k}: unexpected reply {h['id']}")
                    seen.add(h["id"])
            if seen != ids:
                errors.append(f"{k}: {n_req - len(seen)} replies missing")
        finally:
            s.close()

    threads = [threading.Thread(target=burst, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[:5]


def test_sigterm_and_sigint_stop_cleanly(tmp_path):
    for sig in ("TERM", "INT"):
        d = start_daemon(chip_seed=0, log_path=tmp_path / f"{sig}.log")
        os.kill(d.pid, getattr(__import__("signal"), f"SIG{sig}"))
        assert d.process.wait(timeout=10) == 0
        assert "stopped" in d.log()
        d.stop()


def test_daemon_exits_when_the_job_that_started_it_is_killed(tmp_path):
    """A training job killed with SIGKILL cannot stop its daemon; the daemon notices that its
    parent is gone and shuts down cleanly by itself."""
    import signal
    import subprocess

    job = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from delgrad.hardware import start_daemon\n"
            f"d = start_daemon(log_path={str(tmp_path / 'd.log')!r})\n"
            "print(d.pid, d.endpoint, flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        pid, endpoint = job.stdout.readline().split()
        pid = int(pid)
        assert status(endpoint)["backend"] == "emulator"
    finally:
        job.kill()
        job.wait(timeout=10)
        job.stdout.close()
    deadline = time.monotonic() + 10
    while (
        time.monotonic() < deadline
        and os.path.exists(f"/proc/{pid}")
        and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    ):
        time.sleep(0.1)
    try:
        alive = os.path.exists(f"/proc/{pid}") and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except FileNotFoundError:
        alive = False
    if alive:
        os.kill(pid, signal.SIGKILL)  # leave nothing behind, then fail
    assert not alive, "the orphaned daemon kept running"
    log = (tmp_path / "d.log").read_text()
    assert "parent process" in log and "stopped" in log


def test_brainscales2_backend_refuses_to_start(tmp_path):
    with pytest.raises(RuntimeError, match="hxcomm/grenade not installed"):
        start_daemon(backend="brainscales2", log_path=tmp_path / "bss2.log", ready_timeout=20)


def test_cpus_pins_every_daemon_thread(tmp_path):
    cpu = min(os.sched_getaffinity(0))
    d = start_daemon(chip_seed=CHIP, cpus=[cpu], log_path=tmp_path / "pinned.log")
    try:
        assert d.ready["cpus"] == [cpu]
        x = _x(40)
        with HardwareClient(d.endpoint, timeout=10, retries=0) as c:
            cid, _ = c.configure(yinyang_net(), input_replication=5)
            c.run(cid, x, 40, seed=1)  # the request thread, ZeroMQ's I/O thread and rayon's exist now
        tasks = list(Path(f"/proc/{d.pid}/task").iterdir())
        assert len(tasks) >= 3
        for task in tasks:
            allowed = [
                line for line in (task / "status").read_text().splitlines() if line.startswith("Cpus_allowed_list:")
            ]
            assert allowed == [f"Cpus_allowed_list:\t{cpu}"], (task.name, allowed)
    finally:
        d.stop()
    with pytest.raises(RuntimeError, match="not available"):
        start_daemon(cpus=[max(os.sched_getaffinity(0)) + 1000], log_path=tmp_path / "bad.log")


def test_keep_awake_spinners_run_idle_and_end_with_the_daemon(tmp_path):
    d = start_daemon(chip_seed=CHIP, args=["--keep-awake"], log_path=tmp_path / "awake.log")
    pids = d.ready["keep_awake"]
    try:
        assert len(pids) == len(os.sched_getaffinity(0))
        deadline = time.monotonic() + 10  # each spinner sets its own policy once started
        while time.monotonic() < deadline and any(os.sched_getscheduler(p) != os.SCHED_IDLE for p in pids):
            time.sleep(0.05)
        assert all(os.sched_getscheduler(p) == os.SCHED_IDLE for p in pids)
        with HardwareClient(d.endpoint, timeout=10, retries=0) as c:
            assert c.status()["backend"] == "emulator"
    finally:
        d.kill()  # even a killed daemon leaves no spinner behind
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_running(p) for p in pids):
        time.sleep(0.05)
    assert not any(_running(p) for p in pids)


def _running(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except FileNotFoundError:
        return False
